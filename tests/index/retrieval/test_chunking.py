"""The Triton backend's search plan: scratch memory within budget at any catalogue size, one chunk where it fits."""

from __future__ import annotations

import pytest

from index.retrieval.chunking import (
    KEY_BUDGET,
    MAX_CHUNK,
    SAMPLE_BUDGET,
    SAMPLE_FRACTION,
    SAMPLE_PER_QUERY,
    plan_chunks,
)


@pytest.mark.parametrize("n_items", [1_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000, 2**31 - 1])
@pytest.mark.parametrize("n_queries", [1, 64, 1024, 10_000])
@pytest.mark.parametrize("k", [1, 100, 1000, 4096])
def test_scratch_memory_stays_within_budget(n_items: int, n_queries: int, k: int) -> None:
    plan = plan_chunks(n_items, n_queries, k)
    assert 1 <= plan.queries <= MAX_CHUNK and plan.queries & (plan.queries - 1) == 0
    assert min(n_items, 32 * k) <= plan.n_sample <= n_items
    # the key buffer holds twice the items expected within the sampled bound
    assert plan.capacity >= min(n_items, 2 * k * n_items // plan.n_sample)
    if plan.queries > 1:
        assert plan.queries * plan.capacity <= KEY_BUDGET and plan.queries * plan.n_sample <= SAMPLE_BUDGET


def test_a_10m_catalogue_answers_a_batch_of_1024_in_one_chunk() -> None:
    plan = plan_chunks(10_000_000, 1024, 100)
    assert plan.queries == 1024 and plan.n_sample < 10_000_000 // SAMPLE_FRACTION


def test_a_billion_items_cut_the_batch_instead_of_growing_scratch_memory() -> None:
    plan = plan_chunks(1_000_000_000, 1024, 100)
    assert 1 < plan.queries < 1024
    single = plan_chunks(1_000_000_000, 1, 100)
    assert single.n_sample == SAMPLE_PER_QUERY  # a bigger sample per query would cost more than it saves
    assert single.capacity >= 2 * 100 * 1_000_000_000 // SAMPLE_PER_QUERY
