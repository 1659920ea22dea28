"""Adjacency hash codes (Yeh et al., KDD'22), numpy only: the trainer's hashed input layer and the bundle's
cold-start encoder (index.cold_start) code nodes with the same functions.

A node's c-bit code is ``sign(A·R − median)``: its adjacency row projected by a Gaussian matrix R whose
rows are indexed by the other side's nodes, thresholded at its side's per-bit median (moved into the nearest
gap between two nodes' values, so that no node sits on it and a new node's rounding cannot flip it). R is never
stored: entry (j, b) is a Gaussian computed from a counter-based hash of (seed, side, j, b), so training makes it
chunk by chunk and serving makes only the rows of a new user's items.

That raw-row code (``hops`` 0) tells two users apart only by the items they share: Gowalla's users share
few, so their codes are nearly independent and the decoder learns little that generalises (70 % of a table's
Recall@20, docs/experiments/hashed_input.md). A *propagated* code (``hops`` h ≥ 1) hashes the node's row of the
normalised adjacency Â = D_u^-½ A D_i^-½ smoothed by h steps of message passing instead: the items' projection is
z = (ÂᵀÂ)^(h−1) R, users get Â·z and items ÂᵀÂ·z, all from the one item-side R, so a user's code agrees with
its items' codes and users with similar neighbourhoods get similar codes (a random-projection sketch of the
graph's leading singular directions, as in randomized SVD; each step costs one sparse product per chunk of bits,
no n × n matrix). The trivial direction (√degree, singular value 1) is projected out of z, else it would
dominate every bit after a few steps. A new user with items I gets Σ_{i∈I} z_i / √(|I|·deg_i), the same
product as a trained user's row: for h = 1, z is R itself (less that direction), regenerated from the seed;
for h ≥ 2 the items' z ships with the model.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

# What graph_codes returns beside the medians and cold_user_bits reads for propagated parts ("item_basis": 2+ hops).
PROPAGATION = ("item_degree", "item_degree_total", "trivial_along", "item_basis")


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
        medians[start : start + width] = split_points(values)
        out[:, start : start + width] = values > medians[start : start + width]
    return out, medians


def split_points(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Per column, a threshold that splits the nodes' values in half and equals none of them.

    ``np.median`` of an odd count *is* one node's value: that node's bit then rests on how its value was rounded,
    and a new node with the same items, summed in another order, can land an ulp off and get the other bit. The
    threshold here sits midway in the gap between distinct values nearest the middle rank.
    """
    n, width = values.shape
    out = np.zeros(width, np.float32)
    if n == 0:
        return out
    ordered = np.sort(values, axis=0)
    for column in range(width):
        col = ordered[:, column]
        gaps = np.flatnonzero(col[1:] > col[:-1]) + 1  # col[g - 1] < col[g]
        if gaps.size == 0:  # one value for every node: every bit 0, and the threshold just above it
            out[column] = np.nextafter(col[0], np.float32(np.inf))
            continue
        gap = gaps[np.abs(2 * gaps - n).argmin()]  # the most even split: n − gap nodes above, gap below
        low, high = col[gap - 1], col[gap]
        middle = np.float32(low + (high - low) / np.float32(2))
        out[column] = middle if low < middle < high else low  # adjacent floats: no value strictly between
    return out


def hop_parts(bits: int, hops: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(first bit, width, hops) of each part of a code whose bits split evenly over ``hops``."""
    if not hops or any(h < 0 for h in hops):
        raise ValueError(f"hash hops must be one or more counts ≥ 0, got {hops}")
    if bits % len(hops):
        raise ValueError(f"hash bits ({bits}) must split evenly over the hop counts {hops}")
    width = bits // len(hops)
    return [(number * width, width, h) for number, h in enumerate(hops)]


class _Graph:
    """The normalised adjacency and its trivial item direction, made once for every block of bits."""

    def __init__(self, train: sp.csr_matrix) -> None:
        self.train = sp.csr_matrix(train, dtype=np.float32)
        self.user_degree = np.asarray(self.train.sum(axis=1), np.float32).ravel()
        self.item_degree = np.asarray(self.train.sum(axis=0), np.float32).ravel()
        self.normalized = sp.csr_matrix(
            sp.diags(_inverse_sqrt(self.user_degree)) @ self.train @ sp.diags(_inverse_sqrt(self.item_degree)),
            dtype=np.float32,
        )
        self.transposed = sp.csr_matrix(self.normalized.T)
        self.train_t = sp.csr_matrix(self.train.T)  # items' rows, for raw-row (0-hop) parts
        self.trivial = trivial_direction(self.item_degree)


def _inverse_sqrt(degree: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out: npt.NDArray[np.float32] = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0).astype(np.float32)
    return out


def trivial_direction(item_degree: npt.NDArray[np.float32], total: float | None = None) -> npt.NDArray[np.float32]:
    """Â's leading right singular vector (singular value 1): √deg_i / √Σdeg, unit length. ``total`` (Σdeg over
    every item) lets a few items' entries be computed, with the same arithmetic, from their degrees alone."""
    degree = np.asarray(item_degree, np.float64)
    norm = np.sqrt(degree.sum() if total is None else float(total))
    out: npt.NDArray[np.float32] = (np.sqrt(degree) / max(float(norm), 1e-12)).astype(np.float32)
    return out


def _item_basis(graph: _Graph, bit_start: int, width: int, *, seed: int, hops: int) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32]
]:  # fmt: skip
    """z = (ÂᵀÂ)^(hops−1) R for a block of bits, the trivial direction projected out, and trivialᵀR."""
    r = projection_rows(np.arange(graph.train.shape[1]), bit_start, width, seed=seed, side=1)
    along = (graph.trivial @ r).astype(np.float32)
    z = (r - graph.trivial[:, None] * along[None, :]).astype(np.float32)
    for _ in range(hops - 1):
        z = np.asarray(graph.transposed @ (graph.normalized @ z), np.float32)
        z -= graph.trivial[:, None] * (graph.trivial @ z)[None, :]
        z /= np.maximum(np.sqrt((z**2).mean(axis=0)), 1e-12)[None, :]  # keep float32 in range over many steps
    return z, along


def graph_codes(
    train: sp.csr_matrix, bits: int, *, seed: int, hops: tuple[int, ...] = (0,)
) -> tuple[npt.NDArray[np.bool_], dict[str, npt.NDArray[np.float32]]]:
    """Codes of users then items, and what coding a new user needs (``cold_user_bits``).

    With ``hops`` (0,) users are their rows of ``train`` projected by item-side R and items their columns by
    user-side R. Several hop counts split the bits evenly, one part each. The dict holds the per-bit medians
    (``user``, ``item``: split_points); with propagated parts also the training graph's ``item_degree`` and its
    ``item_degree_total``, ``trivial_along`` (trivialᵀR per bit, 0 in raw parts) and, for parts of 2 or more hops,
    the items' ``item_basis`` of those bits.
    """
    graph = _Graph(train)
    users = np.empty((graph.train.shape[0], bits), bool)
    items = np.empty((graph.train.shape[1], bits), bool)
    medians = {"user": np.empty(bits, np.float32), "item": np.empty(bits, np.float32)}
    along = np.zeros(bits, np.float32)
    bases = []
    for start, width, hops_here in hop_parts(bits, hops):
        for block in range(start, start + width, 32):
            block_width = min(32, start + width - block)
            bits_here = slice(block, block + block_width)
            if hops_here == 0:
                user_values = projected(graph.train, block, block_width, seed=seed, side=1)
                item_values = projected(graph.train_t, block, block_width, seed=seed, side=0)
            else:
                z, along[bits_here] = _item_basis(graph, block, block_width, seed=seed, hops=hops_here)
                user_values = np.asarray(graph.normalized @ z, np.float32)
                item_values = np.asarray(graph.transposed @ user_values, np.float32)
                if hops_here >= 2:
                    bases.append(z)
            for side, values, out in (("user", user_values, users), ("item", item_values, items)):
                medians[side][bits_here] = split_points(values)
                out[:, bits_here] = values > medians[side][bits_here]
    if any(h for h in hops):
        medians["item_degree"], medians["trivial_along"] = graph.item_degree, along
        medians["item_degree_total"] = np.array(graph.item_degree.astype(np.float64).sum())
    if bases:
        medians["item_basis"] = np.concatenate(bases, axis=1)
    return np.concatenate([users, items]), medians


def cold_user_bits(
    item_rows: npt.NDArray[np.integer],
    bits: int,
    medians: npt.NDArray[np.float32],
    *,
    seed: int,
    hops: tuple[int, ...] = (0,),
    propagation: dict[str, npt.NDArray[np.float32]] | None = None,
) -> npt.NDArray[np.bool_]:
    """The code a new user with these training items gets: the same product as a trained user's row, the
    users' medians. Propagated parts need ``propagation``: graph_codes's ``item_degree``, ``item_degree_total``,
    ``trivial_along`` and (2+ hops) ``item_basis``."""
    rows = np.asarray(item_rows)
    values = np.empty(bits, np.float32)
    basis_column = 0
    for start, width, hops_here in hop_parts(bits, hops):
        part = slice(start, start + width)
        if hops_here == 0:
            values[part] = projection_rows(rows, start, width, seed=seed, side=1).sum(axis=0)
            continue
        if not propagation or "item_degree" not in propagation:
            raise ValueError("a propagated hash code needs the training graph's item degrees and basis")
        degree = propagation["item_degree"]
        if hops_here == 1:  # z is R less the trivial direction: regenerated, not shipped
            trivial = trivial_direction(degree[rows], float(propagation["item_degree_total"]))
            r = projection_rows(rows, start, width, seed=seed, side=1)
            z = r - trivial[:, None] * propagation["trivial_along"][None, part]
        else:
            z = propagation["item_basis"][rows, basis_column : basis_column + width]
            basis_column += width
        weights = _inverse_sqrt(degree[rows]) / np.sqrt(max(len(rows), 1))
        values[part] = (weights[:, None] * z).sum(axis=0)
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
