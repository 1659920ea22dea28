"""How the Triton backend cuts one search so its scratch memory stays fixed whatever the catalogue size.

Pure arithmetic (no GPU, no Triton), so it is tested everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_FRACTION = 16  # the threshold pass scores at most n_items / 16 items (at least 32 · k)
KEY_BUDGET = 1 << 25  # int64 keys held at once (256 MiB)
SAMPLE_BUDGET = 1 << 28  # int16 sampled distances held at once (512 MiB)
SAMPLE_PER_QUERY = 1 << 18  # beyond this a bigger sample costs more (its top-k) than its tighter bound saves
MAX_CHUNK = 4096  # queries per chunk


def next_power_of_two(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class ChunkPlan:
    """How one search is cut: queries per chunk, items sampled for the bound, key slots per query."""

    queries: int
    n_sample: int
    capacity: int


def plan_chunks(n_items: int, n_queries: int, k: int) -> ChunkPlan:
    """The largest query chunk (fewest passes over the codes) whose sample and keys fit their budgets.

    A sample of s items bounds each query's answer so that about k·n/s items pass it; the key buffer is
    twice that (plus slack). Fewer sampled items per query let more queries share a chunk, at the price
    of a looser bound — the budgets decide where that stops.
    """
    step = min(MAX_CHUNK, next_power_of_two(n_queries))
    while True:
        n_sample = min(n_items, max(32 * k, min(n_items // SAMPLE_FRACTION, SAMPLE_PER_QUERY, SAMPLE_BUDGET // step)))
        capacity = min(n_items, next_power_of_two(2 * (k * n_items // n_sample) + 1024))
        if step == 1 or (step * capacity <= KEY_BUDGET and step * n_sample <= SAMPLE_BUDGET):
            return ChunkPlan(step, n_sample, capacity)
        step //= 2
