import numpy as np
import scipy.sparse as sp

from trainer.export import item_degree


def test_item_degree_counts_each_columns_entries_as_a_csc_copy_does() -> None:
    seen = sp.random(60, 45, density=0.2, format="csr", random_state=3)
    assert np.array_equal(item_degree(seen), np.diff(seen.tocsc().indptr))
    assert item_degree(sp.csr_matrix((4, 7))).tolist() == [0] * 7
