"""How the Triton backend cuts one search so its scratch memory stays fixed whatever the catalogue size, and the
shapes (queries × k) its searches are captured at as CUDA graphs.

Pure arithmetic (no GPU, no Triton), so it is tested everywhere.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

SAMPLE_FRACTION = 16  # the threshold pass scores at most n_items / 16 items (at least 32 · k)
KEY_BUDGET = 1 << 27  # int64 keys held at once (1 GiB: a 1,024-query chunk at 100M items, 256 at 1B)
SAMPLE_BUDGET = 1 << 28  # int16 sampled distances held at once (512 MiB)
SAMPLE_PER_QUERY = 1 << 16  # the tight bound needs only a few sampled items within it; the sample's top-k costs
FLAG_BUDGET = 1 << 28  # bytes of the tensor-core scan's (query, tile) bitmap held at once (256 MiB)
FLAG_TILE = 128  # items per bit of that bitmap by default (the scan's default tile; smaller tiles take more)
MAX_CHUNK = 4096  # queries per chunk
TIGHT_TAIL = 1e-4  # the tight bound lets fewer than k items through for at most this share of queries
TIGHT_MIN_RANK = 6  # … and is never nearer than the 6th nearest sampled item (see tight_rank)
OVERFLOW_MARGIN = 4  # key slots per expected key at least (see key_slots)
SAMPLE_GROUP = 16  # the sample kernel keeps one (the nearest) of each group of up to this many sampled items


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def power_of_two_at_most(n: int) -> int:
    """The largest power of two ≤ ``n`` (n ≥ 1)."""
    return 1 << (n.bit_length() - 1)


# Searches of up to this many queries replay a captured CUDA graph when the plan is one chunk: below a few
# milliseconds of GPU work a search is bound by its ~25 launches from Python, not by the work (1M items × 64
# queries: 1.6–1.9 ms eager on an H200, most of it the GPU waiting for the host).
GRAPH_MAX_QUERIES = 1024
# The smallest k a graph is captured at: k = 5 and k = 20 replay one graph rather than each capturing its own.
GRAPH_MIN_K = 16


def graph_queries(n_queries: int) -> int:
    """The batch a search of ``n_queries`` is captured at: a power of two up to 64, then a multiple of 64 (a
    batch of 600 pads to 640, not 1024): 22 shapes cover every batch; past 640 queries padding adds under 10 %."""
    return next_power_of_two(n_queries) if n_queries <= 64 else -(-n_queries // 64) * 64


def graph_k(k: int, n_items: int) -> int:
    """The k a search for ``k`` results is captured at: a power of two, at least ``GRAPH_MIN_K``, at most the
    catalogue (the first k of an exact top-k ordered by distance, then id, are the exact top-k)."""
    return min(max(GRAPH_MIN_K, next_power_of_two(k)), n_items)


def warm_shapes(max_batch: int, max_fetch: int, n_items: int) -> tuple[list[int], list[int]]:
    """Query counts and fetches for warm-up searches: every k a fetch of up to ``max_fetch`` is captured at
    (``graph_k``: k = 5 and a fetch of 300 included), and batches of powers of two up to ``max_batch`` and
    ``max_batch`` itself, the batch a loaded server searches most (150 is captured at 192, which no power of two
    reaches). The multiples of 64 between them are left to their first request: each is one more graph per fetch,
    and the backend keeps only so many."""
    batches = {1 << i for i in range(max_batch.bit_length())} | {max_batch}
    fetches = {graph_k(fetch, n_items) for fetch in range(1, min(max_fetch, n_items) + 1)}
    return sorted(batches), sorted(fetches)


def poisson_quantile(mean: float, tail: float, most: int) -> int:
    """The smallest j with P(X ≥ j) < ``tail`` for X ~ Poisson(``mean``), or ``most`` if that is smaller
    (terms in log space: e^-mean underflows for a mean in the thousands)."""
    below, j = 0.0, 0
    while j < most and 1.0 - below >= tail:
        below += math.exp(j * math.log(mean) - mean - math.lgamma(j + 1)) if mean > 0 else float(j == 0)
        j += 1
    return j


def most_sampled(n_items: int, max_k: int) -> int:
    """The most items any ``plan_chunks`` of a catalogue of ``n_items`` samples, for k up to ``max_k``."""
    return min(n_items, max(32 * max_k, SAMPLE_PER_QUERY))


def spread_sample(n_items: int, size: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """Which items the threshold pass scores: one drawn from each of ``size`` equal strata of the ids, in a
    seeded random order.

    The bounds' arithmetic (``tight_rank``, ``key_slots``) holds for a sample that is random with respect to the
    codes. A catalogue's order often is not (items numbered by category, by cluster, by when they were added):
    its first items, as a sample, lie far from a query of another cluster, the bound admits the whole cluster and
    every search overflows into a redo. Strata cover every part of the order in proportion; the random order
    keeps the sample kernel's groups of consecutive sampled items from sharing one stratum's neighbourhood.
    """
    size = min(size, n_items)
    rng = np.random.default_rng(seed)
    starts = np.arange(size, dtype=np.int64) * n_items // size
    widths = np.diff(np.r_[starts, n_items])
    return rng.permutation(starts + (rng.random(size) * widths).astype(np.int64))


@functools.lru_cache(maxsize=1024)  # up to k Poisson terms: ~2 ms at k = 4,096, once per shape
def tight_rank(n_items: int, n_sample: int, k: int) -> int:
    """Which of a query's nearest sampled items sets its tight bound, j: about j · n_items / n_sample items are
    as near as it, so the smaller j, the fewer keys the collect pass writes and selects.

    Fewer than k items lie within it only when j sampled items are among the true k nearest, whose expected
    count is λ = k · n_sample / n_items: a Poisson tail, P(X ≥ j). j is the smallest rank putting that below
    ``TIGHT_TAIL`` per query (such a query is redone within its safe bound, at the cost of a host round trip
    and an eager pass). At 1M items, k = 100, λ = 6.25: j = 18, about 2.9 · k items pass (a fixed 8 · k margin
    let 8 · k through: 2.8 times the gather's and select's work). At 10M, λ = 0.66: j = 6, P = 6.3e-5 (1e-5
    took j = 7: 17 % more gather work at batch 1024 to save a redo in ~6 % of 1,024-query batches). A sparse
    sample (a huge catalogue, λ ≪ 1) takes at least the ``TIGHT_MIN_RANK``-th nearest: a looser bound, no redo.
    """
    expected = k * n_sample / n_items
    return max(min(k, TIGHT_MIN_RANK), poisson_quantile(expected, TIGHT_TAIL, k))


def sample_group(n_sample: int, k: int) -> int:
    """How many consecutive sampled items share one kept distance, their minimum: a power of two up to
    ``SAMPLE_GROUP`` leaving at least 32 · k groups.

    The k-th smallest of the group minima is still a safe bound (k distinct groups, so k distinct items, lie
    within it) and barely looser: two of a query's k nearest sampled items share a group about k² · g / (2 · s)
    times, ~1.3 for k = 100, g = 16, s = 62,500. The bound's top-k then sorts 1/g of the distances, a step that is
    otherwise a large share of a big batch's search.
    """
    return min(SAMPLE_GROUP, power_of_two_at_most(max(1, n_sample // (32 * k))))


def key_slots(n_items: int, n_sample: int, rank: int) -> int:
    """Key slots for a query collected within the ``rank``-th of its nearest sampled distances: about
    m = rank · n / s items are expected within it; twice that plus slack, and never under ``OVERFLOW_MARGIN`` · m.

    The count within the bound is m times a spread the integer distances widen (every item tied at the bound
    passes): in a Monte Carlo of random 64- to 576-bit codes, 1M to 1B items, count / m reached 3.4–4.3 at the
    99.99th percentile. 2 · m + 1024 alone left 3 % of queries overflowing at 1B items × 256 bits, and each overflow
    is a redo: a host round trip and one more pass over all the codes."""
    expected = rank * n_items // n_sample
    return min(n_items, next_power_of_two(max(2 * expected + 1024, OVERFLOW_MARGIN * expected)))


def safe_capacity(n_items: int, n_sample: int, k: int) -> int:
    """Key slots for a query collected within its safe bound (the k-th of the sample's group minima)."""
    return key_slots(n_items, n_sample, k)


def flag_bytes(n_items: int, flag_tile: int = FLAG_TILE) -> int:
    """A query's row of the tensor-core scan's tile bitmap: one bit per ``flag_tile`` items, in 32-bit words."""
    tiles = math.ceil(n_items / flag_tile)
    return 4 * math.ceil(tiles / 32)


@dataclass(frozen=True)
class ChunkPlan:
    """How one search is cut: queries per chunk, items sampled for the bound, key slots per query."""

    queries: int
    n_sample: int
    capacity: int


def plan_chunks(n_items: int, n_queries: int, k: int, flag_tile: int = FLAG_TILE) -> ChunkPlan:
    """The largest query chunk (fewest passes over the codes) whose sample, keys and tile bitmap fit their budgets.

    The tight bound (``tight_rank``) lets about j · n / s items through for a sample of s items; the key
    buffer is twice that plus slack (more is a rare redo). Fewer sampled items per query let more queries
    share a chunk, at the price of a looser bound — the budgets decide where that stops. ``flag_tile``: items
    per tile of the tensor-core scan (wide codes scan smaller tiles, ``scan_tiles``: a longer bitmap row).
    """
    step = min(MAX_CHUNK, next_power_of_two(n_queries))
    while True:
        n_sample = min(n_items, max(32 * k, min(n_items // SAMPLE_FRACTION, SAMPLE_PER_QUERY, SAMPLE_BUDGET // step)))
        capacity = key_slots(n_items, n_sample, tight_rank(n_items, n_sample, k))
        fits = step * capacity <= KEY_BUDGET and step * n_sample <= SAMPLE_BUDGET
        if step == 1 or (fits and step * flag_bytes(n_items, flag_tile) <= FLAG_BUDGET):
            return ChunkPlan(step, n_sample, capacity)
        step //= 2
