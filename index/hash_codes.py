"""Adjacency hash codes (Yeh et al., KDD'22), numpy only: shared by the trainer and the service's cold start.

A node's c-bit code is ``sign(A·R − median)``: its adjacency row projected by a Gaussian matrix R whose
rows are indexed by the other side's nodes, thresholded at its side's per-bit median. R is never stored:
entry (j, b) is a Gaussian computed from a counter-based hash of (seed, side, j, b), so training makes it
chunk by chunk and serving makes only the rows of a new user's items.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def projection_rows(
    rows: npt.NDArray[np.integer], bit_start: int, width: int, *, seed: int, side: int
) -> npt.NDArray[np.float32]:
    """R[rows, bit_start : bit_start + width] as float32 Gaussians (Box–Muller on two hashed uniforms)."""
    j = np.asarray(rows, np.uint64)[:, None]
    b = np.arange(bit_start, bit_start + width, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        key = np.uint64(seed) * np.uint64(0x100000001B3) ^ np.uint64(side) << np.uint64(62)
        counter = key ^ (j * np.uint64(1 << 20) + b) * np.uint64(2)
    u1 = (_splitmix64(counter) >> np.uint64(11)).astype(np.float64) / 2.0**53
    u2 = (_splitmix64(counter + np.uint64(1)) >> np.uint64(11)).astype(np.float64) / 2.0**53
    gauss = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return gauss.astype(np.float32)


def projected(adjacency: sp.csr_matrix, bit_start: int, width: int, *, seed: int, side: int) -> npt.NDArray[np.float32]:
    """A·R for a block of bits: [rows of adjacency, width]."""
    r = projection_rows(np.arange(adjacency.shape[1]), bit_start, width, seed=seed, side=side)
    out: npt.NDArray[np.float32] = np.asarray(adjacency @ r, dtype=np.float32)
    return out


def side_codes(
    adjacency: sp.csr_matrix, bits: int, *, seed: int, side: int, chunk: int = 32
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
    """Bits [n, bits] of one side's nodes and the per-bit medians (kept to code new nodes alike)."""
    adjacency = sp.csr_matrix(adjacency, dtype=np.float32)
    out = np.empty((adjacency.shape[0], bits), dtype=bool)
    medians = np.empty(bits, dtype=np.float32)
    for start in range(0, bits, chunk):
        width = min(chunk, bits - start)
        values = projected(adjacency, start, width, seed=seed, side=side)
        medians[start : start + width] = np.median(values, axis=0)
        out[:, start : start + width] = values > medians[start : start + width]
    return out, medians


def graph_codes(
    train: sp.csr_matrix, bits: int, *, seed: int
) -> tuple[npt.NDArray[np.bool_], dict[str, npt.NDArray[np.float32]]]:
    """Codes of users (rows of ``train``, projected by item-side R) then items (by user-side R)."""
    users, user_medians = side_codes(train, bits, seed=seed, side=1)
    items, item_medians = side_codes(sp.csr_matrix(train.T), bits, seed=seed, side=0)
    return np.concatenate([users, items]), {"user": user_medians, "item": item_medians}


def cold_user_bits(
    item_rows: npt.NDArray[np.integer], bits: int, medians: npt.NDArray[np.float32], *, seed: int
) -> npt.NDArray[np.bool_]:
    """The code a new user with these training items gets: the same projection, the users' medians."""
    values = projection_rows(np.asarray(item_rows), 0, bits, seed=seed, side=1).sum(axis=0)
    out: npt.NDArray[np.bool_] = values > medians
    return out


def group_indices(code_bits: npt.NDArray[np.bool_], groups: int) -> npt.NDArray[np.int64]:
    """[n, bits] → [n, groups]: each group's bits read as an integer."""
    n, bits = code_bits.shape
    if bits % groups or bits // groups > 16:
        raise ValueError(f"hash bits ({bits}) must split into {groups} groups of at most 16 bits")
    width = bits // groups
    weights = (1 << np.arange(width, dtype=np.int64))[None, None, :]
    out: npt.NDArray[np.int64] = (code_bits.reshape(n, groups, width).astype(np.int64) * weights).sum(axis=2)
    return out
