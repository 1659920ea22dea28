"""Bit layouts of user and item codes, and the search forms that make Hamming distance exact.

A code layout says how a node's representation is stored in a bundle:

- ``float32``: full-precision vectors ``float32 [n, d]`` (the `fp` reference, inner-product search).
- ``sign1``: one bit per dimension, ``b = 1`` for a positive value; dequantized ``s = 2b - 1``.
- ``planes2``: two bits per dimension, ``q in {0..3}`` stored as two packed bit planes
  ``[H | O]`` with ``H = q >> 1`` and ``O = q & 1``; dequantized level ``l = 2q - 3``.

Optional per-node scales refine binary codes (``ScaleMode``): ``segment`` scales ``[n, g]`` multiply each of
``g`` equal segments of the dequantized vector (BiGeaR's per-layer scales, g = 1 for one scale per node);
``levels`` (2-bit only) ``[n, 4]`` give each node its own value for q = 0..3 (GNAQ's per-node codebook).
Item scales change rankings, so the index re-ranks Hamming candidates with them.

The index stores a *search form* of every item and queries use a matching search form. For binary layouts
``score = search_bits - 2 * Hamming(query, item)`` then equals the inner product of the dequantized codes
exactly (docs/architecture.md §4); float vectors are their own search form, searched by inner product. Search backends
return distances, smaller nearer (``index.retrieval``): ``scores_from_distances`` turns them into scores.

Users may keep more bits than items (*asymmetric* codes: ``planes2`` users, ``sign1`` items): an item's
magnitude-free sign code is all the index stores, and the query's extra plane still scores exactly, since
``<2h + o, s> = 3d - 2 * Hamming([H H O], [S S S])``. ``PAIRINGS`` lists the (user, item) layouts that pair.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

Packed = npt.NDArray[np.uint8]


class CodeLayout(StrEnum):
    FLOAT32 = "float32"
    SIGN1 = "sign1"
    PLANES2 = "planes2"

    @property
    def is_binary(self) -> bool:
        return self is not CodeLayout.FLOAT32

    @property
    def bits_per_dim(self) -> int:
        return {CodeLayout.FLOAT32: 32, CodeLayout.SIGN1: 1, CodeLayout.PLANES2: 2}[self]


class ScaleMode(StrEnum):
    SEGMENT = "segment"
    LEVELS = "levels"


def check_scales(
    layout: CodeLayout, dim: int, scales: npt.NDArray[np.floating] | None, mode: ScaleMode | None, rows: int
) -> None:
    """Raise ValueError unless ``scales`` fit the layout, the mode and the number of nodes."""
    if scales is None:
        return
    if mode is None or not layout.is_binary:
        raise ValueError(f"scales need a binary layout and a scale mode, got {layout} / {mode}")
    if scales.ndim != 2 or scales.shape[0] != rows:
        raise ValueError(f"scales must be [{rows}, g], got {list(scales.shape)}")
    if mode is ScaleMode.LEVELS and (layout is not CodeLayout.PLANES2 or scales.shape[1] != 4):
        raise ValueError(f"level tables need planes2 codes and 4 columns, got {layout} with {scales.shape[1]}")
    if mode is ScaleMode.SEGMENT and (scales.shape[1] == 0 or dim % scales.shape[1]):
        raise ValueError(f"{scales.shape[1]} scale segments do not divide dim {dim}")


def check_dim(layout: CodeLayout, dim: int) -> None:
    """Binary codes are packed in whole bytes: FAISS needs a bit count divisible by 8."""
    if dim <= 0:
        raise ValueError(f"dim must be positive, got {dim}")
    if layout.is_binary and dim % 8:
        raise ValueError(f"binary code layouts need dim divisible by 8, got {dim}")


def code_dtype(layout: CodeLayout) -> type[np.generic]:
    """Element type of the stored code array: float32 vectors or packed bytes."""
    return np.float32 if layout is CodeLayout.FLOAT32 else np.uint8


def code_width(layout: CodeLayout, dim: int) -> int:
    """Row width of the stored code array: bytes for binary layouts, floats for ``float32``."""
    check_dim(layout, dim)
    return dim if layout is CodeLayout.FLOAT32 else dim * layout.bits_per_dim // 8


def pack_bits(bits: npt.NDArray[np.integer] | npt.NDArray[np.bool_]) -> Packed:
    """Pack a ``{0,1} [n, d]`` matrix into ``uint8 [n, d/8]``, bit j of a row in byte j // 8 (LSB first)."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), axis=1, bitorder="little")


def unpack_bits(packed: Packed, dim: int) -> npt.NDArray[np.uint8]:
    return np.unpackbits(packed, axis=1, count=dim, bitorder="little")


def encode_sign1(values: npt.NDArray[np.floating]) -> Packed:
    """1-bit codes of real vectors: a bit is set where the value is strictly positive (0 maps to -1)."""
    return pack_bits(values > 0)


def encode_planes2(levels: npt.NDArray[np.integer]) -> Packed:
    """2-bit codes from integer levels ``q in {0, 1, 2, 3}``, stored as planes ``[H | O]``."""
    q = np.asarray(levels)
    if q.size and (q.min() < 0 or q.max() > 3):
        raise ValueError("2-bit levels must lie in 0..3")
    q = q.astype(np.uint8)
    return np.concatenate([pack_bits(q >> 1), pack_bits(q & 1)], axis=1)


def _planes(codes: Packed, dim: int) -> tuple[Packed, Packed]:
    width = dim // 8
    return codes[:, :width], codes[:, width : 2 * width]


def dequantize(
    codes: npt.NDArray[np.generic],
    layout: CodeLayout,
    dim: int,
    scales: npt.NDArray[np.floating] | None = None,
    mode: ScaleMode | None = None,
) -> npt.NDArray[np.float32]:
    """The real vectors a code stands for; their inner products are what the index ranks by."""
    check_scales(layout, dim, scales, mode, codes.shape[0])
    if layout is CodeLayout.FLOAT32:
        return np.asarray(codes, dtype=np.float32)
    packed = np.asarray(codes, dtype=np.uint8)
    if layout is CodeLayout.SIGN1:
        values = unpack_bits(packed, dim).astype(np.float32) * 2.0 - 1.0
    else:
        high, low = _planes(packed, dim)
        q = unpack_bits(high, dim).astype(np.int64) * 2 + unpack_bits(low, dim)
        if mode is ScaleMode.LEVELS and scales is not None:
            return np.take_along_axis(np.asarray(scales, np.float32), q, axis=1)
        values = q.astype(np.float32) * 2.0 - 3.0
    if scales is not None:
        values *= np.repeat(np.asarray(scales, np.float32), dim // scales.shape[1], axis=1)
    return values


# (user layout, item layout) pairs with an exact binary search form; a symmetric pair is a layout with itself.
PAIRINGS = {
    (CodeLayout.SIGN1, CodeLayout.SIGN1),
    (CodeLayout.PLANES2, CodeLayout.PLANES2),
    (CodeLayout.PLANES2, CodeLayout.SIGN1),
    (CodeLayout.FLOAT32, CodeLayout.FLOAT32),
}


def check_pairing(user_layout: CodeLayout, item_layout: CodeLayout, scaled: bool = False) -> None:
    """Raise ValueError unless users' and items' codes can be scored against each other exactly (``scaled``: with
    per-node scales, which only symmetric codes take)."""
    if (user_layout, item_layout) not in PAIRINGS:
        pairs = ", ".join(f"{u}/{i}" for u, i in sorted(PAIRINGS))
        raise ValueError(f"user codes {user_layout} cannot be scored against item codes {item_layout} (pairs: {pairs})")
    if scaled and user_layout is not item_layout:
        raise ValueError("scales are not supported with asymmetric codes")


def search_bits(layout: CodeLayout, dim: int, query_layout: CodeLayout | None = None) -> int:
    """Bits per vector in the FAISS binary index of items coded in ``layout`` for queries coded in
    ``query_layout`` (default: the same): ``d``, ``9d`` for the exact 2-bit form, ``3d`` for 2-bit queries of
    1-bit items."""
    query_layout = query_layout or layout
    check_pairing(query_layout, layout)
    if layout is CodeLayout.SIGN1:
        return 3 * dim if query_layout is CodeLayout.PLANES2 else dim
    if layout is CodeLayout.PLANES2:
        return 9 * dim
    raise ValueError(f"{layout} has no binary search form")


def search_dim(layout: CodeLayout, dim: int, query_layout: CodeLayout | None = None) -> int:
    """The dimension of the items' search form, FAISS's ``d`` for their index: ``search_bits`` for binary
    layouts, ``dim`` floats for ``float32``."""
    return search_bits(layout, dim, query_layout) if layout.is_binary else dim


def scores_from_distances(
    distances: npt.NDArray[np.number], layout: CodeLayout, dim: int, query_layout: CodeLayout | None = None
) -> npt.NDArray[np.float32]:
    """Exact inner products of the dequantized codes from the distances between their search forms: Hamming
    distances for binary layouts, negated inner products for ``float32`` (negation is exact)."""
    if not layout.is_binary:
        return -np.asarray(distances, dtype=np.float32)
    bits = search_bits(layout, dim, query_layout)
    return (bits - 2 * np.asarray(distances, dtype=np.int64)).astype(np.float32)


def item_search_form(
    codes: npt.NDArray[np.generic], layout: CodeLayout, dim: int, query_layout: CodeLayout | None = None
) -> npt.NDArray[Any]:
    """What the index stores per item: the code itself, ``[S S S]`` for 2-bit queries of 1-bit items,
    ``[H H H H | H H | O O | O]`` for 2 bits, or the ``float32`` vector."""
    if not layout.is_binary:
        return np.ascontiguousarray(codes, dtype=np.float32)
    packed = np.asarray(codes, dtype=np.uint8)
    if layout is CodeLayout.SIGN1:
        copies = search_bits(layout, dim, query_layout) // dim
        return np.ascontiguousarray(np.concatenate([packed] * copies, axis=1) if copies > 1 else packed, np.uint8)
    high, low = _planes(packed, dim)
    return np.ascontiguousarray(np.concatenate([high] * 6 + [low] * 3, axis=1))


def query_search_form(
    codes: npt.NDArray[np.generic], layout: CodeLayout, dim: int, item_layout: CodeLayout | None = None
) -> npt.NDArray[Any]:
    """What a query coded in ``layout`` sends against items coded in ``item_layout`` (default: the same): the
    code itself, ``[H H O]`` against 1-bit items, ``[H H H H | O O | H H | O]`` for 2 bits, or the ``float32``
    vector."""
    item_layout = item_layout or layout
    check_pairing(layout, item_layout)
    if not layout.is_binary:
        return np.ascontiguousarray(codes, dtype=np.float32)
    packed = np.asarray(codes, dtype=np.uint8)
    if layout is CodeLayout.SIGN1:
        return np.ascontiguousarray(packed)
    high, low = _planes(packed, dim)
    if item_layout is CodeLayout.SIGN1:
        return np.ascontiguousarray(np.concatenate([high, high, low], axis=1))
    return np.ascontiguousarray(np.concatenate([high] * 4 + [low] * 2 + [high] * 2 + [low], axis=1))


def as_query(item_codes: Packed, layout: CodeLayout, dim: int, query_layout: CodeLayout) -> Packed:
    """Items' codes as queries of ``query_layout`` whose search form equals the item's (its own nearest code):
    a sign code ``S`` becomes the 2-bit code ``[S | S]`` (levels ±3)."""
    check_pairing(query_layout, layout)
    if query_layout is layout:
        return item_codes
    return np.ascontiguousarray(np.concatenate([item_codes, item_codes], axis=1))
