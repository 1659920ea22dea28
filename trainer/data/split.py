"""Per-user hold-out splits, reproducible from a seed and independent of the input's row order.

Test and validation sets are both carved per user, so every user with enough history is
evaluated and none is left without training data. How many of a user's ``n`` interactions are
held out: ``k = floor(fraction * n + 0.5)`` (round half up, so the count does not depend on
banker's rounding), capped at ``n - 1``. With the default fractions that means:

* test (0.2): users with 3+ interactions give at least one, users with 1-2 give none;
* validation (0.1): users with 5+ training items give at least one, users with 1-4 give none.

Small users are not forced to give an item because, for them, one item is a large share of what
the model can learn from, and forcing it would skew both splits towards cold users.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from index.threads import in_order, usable_cores

_BLOCK_INTERACTIONS = 1 << 20
_TIEBREAK_BITS = 53  # rng.random() gives multiples of 2**-53: scaled, an exact 53-bit integer
_BLOCK_USERS = 1 << (64 - _TIEBREAK_BITS)  # users of a block fit the key's 11 bits above the tie-break


def holdout_counts(sizes: npt.NDArray[np.int64], fraction: float) -> npt.NDArray[np.int64]:
    """How many interactions each user gives to the held-out side, given each user's total ``sizes``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"hold-out fraction must be in [0, 1), got {fraction}")
    wanted = np.floor(fraction * sizes + 0.5).astype(np.int64)
    cap = np.maximum(sizes - 1, 0).astype(np.int64)
    counts: npt.NDArray[np.int64] = np.minimum(wanted, cap)
    return counts


def holdout(
    users: npt.NDArray[np.integer[Any]],
    items: npt.NDArray[np.integer[Any]],
    *,
    fraction: float,
    seed: int,
    timestamps: npt.NDArray[np.floating[Any]] | None = None,
) -> npt.NDArray[np.bool_]:
    """Mark, for each user, ``holdout_counts`` of their interactions as held out.

    ``users`` and ``items`` are internal (non-negative integer) ids, one entry per interaction,
    without duplicate pairs. With ``timestamps`` each user's latest interactions are held out (ties
    broken by the seed); without, a seeded random subset. Interactions are ranked by
    ``(user, item)`` before the random draw, so the result depends on the set of pairs and the
    seed, not on the order rows came in.

    Example::

        test = holdout(users, items, fraction=0.2, seed=0, timestamps=ts)
        train_users, train_items = users[~test], items[~test]
    """
    if users.shape != items.shape or (timestamps is not None and timestamps.shape != users.shape):
        raise ValueError("users, items and timestamps must have the same shape")
    n = users.shape[0]
    if n == 0:
        return np.zeros(0, dtype=bool)
    rng = np.random.default_rng(seed)
    if is_sorted_pairs(users, items):
        return _holdout_sorted(users, fraction, rng, timestamps)
    canonical = np.lexsort((items, users))
    tiebreak = np.empty(n, dtype=np.float64)
    tiebreak[canonical] = rng.random(n)
    if timestamps is None:
        order = np.lexsort((tiebreak, users))
    else:
        order = np.lexsort((tiebreak, -timestamps.astype(np.float64), users))
    held = np.empty(n, dtype=bool)
    held[order] = _first_of_each_user(users[order], fraction)
    return held


def _holdout_sorted(
    users: npt.NDArray[np.integer[Any]],
    fraction: float,
    rng: np.random.Generator,
    timestamps: npt.NDArray[np.floating[Any]] | None,
) -> npt.NDArray[np.bool_]:
    """``holdout`` for pairs already in ``(user, item)`` order, a block of whole users at a time.

    The canonical order is then the input order, so the tie-breaks are drawn block after block from
    the one stream and each block sorts only its own users: the same result as sorting everything at
    once, in memory proportional to the blocks in flight, and the blocks run in threads. Without
    timestamps a block sorts one integer key, user above the tie-break's 53 bits, which is many times
    faster than ``lexsort``.
    """
    held = np.empty(users.shape[0], dtype=bool)

    def mark(start: int, end: int, tiebreak: npt.NDArray[np.float64]) -> None:
        block = users[start:end]
        if timestamps is None:
            local = (block - block[0]).astype(np.uint64) << np.uint64(_TIEBREAK_BITS)
            order = np.argsort(local | (tiebreak * 2.0**_TIEBREAK_BITS).astype(np.uint64), kind="stable")
        else:
            order = np.lexsort((tiebreak, -timestamps[start:end].astype(np.float64), block))
        held[start + order] = _first_of_each_user(block[order], fraction)

    workers = usable_cores()
    with ThreadPoolExecutor(workers) as pool:
        blocks = (partial(mark, start, end, rng.random(end - start)) for start, end in _user_blocks(users))
        for _ in in_order(pool, blocks, window=4 * workers):
            pass
    return held


def _user_blocks(users: npt.NDArray[np.integer[Any]]) -> Iterator[tuple[int, int]]:
    """Consecutive ``(start, end)`` ranges of sorted ``users``, each of whole users that fit the key's user bits."""
    n, start = users.shape[0], 0
    while start < n:
        end = min(start + _BLOCK_INTERACTIONS, n)
        end = int(np.searchsorted(users[start:end], users[start] + _BLOCK_USERS)) + start
        if end < n and users[end] == users[end - 1]:  # the block's last user continues: stop before them
            end = int(np.searchsorted(users[start:end], users[end], side="left")) + start
        if end == start:  # one user longer than a block
            end = int(np.searchsorted(users, users[start], side="right"))
        yield start, end
        start = end


def _first_of_each_user(sorted_users: npt.NDArray[np.integer[Any]], fraction: float) -> npt.NDArray[np.bool_]:
    """For users in groups, the first ``holdout_counts`` of each group."""
    n = sorted_users.shape[0]
    group_start = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[group_start, n]).astype(np.int64)
    rank = np.arange(n) - np.repeat(group_start, sizes)
    first: npt.NDArray[np.bool_] = rank < np.repeat(holdout_counts(sizes, fraction), sizes)
    return first


def is_sorted_pairs(users: npt.NDArray[np.integer[Any]], items: npt.NDArray[np.integer[Any]]) -> bool:
    """Whether the pairs are strictly increasing in ``(user, item)``: sorted, without duplicates."""
    for start in range(0, users.shape[0], _BLOCK_INTERACTIONS):
        u, i = users[start : start + _BLOCK_INTERACTIONS + 1], items[start : start + _BLOCK_INTERACTIONS + 1]
        step = u[1:] - u[:-1]
        if (step < 0).any() or ((step == 0) & (i[1:] <= i[:-1])).any():
            return False
    return True
