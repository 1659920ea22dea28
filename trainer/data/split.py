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

from typing import Any

import numpy as np
import numpy.typing as npt


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
    held = np.zeros(n, dtype=bool)
    if n == 0:
        return held
    canonical = np.lexsort((items, users))
    tiebreak = np.empty(n, dtype=np.float64)
    tiebreak[canonical] = np.random.default_rng(seed).random(n)
    if timestamps is None:
        order = np.lexsort((tiebreak, users))
    else:
        order = np.lexsort((tiebreak, -timestamps.astype(np.float64), users))

    sorted_users = users[order]
    group_start = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    sizes = np.diff(np.r_[group_start, n]).astype(np.int64)
    rank = np.arange(n) - np.repeat(group_start, sizes)
    held[order] = rank < np.repeat(holdout_counts(sizes, fraction), sizes)
    return held
