import numpy as np
import scipy.sparse as sp

from trainer.export import item_degree, sampled_test


def test_a_small_test_set_is_ranked_whole() -> None:
    test = sp.random(50, 40, density=0.1, format="csr", random_state=0)
    assert sampled_test(test, 50, seed=1) is test


def test_a_large_one_keeps_that_many_users_rows_unchanged() -> None:
    test = sp.random(500, 40, density=0.1, format="csr", random_state=0)
    sample = sampled_test(test, 30, seed=1)
    kept = np.flatnonzero(np.diff(sample.indptr))
    assert kept.size == 30 and sample.shape == test.shape
    assert (sample[kept] != test[kept]).nnz == 0
    assert np.array_equal(np.flatnonzero(np.diff(sampled_test(test, 30, seed=1).indptr)), kept)  # seeded


def test_item_degree_counts_each_columns_entries_as_a_csc_copy_does() -> None:
    seen = sp.random(60, 45, density=0.2, format="csr", random_state=3)
    assert np.array_equal(item_degree(seen), np.diff(seen.tocsc().indptr))
    assert item_degree(sp.csr_matrix((4, 7))).tolist() == [0] * 7
