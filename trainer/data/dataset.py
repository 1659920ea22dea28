"""The in-memory form every loader produces, so the trainer never sees file formats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


class DatasetError(ValueError):
    """A dataset could not be read; the message names the file, the line and what was expected."""


@dataclass(frozen=True)
class Dataset:
    """User-item interactions split into train / validation / test.

    Row ``u`` of every matrix is internal user id ``u`` (external id ``user_ids[u]``), column ``i``
    is internal item id ``i`` (external id ``item_ids[i]``). Matrices are binary ``csr_matrix``
    of shape ``(n_users, n_items)``; ``valid`` is carved out of the original training data with a
    fixed seed, so ``train`` and ``valid`` are disjoint and together form the original train set.
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def seen(self) -> sp.csr_matrix:
        """Every interaction the model may have learnt from: masked at test time and in serving."""
        merged: sp.csr_matrix = (self.train + self.valid).tocsr()
        merged.data = np.ones_like(merged.data)
        return merged

    def summary(self) -> str:
        return (
            f"{self.name}: {self.n_users} users, {self.n_items} items, "
            f"train {self.train.nnz}, valid {self.valid.nnz}, test {self.test.nnz}"
        )
