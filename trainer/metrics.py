"""Top-K ranking metrics (docs/architecture.md §6): Recall@K = hits / |test items|, NDCG@K over min(K, |test items|)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp


def hit_matrix(
    topk: npt.NDArray[np.int64], users: npt.NDArray[np.int64], truth: sp.csr_matrix
) -> npt.NDArray[np.bool_]:
    """``hits[r, j]`` is True when item ``topk[r, j]`` is in user ``users[r]``'s test set (-1 never hits)."""
    rows = truth.tocsr()[users]  # only the ranked users' items: a sample of users costs its own size
    rows.sort_indices()
    n_items = rows.shape[1]
    counts = np.diff(rows.indptr)
    keys = np.repeat(np.arange(users.size, dtype=np.int64), counts) * n_items + rows.indices
    queries = np.arange(users.size, dtype=np.int64)[:, None] * n_items + topk
    pos = np.clip(np.searchsorted(keys, queries), 0, max(keys.size - 1, 0))
    hits: npt.NDArray[np.bool_] = (keys.size > 0) & (keys[pos] == queries) & (topk >= 0)
    return hits


def ranking_metrics(
    topk: npt.NDArray[np.int64],
    users: npt.NDArray[np.int64],
    truth: sp.csr_matrix,
    ks: tuple[int, ...] = (10, 20, 50),
    *,
    spread: bool = False,
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over ``users`` (rows of ``topk``); users without test items are skipped.

    With ``spread`` each metric also gets ``<metric>_se``, its standard error across users (sample standard
    deviation / √users), and ``users`` the number averaged over: on a sample of users that says how far the
    mean may be from the mean over all of them.
    """
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
        recall = hits[:, :k].sum(axis=1) / n_relevant
        dcg = (hits[:, :k] * discounts[:k]).sum(axis=1)
        ndcg = dcg / ideal_cumulative[np.minimum(n_relevant, k) - 1]
        metrics[f"recall@{k}"], metrics[f"ndcg@{k}"] = float(np.mean(recall)), float(np.mean(ndcg))
        if spread:
            metrics[f"recall@{k}_se"], metrics[f"ndcg@{k}_se"] = standard_error(recall), standard_error(ndcg)
    if spread:
        metrics["users"] = float(users.size)
    return metrics


def standard_error(values: npt.NDArray[np.float64]) -> float:
    """The standard error of ``values``' mean (0 for a single value)."""
    return float(np.std(values, ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
