"""Full-ranking evaluation, on the training device (model selection) and on the served path (reports).

Both paths order items by (score desc, item id asc) after masking the items a user was trained on,
so for low-bit codes — whose scores are small integers computed exactly either way — they agree
item for item. ``served_path_metrics`` goes through ``index.ItemIndex``, the code the service runs.

Full ranking costs users × items scores: at millions of each, every user is out of reach, so both paths can rank
a seeded uniform sample of the users instead (``evaluation_users``) and report its standard error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from tqdm import tqdm

from index.codes import CodeLayout, ScaleMode
from index.item_index import ItemIndex
from trainer.distributed import SINGLE_PROCESS, World, gather_rows
from trainer.metrics import ranking_metrics

KS = (10, 20, 50)
GPU_SCORE_CELLS = 1 << 28  # users × items scored at once on a GPU: 1 GiB of float32, 2 of float64 keys
LARGE_CATALOGUE = 1_000_000  # items from which a GPU ranks with GPU_SCORE_CELLS


def evaluation_users(truth: sp.csr_matrix, count: int, seed: int) -> npt.NDArray[np.int64]:
    """The users a metric averages over: all with held-out items, or a uniform sample of ``count`` of them.

    The sample depends only on the users with held-out items, ``count`` and ``seed``, so every validation of a
    run ranks the same users, and sorted ids keep batches in the order a full evaluation has.
    """
    users = np.flatnonzero(np.diff(truth.tocsr().indptr) > 0).astype(np.int64)
    if count <= 0 or count >= users.size:
        return users
    sample = np.random.default_rng(seed).choice(users.size, size=count, replace=False)
    return np.sort(users[sample])


def _csr_rows_to_torch(
    mask: sp.csr_matrix, rows: npt.NDArray[np.int64], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    sub = mask[rows].tocoo()
    return (
        torch.from_numpy(sub.row.astype(np.int64)).to(device),
        torch.from_numpy(sub.col.astype(np.int64)).to(device),
    )


def held_out_of(truth: sp.csr_matrix, users: npt.NDArray[np.int64]) -> sp.csr_matrix:
    """``truth`` with every row outside ``users`` emptied: what an evaluation of those users alone ranks against."""
    keep = np.zeros(truth.shape[0], dtype=bool)
    keep[users] = True
    rows: sp.csr_matrix = sp.diags(keep.astype(truth.dtype)) @ truth.tocsr()
    rows.eliminate_zeros()
    return rows


@torch.no_grad()
def rank_topk(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    users: npt.NDArray[np.int64],
    mask: sp.csr_matrix,
    k: int,
    *,
    integer_scores: bool,
    max_cells: int | None = None,
) -> npt.NDArray[np.int64]:
    """Top-``k`` item ids per user by inner product with ``mask``ed items removed; ties by item id.

    With ``integer_scores`` (dequantized low-bit codes) the score and the item id are folded into one
    float64 key, ``score·n + (n−1−id)``, which is exact below 2⁵³ and makes ``topk`` break ties by id.
    """
    n_items = item_vectors.shape[0]
    k = min(k, n_items)
    if max_cells is None:  # at millions of items 2^26 cells is a handful of users a launch: a GPU gets more room
        large = item_vectors.device.type == "cuda" and n_items >= LARGE_CATALOGUE
        max_cells = GPU_SCORE_CELLS if large else 1 << 26
    batch = max(1, max_cells // max(n_items, 1))
    out = np.empty((users.size, k), dtype=np.int64)
    tie_break = torch.arange(n_items - 1, -1, -1, device=item_vectors.device, dtype=torch.float64)
    for start in range(0, users.size, batch):
        rows = users[start : start + batch]
        scores = user_vectors[torch.from_numpy(rows).to(user_vectors.device)] @ item_vectors.T
        if integer_scores:
            if not torch.equal(scores, scores.round()):
                raise ValueError("integer_scores asked for, but the vectors' inner products are not integers")
            scores = scores.double() * n_items + tie_break
        mask_rows, mask_cols = _csr_rows_to_torch(mask, rows, scores.device)
        scores[mask_rows, mask_cols] = -torch.inf
        out[start : start + rows.size] = torch.topk(scores, k, dim=1).indices.cpu().numpy()
    return out


def device_metrics(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    truth: sp.csr_matrix,
    mask: sp.csr_matrix,
    *,
    integer_scores: bool,
    ks: tuple[int, ...] = KS,
    world: World = SINGLE_PROCESS,
    users: npt.NDArray[np.int64] | None = None,
    spread: bool = False,
) -> dict[str, float]:
    """Recall/NDCG on the training device: used every few epochs for early stopping.

    ``users``: whom to rank (default: every user with ``truth`` items; ``evaluation_users`` samples them);
    ``spread`` adds each metric's standard error across them (trainer.metrics.ranking_metrics).
    Under data-parallel training each rank ranks a contiguous share of the users and every rank gets the
    whole ranking back, so all of them compute the same metrics (and take the same decisions).
    """
    if users is None:
        users = evaluation_users(truth, 0, 0)
    mine = np.array_split(users, world.size)[world.rank]
    topk = gather_rows(rank_topk(user_vectors, item_vectors, mine, mask, max(ks), integer_scores=integer_scores), world)
    if topk.shape[1] < max(ks):  # a catalogue smaller than K: pad as the index does
        topk = np.pad(topk, ((0, 0), (0, max(ks) - topk.shape[1])), constant_values=-1)
    return ranking_metrics(topk, users, truth, ks, spread=spread)


def served_path_metrics(
    user_codes: npt.NDArray[Any],
    item_codes: npt.NDArray[Any],
    layout: CodeLayout,
    dim: int,
    truth: sp.csr_matrix,
    seen: sp.csr_matrix,
    *,
    user_layout: CodeLayout | None = None,
    user_scales: npt.NDArray[np.float32] | None = None,
    item_scales: npt.NDArray[np.float32] | None = None,
    scale_mode: ScaleMode | None = None,
    ks: tuple[int, ...] = KS,
    batch: int = 1024,
    index: ItemIndex | None = None,
    users: npt.NDArray[np.int64] | None = None,
) -> dict[str, float]:
    """Recall/NDCG from the service's own search: FAISS over the exported codes, seen items excluded.

    ``users``: whom to rank, as in ``device_metrics``."""
    index = index or ItemIndex.build(
        item_codes, layout, dim, item_scales=item_scales, scale_mode=scale_mode, user_layout=user_layout
    )
    seen = seen.tocsr()
    if users is None:
        users = evaluation_users(truth, 0, 0)
    # Users with similar history lengths share a batch, so the over-fetch per FAISS call stays small.
    users = users[np.argsort(np.diff(seen.indptr)[users], kind="stable")]
    k = max(ks)
    topk = np.empty((users.size, k), dtype=np.int64)
    # Minutes at catalogue scale (users with long histories fetch far past k): shown as it goes.
    for start in tqdm(range(0, users.size, batch), desc="served-path test", unit="batch", leave=False):
        rows = users[start : start + batch]
        exclude = [seen.indices[seen.indptr[u] : seen.indptr[u + 1]].astype(np.int64) for u in rows]
        query_scales = user_scales[rows] if user_scales is not None else None
        topk[start : start + rows.size] = index.search(
            user_codes[rows], k, exclude=exclude, query_scales=query_scales
        ).ids
    return ranking_metrics(topk, users, truth, ks)
