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

from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from index.threads import nonzero_blocks, row_blocks, run_all, usable_cores

T = TypeVar("T")

# What graph_codes returns beside the medians and cold_user_bits reads for propagated parts ("item_basis": 2+ hops).
PROPAGATION = ("item_degree", "item_degree_total", "trivial_along", "item_basis")

# Rows one task of elementwise work takes: R's float64 temporaries stay in cache, and a multiple of 1024 keeps every
# block's first element where the unsplit array's SIMD lanes put it, so vectorised log1p/cos round each value alike.
ROW_BLOCK = 16384
# Blocks of rows (of about equal nonzeros) a sparse product splits into: several per thread, so that none waits.
PRODUCT_BLOCKS = 64


def _splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """SplitMix64's finaliser, in place on ``x`` (a fresh array of counters)."""
    with np.errstate(over="ignore"):
        x += np.uint64(0x9E3779B97F4A7C15)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        return x


def _uniform(counter: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """A uniform in [0, 1) from each counter's hash: its top 53 bits."""
    hashed = _splitmix64(counter.copy())
    hashed >>= np.uint64(11)
    out: npt.NDArray[np.float64] = hashed.astype(np.float64)
    out /= 2.0**53
    return out


def projection_rows(
    rows: npt.NDArray[np.integer], bit_start: int, width: int, *, seed: int, side: int
) -> npt.NDArray[np.float32]:
    """R[rows, bit_start : bit_start + width] as float32 Gaussians (Box–Muller on two hashed uniforms)."""
    j = np.asarray(rows, np.uint64)[:, None]
    b = np.arange(bit_start, bit_start + width, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        key = np.uint64(seed) * np.uint64(0x100000001B3) ^ np.uint64(side) << np.uint64(62)
        counter = key ^ (j * np.uint64(1 << 20) + b) * np.uint64(2)
    radius = _uniform(counter)  # √(−2 ln(1 − u1)), in place
    np.negative(radius, out=radius)
    np.log1p(radius, out=radius)
    radius *= -2.0
    np.sqrt(radius, out=radius)
    counter += np.uint64(1)
    angle = _uniform(counter)  # cos(2π u2), in place
    angle *= 2.0 * np.pi
    np.cos(angle, out=angle)
    radius *= angle
    return radius.astype(np.float32)


def projection(n: int, bit_start: int, width: int, *, seed: int, side: int, pool: Executor | None = None) -> (
    npt.NDArray[np.float32]
):  # fmt: skip
    """R[:n, bit_start : bit_start + width], its blocks of rows generated in the pool."""
    out = np.empty((n, width), np.float32)

    def fill(block: tuple[int, int]) -> None:
        out[block[0] : block[1]] = projection_rows(np.arange(*block), bit_start, width, seed=seed, side=side)

    run_all(pool, fill, row_blocks(n, rows=ROW_BLOCK))
    return out


def by_rows(pool: Executor | None, n: int, work: Callable[[slice], object]) -> None:
    """``work`` on every block of ``n`` rows, in the pool: for elementwise steps, whose rows are independent."""
    run_all(pool, lambda block: work(slice(*block)), row_blocks(n, rows=ROW_BLOCK))


def product(matrix: sp.csr_matrix, dense: npt.NDArray[np.float32], pool: Executor | None = None) -> (
    npt.NDArray[np.float32]
):  # fmt: skip
    """matrix @ dense as float32, blocks of the matrix's rows in the pool: each output row sums its own nonzeros
    in their stored order, whichever block it is in, so the result is the unsplit product's."""
    out = np.empty((matrix.shape[0], dense.shape[1]), np.float32)

    def fill(block: tuple[int, int]) -> None:
        out[block[0] : block[1]] = _rows(matrix, *block) @ dense

    run_all(pool, fill, nonzero_blocks(matrix.indptr, PRODUCT_BLOCKS))
    return out


def projected(
    adjacency: sp.csr_matrix, bit_start: int, width: int, *, seed: int, side: int, pool: Executor | None = None
) -> npt.NDArray[np.float32]:
    """A·R for a block of bits: [rows of adjacency, width]."""
    r = projection(adjacency.shape[1], bit_start, width, seed=seed, side=side, pool=pool)
    return product(adjacency, r, pool)


def side_codes(
    adjacency: sp.csr_matrix, bits: int, *, seed: int, side: int, chunk: int = 32, threads: int | None = None
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
    """Bits [n, bits] of one side's nodes and the per-bit medians (kept to code new nodes alike)."""
    adjacency = sp.csr_matrix(adjacency, dtype=np.float32)
    out = np.empty((adjacency.shape[0], bits), dtype=bool)
    medians = np.empty(bits, dtype=np.float32)
    with ThreadPoolExecutor(threads or usable_cores()) as pool:
        for start in range(0, bits, chunk):
            width = min(chunk, bits - start)
            values = projected(adjacency, start, width, seed=seed, side=side, pool=pool)
            medians[start : start + width] = split_points(values, pool)
            out[:, start : start + width] = values > medians[start : start + width]
    return out, medians


def split_points(values: npt.NDArray[np.float32], pool: Executor | None = None) -> npt.NDArray[np.float32]:
    """Per column, a threshold that splits the nodes' values in half and equals none of them.

    ``np.median`` of an odd count *is* one node's value: that node's bit then rests on how its value was rounded,
    and a new node with the same items, summed in another order, can land an ulp off and get the other bit. The
    threshold here sits midway in the gap between distinct values nearest the middle rank.
    """
    out = np.zeros(values.shape[1], np.float32)
    if values.shape[0] == 0:
        return out
    out[:] = run_all(pool, lambda column: _split_point(values[:, column]), range(values.shape[1]))
    return out


def _split_point(column: npt.NDArray[np.float32]) -> np.float32:
    """split_points for one column, by selection rather than a sort: only the values next to the middle rank
    matter, so the middle value, the largest below it and the smallest above it decide it."""
    n = len(column)
    middle = n // 2
    part = np.partition(column, middle)  # [:middle] ≤ part[middle] ≤ [middle + 1:]
    value = part[middle]
    below, above = part[:middle], part[middle + 1 :]
    below, above = below[below < value], above[above > value]
    # In sorted order the middle value's run of equals is [len(below), n − len(above)); the gaps between distinct
    # values nearest the middle rank are the run's two ends: the most even split, the lower one on a tie.
    start, stop = len(below), n - len(above)
    if start == 0 and stop == n:  # one value for every node: every bit 0, and the threshold just above it
        return np.float32(np.nextafter(value, np.float32(np.inf)))
    if start > 0 and (stop == n or abs(2 * start - n) <= abs(2 * stop - n)):
        low, high = below.max(), value
    else:
        low, high = value, above.min()
    threshold = np.float32(low + (high - low) / np.float32(2))
    return threshold if low < threshold < high else low  # adjacent floats: no value strictly between


def hop_parts(bits: int, hops: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(first bit, width, hops) of each part of a code whose bits split evenly over ``hops``."""
    if not hops or any(h < 0 for h in hops):
        raise ValueError(f"hash hops must be one or more counts ≥ 0, got {hops}")
    if bits % len(hops):
        raise ValueError(f"hash bits ({bits}) must split evenly over the hop counts {hops}")
    width = bits // len(hops)
    return [(number * width, width, h) for number, h in enumerate(hops)]


class _Graph:
    """The normalised adjacency, its transpose and its trivial item direction, made once for every block of bits
    (the transposes only where the hop counts need them)."""

    def __init__(self, train: sp.csr_matrix, pool: Executor, *, threads: int, raw: bool, propagated: bool) -> None:
        self.train = sp.csr_matrix(train, dtype=np.float32)
        self.user_degree = np.asarray(self.train.sum(axis=1), np.float32).ravel()
        self.item_degree = np.asarray(self.train.sum(axis=0), np.float32).ravel()
        self.trivial = trivial_direction(self.item_degree)
        self._normalized = _normalized(self.train, self.user_degree, self.item_degree, pool) if propagated else None
        self._transposed = transpose(self._normalized, pool, parts=threads) if self._normalized is not None else None
        self._train_t = transpose(self.train, pool, parts=threads) if raw else None

    @property
    def normalized(self) -> sp.csr_matrix:
        return _made(self._normalized)

    @property
    def transposed(self) -> sp.csr_matrix:
        return _made(self._transposed)

    @property
    def train_t(self) -> sp.csr_matrix:
        """Items' rows, for raw-row (0-hop) parts."""
        return _made(self._train_t)


def _made(matrix: T | None) -> T:
    if matrix is None:
        raise ValueError("this matrix was not made: the hop counts did not need it")
    return matrix


def transpose(matrix: sp.csr_matrix, pool: Executor | None = None, *, parts: int = 1) -> sp.csr_matrix:
    """matrix.T as CSR, as scipy makes it (each row's entries in the order of the rows they came from), from
    ``parts`` blocks of rows transposed by scipy in the pool and then placed side by side: row c of the result is
    block 0's row c, then block 1's, and so on."""
    blocks = nonzero_blocks(matrix.indptr, parts)
    pieces = run_all(pool, lambda block: sp.csr_matrix(_rows(matrix, *block).T), blocks)
    counts = [np.diff(piece.indptr) for piece in pieces]
    indptr = np.zeros(matrix.shape[1] + 1, np.int64)
    np.cumsum(sum(counts, np.zeros(matrix.shape[1], np.int64)), out=indptr[1:])
    data, indices = np.empty(matrix.nnz, matrix.data.dtype), np.empty(matrix.nnz, matrix.indices.dtype)
    offsets, start = [], indptr[:-1].copy()  # where each piece's part of row c goes
    for piece, count in zip(pieces, counts, strict=True):
        offsets.append(start - piece.indptr[:-1])
        start += count

    def place(number: int) -> None:
        piece, first_row = pieces[number], blocks[number][0]
        positions = np.repeat(offsets[number], counts[number]) + np.arange(piece.nnz)
        data[positions] = piece.data
        indices[positions] = piece.indices + first_row

    run_all(pool, place, range(len(pieces)))
    return sp.csr_matrix((data, indices, indptr), shape=(matrix.shape[1], matrix.shape[0]))


def _rows(matrix: sp.csr_matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows [start, stop) of a CSR matrix, sharing its arrays."""
    indptr = matrix.indptr
    nonzeros = slice(int(indptr[start]), int(indptr[stop]))
    return sp.csr_matrix(
        (matrix.data[nonzeros], matrix.indices[nonzeros], indptr[start : stop + 1] - indptr[start]),
        shape=(stop - start, matrix.shape[1]),
        copy=False,
    )


def _normalized(
    train: sp.csr_matrix, user_degree: npt.NDArray[np.float32], item_degree: npt.NDArray[np.float32], pool: Executor
) -> sp.csr_matrix:
    """D_u^-½ A D_i^-½, scaled entry by entry in A's order: what the product of the diagonals with A gives (A's rows
    in their stored order, zeros dropped) without its two single-threaded sparse products, when A has no duplicate
    entries for them to merge."""
    user_scale, item_scale = _inverse_sqrt(user_degree), _inverse_sqrt(item_degree)
    if not train.has_canonical_format:
        return sp.csr_matrix(sp.diags(user_scale) @ train @ sp.diags(item_scale), dtype=np.float32)
    indptr, data = train.indptr, np.empty_like(train.data)

    def scale(block: tuple[int, int]) -> None:
        start, stop = block
        nonzeros = slice(int(indptr[start]), int(indptr[stop]))
        data[nonzeros] = np.repeat(user_scale[start:stop], np.diff(indptr[start : stop + 1])) * train.data[nonzeros]
        data[nonzeros] *= item_scale[train.indices[nonzeros]]

    run_all(pool, scale, nonzero_blocks(indptr, PRODUCT_BLOCKS))
    out = sp.csr_matrix((data, train.indices.copy(), indptr.copy()), shape=train.shape)
    out.eliminate_zeros()
    return out


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


def _item_basis(graph: _Graph, bit_start: int, width: int, *, seed: int, hops: int, pool: Executor) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32]
]:  # fmt: skip
    """z = (ÂᵀÂ)^(hops−1) R for a block of bits, the trivial direction projected out, and trivialᵀR.

    Elementwise steps go by rows in the pool; the reductions over rows (trivialᵀz, the mean square) stay whole,
    as their order of summation is part of the result.
    """
    n, trivial, normalized = graph.train.shape[1], graph.trivial, graph.normalized
    z = projection(n, bit_start, width, seed=seed, side=1, pool=pool)
    along = (trivial @ z).astype(np.float32)
    _remove(z, trivial, along, pool)
    for _ in range(hops - 1):
        z = product(graph.transposed, product(normalized, z, pool), pool)
        _remove(z, trivial, trivial @ z, pool)
        _unit_rms(z, pool)  # keep float32 in range over many steps
    return z, along


def _remove(z: npt.NDArray[np.float32], trivial: npt.NDArray[np.float32], along: npt.NDArray[np.float32],
            pool: Executor) -> None:  # fmt: skip
    """z −= trivial alongᵀ, in place."""

    def remove(rows: slice) -> None:
        z[rows] -= trivial[rows, None] * along[None, :]

    by_rows(pool, len(z), remove)


def _unit_rms(z: npt.NDArray[np.float32], pool: Executor) -> None:
    """Each column of z divided by its root mean square, in place."""
    squares = np.empty_like(z)

    def square(rows: slice) -> None:
        np.square(z[rows], out=squares[rows])

    by_rows(pool, len(z), square)
    scale = np.maximum(np.sqrt(squares.mean(axis=0)), 1e-12)

    def divide(rows: slice) -> None:
        z[rows] /= scale[None, :]

    by_rows(pool, len(z), divide)


def _threshold(values: npt.NDArray[np.float32], medians: npt.NDArray[np.float32], out: npt.NDArray[np.bool_],
               pool: Executor) -> None:  # fmt: skip
    """out = values > medians (per column), by rows."""

    def compare(rows: slice) -> None:
        np.greater(values[rows], medians[None, :], out=out[rows])

    by_rows(pool, len(values), compare)


def _copy(source: npt.NDArray[np.float32], target: npt.NDArray[np.float32], pool: Executor) -> None:
    def copy(rows: slice) -> None:
        target[rows] = source[rows]

    by_rows(pool, len(source), copy)


def _part_values(graph: _Graph, block: int, width: int, *, seed: int, hops: int, pool: Executor) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32] | None, npt.NDArray[np.float32]
]:  # fmt: skip
    """Users' and items' values for a block of bits of one part, and (propagated parts) its z and trivialᵀR."""
    if hops == 0:
        user_values = projected(graph.train, block, width, seed=seed, side=1, pool=pool)
        item_values = projected(graph.train_t, block, width, seed=seed, side=0, pool=pool)
        return user_values, item_values, None, np.zeros(width, np.float32)
    z, along = _item_basis(graph, block, width, seed=seed, hops=hops, pool=pool)
    user_values = product(graph.normalized, z, pool)
    item_values = product(graph.transposed, user_values, pool)
    return user_values, item_values, z, along


def graph_codes(
    train: sp.csr_matrix, bits: int, *, seed: int, hops: tuple[int, ...] = (0,), threads: int | None = None
) -> tuple[npt.NDArray[np.bool_], dict[str, npt.NDArray[np.float32]]]:
    """Codes of users then items, and what coding a new user needs (``cold_user_bits``).

    With ``hops`` (0,) users are their rows of ``train`` projected by item-side R and items their columns by
    user-side R. Several hop counts split the bits evenly, one part each. The dict holds the per-bit medians
    (``user``, ``item``: split_points); with propagated parts also the training graph's ``item_degree`` and its
    ``item_degree_total``, ``trivial_along`` (trivialᵀR per bit, 0 in raw parts) and, for parts of 2 or more hops,
    the items' ``item_basis`` of those bits. ``threads`` (default: every usable core) changes no bit of either.
    """
    parts = hop_parts(bits, hops)
    threads = threads or usable_cores()
    with ThreadPoolExecutor(threads) as pool:
        graph = _Graph(train, pool, threads=threads, raw=min(hops) == 0, propagated=max(hops) > 0)
        n_users, n_items = graph.train.shape
        codes = np.empty((n_users + n_items, bits), bool)
        medians = {"user": np.empty(bits, np.float32), "item": np.empty(bits, np.float32)}
        along = np.zeros(bits, np.float32)
        basis = np.empty((n_items, sum(width for _, width, h in parts if h >= 2)), np.float32)
        basis_column = 0
        for start, width, hops_here in parts:
            for block in range(start, start + width, 32):
                block_width = min(32, start + width - block)
                bits_here = slice(block, block + block_width)
                user_values, item_values, z, along[bits_here] = _part_values(
                    graph, block, block_width, seed=seed, hops=hops_here, pool=pool
                )
                if hops_here >= 2 and z is not None:
                    _copy(z, basis[:, basis_column : basis_column + block_width], pool)
                    basis_column += block_width
                for side, values, out in (
                    ("user", user_values, codes[:n_users]),
                    ("item", item_values, codes[n_users:]),
                ):
                    medians[side][bits_here] = split_points(values, pool)
                    _threshold(values, medians[side][bits_here], out[:, bits_here], pool)
    if max(hops) > 0:
        medians["item_degree"], medians["trivial_along"] = graph.item_degree, along
        medians["item_degree_total"] = np.array(graph.item_degree.astype(np.float64).sum())
    if basis.shape[1]:
        medians["item_basis"] = basis
    return codes, medians


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


def check_grouping(bits: int, groups: int, names: tuple[str, str] = ("hash bits", "groups")) -> None:
    """ValueError unless ``bits`` split into ``groups`` equal groups of at most 16 bits (a codebook of 2^16 rows)."""
    if groups < 1 or bits % groups or bits // groups > 16:
        raise ValueError(f"{names[0]} {bits} must split into {names[1]} {groups} groups of at most 16 bits")


def group_indices(code_bits: npt.NDArray[np.bool_], groups: int) -> npt.NDArray[np.int64]:
    """[n, bits] → [n, groups]: each group's bits read as an integer (bit j of a group is worth 2^j).

    Packed a byte at a time: widening every bit to an int64 first held 16 bytes per bit, 20 GB for 20M nodes of
    64 bits, the largest host allocation of a 10M × 10M hashed training."""
    n, bits = code_bits.shape
    check_grouping(bits, groups)
    packed = np.packbits(code_bits.reshape(n, groups, bits // groups), axis=2, bitorder="little")
    out: npt.NDArray[np.int64] = packed[:, :, 0].astype(np.int64)
    if packed.shape[2] > 1:  # a second byte (groups are at most 16 bits), widened and shifted in place
        high = packed[:, :, 1].astype(np.int64)
        high <<= 8
        out |= high
    return out
