"""Top-K ranking metrics (docs/architecture.md §6): Recall@K = hits / |test items|, NDCG@K over min(K, |test items|)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp


def hit_matrix(
    topk: npt.NDArray[np.int64], users: npt.NDArray[np.int64], truth: sp.csr_matrix
) -> npt.NDArray[np.bool_]:
    """``hits[r, j]`` is True when item ``topk[r, j]`` is in user ``users[r]``'s test set (-1 never hits)."""
    truth = truth.tocsr()
    truth.sort_indices()
    n_items = truth.shape[1]
    counts = np.diff(truth.indptr)
    keys = np.repeat(np.arange(truth.shape[0], dtype=np.int64), counts) * n_items + truth.indices
    queries = users[:, None].astype(np.int64) * n_items + topk
    pos = np.clip(np.searchsorted(keys, queries), 0, max(keys.size - 1, 0))
    hits: npt.NDArray[np.bool_] = (keys.size > 0) & (keys[pos] == queries) & (topk >= 0)
    return hits


def ranking_metrics(
    topk: npt.NDArray[np.int64],
    users: npt.NDArray[np.int64],
    truth: sp.csr_matrix,
    ks: tuple[int, ...] = (10, 20, 50),
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over ``users`` (rows of ``topk``); users without test items are skipped."""
    if topk.shape[1] < max(ks):
        raise ValueError(f"need at least {max(ks)} ranked items per user, got {topk.shape[1]}")
    n_relevant = np.diff(truth.tocsr().indptr)[users]
    keep = n_relevant > 0
    topk, users, n_relevant = topk[keep], users[keep], n_relevant[keep]
    if users.size == 0:
        raise ValueError("no user has test items")
    hits = hit_matrix(topk, users, truth).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))
    ideal_cumulative = np.cumsum(discounts)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"recall@{k}"] = float(np.mean(hits[:, :k].sum(axis=1) / n_relevant))
        dcg = (hits[:, :k] * discounts[:k]).sum(axis=1)
        idcg = ideal_cumulative[np.minimum(n_relevant, k) - 1]
        metrics[f"ndcg@{k}"] = float(np.mean(dcg / idcg))
    return metrics
