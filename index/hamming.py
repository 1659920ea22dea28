"""Reference Hamming scoring in numpy: the yardstick the FAISS index is checked against."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from index.codes import CodeLayout, item_search_form, query_search_form, scores_from_distances


def hamming_distances(queries: npt.NDArray[np.uint8], items: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    """All pairwise Hamming distances between packed codes, ``int32 [n_queries, n_items]``."""
    if queries.shape[1] != items.shape[1]:
        raise ValueError(f"code widths differ: {queries.shape[1]} vs {items.shape[1]} bytes")
    out = np.empty((queries.shape[0], items.shape[0]), dtype=np.int32)
    for row, query in enumerate(queries):
        out[row] = np.bitwise_count(np.bitwise_xor(items, query)).sum(axis=1, dtype=np.int32)
    return out


def exact_scores(
    user_codes: npt.NDArray[np.generic],
    item_codes: npt.NDArray[np.generic],
    layout: CodeLayout,
    dim: int,
    user_layout: CodeLayout | None = None,
) -> npt.NDArray[np.float32]:
    """Inner products of the dequantized codes (items in ``layout``, users in ``user_layout``, default the same),
    computed through popcounts for binary layouts."""
    if layout is CodeLayout.FLOAT32:
        return np.asarray(user_codes, np.float32) @ np.asarray(item_codes, np.float32).T
    queries = query_search_form(np.asarray(user_codes, np.uint8), user_layout or layout, dim, layout)
    items = item_search_form(np.asarray(item_codes, np.uint8), layout, dim, user_layout)
    distances = hamming_distances(queries, items)
    return scores_from_distances(distances, layout, dim, user_layout)
