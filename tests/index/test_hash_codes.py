"""graph_codes's threaded, blocked path gives every bit, median and basis value the straightforward computation
gives: one product per matrix, the whole of R at once, a full sort per column."""

from __future__ import annotations

import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

from index.hash_codes import (
    ROW_BLOCK,
    graph_codes,
    group_indices,
    hop_parts,
    projection,
    projection_rows,
    split_points,
    transpose,
    trivial_direction,
)
from index.threads import nonzero_blocks, row_blocks

Arrays = dict[str, npt.NDArray[np.float32]]


def reference_projection(n: int, bit_start: int, width: int, *, seed: int, side: int) -> npt.NDArray[np.float32]:
    def splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        with np.errstate(over="ignore"):
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return x ^ (x >> np.uint64(31))

    j = np.arange(n, dtype=np.uint64)[:, None]
    b = np.arange(bit_start, bit_start + width, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        key = np.uint64(seed) * np.uint64(0x100000001B3) ^ np.uint64(side) << np.uint64(62)
        counter = key ^ (j * np.uint64(1 << 20) + b) * np.uint64(2)
    u1 = (splitmix64(counter) >> np.uint64(11)).astype(np.float64) / 2.0**53
    u2 = (splitmix64(counter + np.uint64(1)) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return (np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def reference_split_points(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    n, width = values.shape
    out = np.zeros(width, np.float32)
    if n == 0:
        return out
    ordered = np.sort(values, axis=0)
    for column in range(width):
        col = ordered[:, column]
        gaps = np.flatnonzero(col[1:] > col[:-1]) + 1
        if gaps.size == 0:
            out[column] = np.nextafter(col[0], np.float32(np.inf))
            continue
        gap = gaps[np.abs(2 * gaps - n).argmin()]
        low, high = col[gap - 1], col[gap]
        middle = np.float32(low + (high - low) / np.float32(2))
        out[column] = middle if low < middle < high else low
    return out


def reference_graph_codes(train: sp.csr_matrix, bits: int, *, seed: int, hops: tuple[int, ...]) -> tuple[
    npt.NDArray[np.bool_], Arrays
]:  # fmt: skip
    train = sp.csr_matrix(train, dtype=np.float32)
    user_degree = np.asarray(train.sum(axis=1), np.float32).ravel()
    item_degree = np.asarray(train.sum(axis=0), np.float32).ravel()

    def inverse_sqrt(degree: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1.0)), 0.0).astype(np.float32)

    normalized = sp.csr_matrix(
        sp.diags(inverse_sqrt(user_degree)) @ train @ sp.diags(inverse_sqrt(item_degree)), dtype=np.float32
    )
    transposed, train_t, trivial = sp.csr_matrix(normalized.T), sp.csr_matrix(train.T), trivial_direction(item_degree)
    users, items = np.empty((train.shape[0], bits), bool), np.empty((train.shape[1], bits), bool)
    medians = {"user": np.empty(bits, np.float32), "item": np.empty(bits, np.float32)}
    along, bases = np.zeros(bits, np.float32), []
    for start, width, hops_here in hop_parts(bits, hops):
        for block in range(start, start + width, 32):
            here = slice(block, min(block + 32, start + width))
            size = here.stop - here.start
            if hops_here == 0:
                user_values = np.asarray(train @ reference_projection(train.shape[1], block, size, seed=seed, side=1))
                item_values = np.asarray(train_t @ reference_projection(train.shape[0], block, size, seed=seed, side=0))
            else:
                r = reference_projection(train.shape[1], block, size, seed=seed, side=1)
                along[here] = (trivial @ r).astype(np.float32)
                z = (r - trivial[:, None] * along[here][None, :]).astype(np.float32)
                for _ in range(hops_here - 1):
                    z = np.asarray(transposed @ (normalized @ z), np.float32)
                    z -= trivial[:, None] * (trivial @ z)[None, :]
                    z /= np.maximum(np.sqrt((z**2).mean(axis=0)), 1e-12)[None, :]
                user_values = np.asarray(normalized @ z, np.float32)
                item_values = np.asarray(transposed @ user_values, np.float32)
                if hops_here >= 2:
                    bases.append(z)
            for side, values, out in (("user", user_values, users), ("item", item_values, items)):
                medians[side][here] = reference_split_points(values)
                out[:, here] = values > medians[side][here]
    if any(hops):
        medians["item_degree"], medians["trivial_along"] = item_degree, along
        medians["item_degree_total"] = np.array(item_degree.astype(np.float64).sum())
    if bases:
        medians["item_basis"] = np.concatenate(bases, axis=1)
    return np.concatenate([users, items]), medians


def random_graph(kind: str) -> sp.csr_matrix:
    """Graphs whose values tie: duplicate users (equal rows), empty rows and columns, one popular item; stored
    canonically, with unsorted columns, or with duplicate entries that the scipy products merge."""
    rng = np.random.default_rng(7)
    users, items, edges = 301, 157, 2500
    rows, cols = rng.integers(0, users, edges), np.minimum(rng.pareto(1.0, edges) * 10, items - 1).astype(np.int64)
    keep = (rows % 13 != 0) & (cols % 11 != 5)  # empty users and items
    rows, cols = rows[keep], cols[keep]
    graph = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))
    graph.data[:] = 1.0
    graph = sp.csr_matrix(sp.vstack([graph, graph[:40], graph[5:6], graph[5:6]]))  # duplicate users
    if kind == "unsorted":
        for row in range(graph.shape[0]):
            nonzeros = slice(graph.indptr[row], graph.indptr[row + 1])
            graph.indices[nonzeros] = graph.indices[nonzeros][::-1]
        graph.has_sorted_indices = False
    elif kind == "duplicates":  # every third user's first item twice
        doubled = [np.r_[graph.indices[a : b], graph.indices[a : b][:1] if row % 3 == 0 else []].astype(np.int32)
                   for row, (a, b) in enumerate(zip(graph.indptr[:-1], graph.indptr[1:], strict=True))]  # fmt: skip
        indptr = np.r_[0, np.cumsum([len(row) for row in doubled])]
        indices = np.concatenate(doubled)
        graph = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=graph.shape)
        assert not graph.has_canonical_format
    return graph


@pytest.mark.parametrize("kind", ["canonical", "unsorted", "duplicates"])
@pytest.mark.parametrize(
    ("bits", "hops"), [(64, (0,)), (64, (1,)), (64, (3,)), (96, (0, 2)), (144, (0, 1, 2)), (128, (2, 0, 1, 3))]
)
@pytest.mark.parametrize("threads", [1, 3])
def test_graph_codes_equal_the_straightforward_computation(
    kind: str, bits: int, hops: tuple[int, ...], threads: int
) -> None:
    train = random_graph(kind)
    codes, arrays = graph_codes(train, bits, seed=11, hops=hops, threads=threads)
    expected_codes, expected = reference_graph_codes(train, bits, seed=11, hops=hops)
    assert np.array_equal(codes, expected_codes)
    assert sorted(arrays) == sorted(expected)
    for name, array in expected.items():
        assert arrays[name].dtype == array.dtype and arrays[name].tobytes() == array.tobytes(), name


def test_blocked_projection_equals_the_whole() -> None:
    n = 2 * ROW_BLOCK + 123  # a short last block
    for bit_start, width in ((0, 32), (32, 32), (96, 17)):
        whole = reference_projection(n, bit_start, width, seed=5, side=1)
        assert projection(n, bit_start, width, seed=5, side=1).tobytes() == whole.tobytes()
        assert projection_rows(np.arange(n), bit_start, width, seed=5, side=1).tobytes() == whole.tobytes()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 100, 1001])
def test_split_points_equal_a_full_sort_with_ties(n: int) -> None:
    rng = np.random.default_rng(n)
    columns = [
        rng.standard_normal(n),
        rng.integers(0, 3, n),  # few distinct values: long runs at the middle rank
        np.zeros(n),  # one value: no gap
        np.where(np.arange(n) < n // 2, 1.0, 2.0),  # the gap exactly at the middle
        np.where(np.arange(n) < n - 1, 0.0, 1.0),  # the only gap at the top
        np.where(np.arange(n) < 1, 0.0, 1.0),  # the only gap at the bottom
        np.where(rng.random(n) < 0.5, np.float32(1.0), np.nextafter(np.float32(1.0), np.float32(2.0))),  # adjacent
    ]
    values = np.stack(columns, axis=1).astype(np.float32)
    assert split_points(values).tobytes() == reference_split_points(values).tobytes()


@pytest.mark.parametrize("kind", ["canonical", "unsorted", "duplicates"])
@pytest.mark.parametrize("parts", [1, 2, 5, 64])
def test_transpose_by_blocks_is_scipys(kind: str, parts: int) -> None:
    graph = random_graph(kind)
    graph.data = np.random.default_rng(3).random(graph.nnz).astype(np.float32)  # entries told apart by value
    expected = sp.csr_matrix(graph.T)
    with ThreadPoolExecutor(3) as pool:
        got = transpose(graph, pool, parts=parts)
    assert got.shape == expected.shape
    for name in ("indptr", "indices", "data"):
        assert np.array_equal(getattr(got, name), getattr(expected, name)), name


def test_row_blocks_cover_every_row_once() -> None:
    assert row_blocks(10, rows=4) == [(0, 4), (4, 8), (8, 10)]
    indptr = np.array([0, 100, 100, 101, 102, 103, 300])
    blocks = nonzero_blocks(indptr, 4)
    assert blocks[0][0] == 0 and blocks[-1][1] == 6
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
    assert nonzero_blocks(np.array([0]), 4) == []


@pytest.mark.parametrize(("bits", "groups"), [(64, 8), (64, 4), (48, 3), (12, 4), (5, 5)])
def test_group_indices_read_each_group_little_endian_and_hold_no_wide_copy_of_the_bits(bits: int, groups: int) -> None:
    """Bit j of a group is worth 2^j. The nodes' bits are not widened to int64 on the way: at 20M nodes × 64 bits
    that copy and its product were 20 GB, the largest host allocation of a 10M × 10M hashed training."""
    code_bits = np.random.default_rng(bits).random((50_000, bits)) < 0.5
    width = bits // groups
    expected = sum(code_bits[:, j::width].astype(np.int64) << j for j in range(width))
    tracemalloc.start()
    try:
        got = group_indices(code_bits, groups)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(got, expected)
    assert peak < 2 * got.nbytes + code_bits.nbytes  # the answer, one column's widening and the packed bytes
