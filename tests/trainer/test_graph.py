"""The normalised adjacency against its definition, D^-1/2 A D^-1/2 of the bipartite graph built densely."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from trainer.data import Dataset
from trainer.graph import index_dtype, normalized_adjacency, to_torch_sparse


def dense_definition(train: np.ndarray) -> np.ndarray:
    n_users, n_items = train.shape
    adjacency = np.zeros((n_users + n_items, n_users + n_items))
    adjacency[:n_users, n_users:] = train > 0
    adjacency[n_users:, :n_users] = (train > 0).T
    degree = adjacency.sum(axis=1)
    inv_sqrt = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1)), 0.0)
    out: np.ndarray = inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    return out


def test_matches_the_definition_with_isolated_nodes_and_repeated_pairs() -> None:
    rng = np.random.default_rng(0)
    train = (rng.random((30, 20)) < 0.15).astype(np.float32)
    train[4] = 0  # a user without items, and an item nobody has
    train[:, 7] = 0
    repeated = sp.coo_matrix(train)
    pairs = sp.csr_matrix(  # a pair listed twice, and a stored value other than 1: both count once
        (np.r_[repeated.data * 3, 1.0], (np.r_[repeated.row, repeated.row[0]], np.r_[repeated.col, repeated.col[0]])),
        shape=train.shape,
    )
    adjacency = normalized_adjacency(pairs)
    assert adjacency.dtype == np.float32 and adjacency.has_sorted_indices
    np.testing.assert_allclose(adjacency.toarray(), dense_definition(train), rtol=1e-6)
    assert adjacency.nnz == 2 * int(train.sum())


def test_an_empty_graph_gives_an_empty_adjacency() -> None:
    adjacency = normalized_adjacency(sp.csr_matrix((3, 4), dtype=np.float32))
    assert adjacency.shape == (7, 7) and adjacency.nnz == 0


def test_the_torch_adjacency_takes_the_narrowest_index_type_and_multiplies_the_same(tiny_data: Dataset) -> None:
    adjacency = normalized_adjacency(tiny_data.train)
    x = torch.randn(adjacency.shape[0], 8)
    narrow = to_torch_sparse(adjacency, torch.device("cpu"))
    wide = to_torch_sparse(adjacency, torch.device("cpu"), indices=np.dtype(np.int64))
    assert narrow.crow_indices().dtype == narrow.col_indices().dtype == torch.int32
    assert wide.col_indices().dtype == torch.int64
    torch.testing.assert_close(narrow @ x, wide @ x, rtol=0, atol=0)


def test_indices_widen_when_a_side_passes_two_to_the_31() -> None:
    small = sp.csr_matrix((3, 4), dtype=np.float32)
    assert index_dtype(small) == np.int32
    wide_side = sp.csr_matrix((1, 2**31), dtype=np.float32)  # no storage: the shape alone says int64
    assert index_dtype(wide_side) == np.int64
