"""The Triton backend's search plan: scratch memory within budget at any catalogue size, one chunk where it fits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from index.retrieval.chunking import (
    FLAG_BUDGET,
    KEY_BUDGET,
    MAX_CHUNK,
    SAMPLE_BUDGET,
    SAMPLE_FRACTION,
    SAMPLE_GROUP,
    SAMPLE_PER_QUERY,
    TIGHT_MIN_RANK,
    TIGHT_TAIL,
    flag_bytes,
    graph_k,
    graph_queries,
    most_sampled,
    plan_chunks,
    poisson_quantile,
    sample_group,
    spread_sample,
    tight_rank,
    warm_shapes,
)


@pytest.mark.parametrize("n_items", [1_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000, 2**31 - 1])
@pytest.mark.parametrize("n_queries", [1, 64, 1024, 10_000])
@pytest.mark.parametrize("k", [1, 100, 1000, 4096])
def test_scratch_memory_stays_within_budget(n_items: int, n_queries: int, k: int) -> None:
    plan = plan_chunks(n_items, n_queries, k)
    assert 1 <= plan.queries <= MAX_CHUNK and plan.queries & (plan.queries - 1) == 0
    assert min(n_items, 32 * k) <= plan.n_sample <= n_items
    # the key buffer holds twice the items expected within the tight bound
    assert plan.capacity >= min(n_items, 2 * tight_rank(n_items, plan.n_sample, k) * n_items // plan.n_sample)
    if plan.queries > 1:
        assert plan.queries * plan.capacity <= KEY_BUDGET and plan.queries * plan.n_sample <= SAMPLE_BUDGET


def test_a_10m_catalogue_answers_a_batch_of_1024_in_one_chunk() -> None:
    plan = plan_chunks(10_000_000, 1024, 100)
    assert plan.queries == 1024 and plan.n_sample < 10_000_000 // SAMPLE_FRACTION


def test_the_tile_bitmap_stays_within_budget_for_a_billion_items() -> None:
    plan = plan_chunks(1_000_000_000, MAX_CHUNK, 1)
    assert plan.queries * flag_bytes(1_000_000_000) <= FLAG_BUDGET < 2 * plan.queries * flag_bytes(1_000_000_000)
    assert flag_bytes(128 * 32) == 4 and flag_bytes(128 * 32 + 1) == 8  # one bit per 128 items, whole words


def test_a_billion_items_cut_the_batch_instead_of_growing_scratch_memory() -> None:
    plan = plan_chunks(1_000_000_000, MAX_CHUNK, 100)
    assert 1 < plan.queries < MAX_CHUNK
    single = plan_chunks(1_000_000_000, 1, 100)
    assert single.n_sample == SAMPLE_PER_QUERY  # a bigger sample per query would cost more than it saves
    assert single.capacity >= 2 * 6 * 1_000_000_000 // SAMPLE_PER_QUERY  # the 6th nearest sampled item is the bound


def poisson_tail(mean: float, j: int) -> float:
    """P(X ≥ j), X ~ Poisson(mean), summed term by term in log space (independent of ``poisson_quantile``)."""
    return 1.0 - sum(math.exp(i * math.log(mean) - mean - math.lgamma(i + 1)) for i in range(j))


@pytest.mark.parametrize(("n_items", "n_sample", "k", "rank"), [
    (10_000_000, 65_536, 100, 6),  # λ = 0.66: P(X ≥ 6) = 6.3e-5
    (4_000_000, 65_536, 100, 9),  # λ = 1.6: P(X ≥ 8) = 3.0e-4, P(X ≥ 9) = 5.4e-5
    (1_000_000, 62_500, 100, 18),  # λ = 6.25: 18 · 1M / 62,500 = 288 items pass
    (1_000_000_000, 65_536, 100, 6),  # a sparse sample: never nearer than its 6th nearest item (no redo)
    (3_200, 3_200, 20, 20),  # the whole catalogue sampled, λ = k: capped at k
    (1_000_000, 65_536, 1000, 99),  # λ = 65.5
])  # fmt: skip
def test_the_tight_bound_under_fills_at_most_tight_tail_of_queries(
    n_items: int, n_sample: int, k: int, rank: int
) -> None:
    assert tight_rank(n_items, n_sample, k) == rank
    mean = k * n_sample / n_items
    if TIGHT_MIN_RANK < rank < k:  # held at neither end: the smallest rank whose Poisson tail is below TIGHT_TAIL
        assert poisson_tail(mean, rank) < TIGHT_TAIL <= poisson_tail(mean, rank - 1)
    assert rank == k or poisson_tail(mean, rank) < TIGHT_TAIL  # capped at k, or under-fills rarely enough
    assert poisson_quantile(mean, TIGHT_TAIL, k) == max(rank, 1) or rank == TIGHT_MIN_RANK


@pytest.mark.parametrize(
    ("n_sample", "k", "group"), [(62_500, 100, 16), (65_536, 1000, 2), (3_200, 100, 1), (100, 100, 1)]
)
def test_the_sample_keeps_one_distance_per_group_while_32_k_groups_remain(n_sample: int, k: int, group: int) -> None:
    assert sample_group(n_sample, k) == group
    assert group <= SAMPLE_GROUP and (group == 1 or n_sample // group >= 32 * k)


@pytest.mark.parametrize(("n_items", "size"), [(7, 7), (1_000, 1_000), (10_000, 625), (10_000_000, 131_072)])
def test_the_sample_takes_one_item_from_every_stratum_of_the_ids_in_a_shuffled_order(n_items: int, size: int) -> None:
    """A catalogue numbered by category or cluster: its first items would be a sample of one cluster. One item
    from each equal stratum of the ids covers every part in proportion; the same catalogue gets the same sample."""
    rows = spread_sample(n_items, size)
    assert rows.shape == (size,) and rows.dtype == np.int64
    starts = np.arange(size + 1, dtype=np.int64) * n_items // size
    ordered = np.sort(rows)
    assert np.all((ordered >= starts[:-1]) & (ordered < starts[1:]))  # one in each stratum, so all distinct
    assert not np.array_equal(rows, ordered)  # groups of consecutive sampled items span the catalogue
    assert np.array_equal(rows, spread_sample(n_items, size))
    assert np.array_equal(np.sort(spread_sample(n_items, n_items + 1)), np.arange(n_items))  # a small catalogue: all


@pytest.mark.parametrize("n_items", [1, 100, 5_000, 131_072, 10_000_000, 2**31 - 1])
@pytest.mark.parametrize("n_queries", [1, 1024, 10_000])
@pytest.mark.parametrize("k", [1, 20, 1000, 4096])
def test_no_plan_samples_more_items_than_the_backend_gathers(n_items: int, n_queries: int, k: int) -> None:
    assert plan_chunks(n_items, n_queries, min(k, n_items)).n_sample <= most_sampled(n_items, 4096)


@pytest.mark.parametrize("bits", [256, 576])
def test_key_slots_hold_the_items_tied_at_a_billion_items_bound(bits: int) -> None:
    """Random codes, simulated: the tight bound is the j-th smallest sampled group minimum, and every catalogue
    item at that integer distance passes. With twice the expected count as room, 3 % (256-bit) and 1 % (576-bit)
    of queries overflowed at 1B items and were searched twice; the margin leaves none of 400. (64-bit codes, whose
    distances step ×2.5 at the bound, still overflow about once in 400 queries at 1B items.)"""
    n_items, k, queries = 1_000_000_000, 100, 400
    plan = plan_chunks(n_items, 64, k)
    rank, group = tight_rank(n_items, plan.n_sample, k), sample_group(plan.n_sample, k)
    cdf = np.cumsum(np.array([math.comb(bits, d) for d in range(bits + 1)], dtype=np.float64)) / 2.0**bits
    rng = np.random.default_rng(0)
    sampled = rng.binomial(bits, 0.5, (queries, plan.n_sample // group * group)).astype(np.int16)
    minima = sampled.reshape(queries, -1, group).min(axis=2)
    bounds = np.sort(minima, axis=1)[:, rank - 1]
    counts = rng.binomial(n_items, cdf[bounds])
    assert int((counts > plan.capacity).sum()) == 0
    assert int((counts > 2 * rank * n_items // plan.n_sample + 1024).sum()) > 0  # the old room: not enough


def test_a_graph_is_captured_at_k_of_at_least_16_and_at_most_the_catalogue() -> None:
    assert [graph_k(k, 10**6) for k in (1, 5, 16, 17, 20, 300, 4096)] == [16, 16, 16, 32, 32, 512, 4096]
    assert graph_k(5, 10) == 10 and graph_k(60, 40) == 40


def test_warm_shapes_reach_every_k_serving_captures_and_the_largest_batch() -> None:
    """Every fetch up to the warm-up's reach meets a k warm-up captured (k = 1 and a fetch past the last power of
    two included), and the batch a loaded server fills is warmed even when it is no power of two."""
    for max_batch, max_fetch, n_items in [(64, 256, 10**6), (150, 300, 10**6), (4, 4096, 10**5), (64, 256, 100)]:
        batches, fetches = warm_shapes(max_batch, max_fetch, n_items)
        assert {graph_k(fetch, n_items) for fetch in range(1, min(max_fetch, n_items) + 1)} == set(fetches)
        assert {graph_queries(max_batch), *(graph_queries(2**i) for i in range(max_batch.bit_length()))} == {
            graph_queries(batch) for batch in batches
        }
        assert max(batches) == max_batch
    assert warm_shapes(64, 256, 10**6) == ([1, 2, 4, 8, 16, 32, 64], [16, 32, 64, 128, 256])  # 35 searches
    assert warm_shapes(150, 300, 10**6)[1][-1] == 512  # a fetch of 300 is captured at 512
