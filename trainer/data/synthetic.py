"""A seeded interaction generator with the structure a GNN recommender exploits.

Real benchmarks are large, licensed and not shippable, so the demo and the scale tests run on this
instead. It reproduces the two properties that matter for ranking: a long-tailed (Zipf) item
popularity, which a popularity baseline already captures, and latent communities (users mostly
consume items of their own community), which only a model of user-item structure can learn. User
activity is either geometric (the small default) or power-law, as in real logs, where a few users
have thousands of interactions. Sizes from thousands to tens of millions of interactions are drawn
with a handful of NumPy calls; ``draw_block`` draws users a block at a time, so a file of hundreds
of millions of interactions is written in bounded memory (``trainer.data.generate``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from trainer.data.formats import RawInteractions

log = logging.getLogger(__name__)

MIN_ITEMS_PER_USER = 3
_MIXTURE_ROUNDS = 5
_MAX_ROUNDS = 1000
# Independent random streams, so the latent structure can be recreated without redoing the draws.
_LATENT_STREAM, _DRAW_STREAM = 0, 1


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape of the synthetic data set.

    ``community_affinity`` is the probability that one of a user's draws comes from their own
    community (weighted by popularity within it) rather than from global popularity; at 0 the data
    is pure popularity, at 1 communities are disjoint. Per-user counts have mean
    ``mean_items_per_user`` and are at least 3 and at most ``max_items_per_user`` (default: half the
    items). With ``activity="geometric"`` they are ``3 + Geometric`` (the cap lowers the mean a
    little); with ``"power-law"`` they are a discrete Pareto, ``P(count >= k) = (3 / k) ** alpha`` up
    to the cap, with ``alpha`` solved so the capped mean is the one asked for.

    Example::

        pairs = make_synthetic(SyntheticConfig(n_users=100_000, n_items=50_000, seed=1))
    """

    n_users: int = 2000
    n_items: int = 3000
    mean_items_per_user: float = 30.0
    n_communities: int = 20
    community_affinity: float = 0.8
    popularity_exponent: float = 1.0
    seed: int = 0
    activity: Literal["geometric", "power-law"] = "geometric"
    max_items_per_user: int | None = None

    @property
    def most_items_per_user(self) -> int:
        """The cap on a user's count: never more than half the catalogue, so every user can be filled."""
        half = max(MIN_ITEMS_PER_USER, self.n_items // 2)
        return min(self.n_items, half, self.max_items_per_user or half)

    def __post_init__(self) -> None:
        if not self.n_users >= 1:
            raise ValueError(f"n_users must be >= 1, got {self.n_users}")
        if not self.n_items >= MIN_ITEMS_PER_USER:
            raise ValueError(f"n_items must be >= {MIN_ITEMS_PER_USER}, got {self.n_items}")
        if not MIN_ITEMS_PER_USER <= self.mean_items_per_user < math.inf:
            raise ValueError(f"mean_items_per_user must be >= {MIN_ITEMS_PER_USER}, got {self.mean_items_per_user}")
        if not self.n_communities >= 1:
            raise ValueError(f"n_communities must be >= 1, got {self.n_communities}")
        if not 0.0 <= self.community_affinity <= 1.0:
            raise ValueError(f"community_affinity must be in [0, 1], got {self.community_affinity}")
        if not 0.0 <= self.popularity_exponent < math.inf:
            raise ValueError(f"popularity_exponent must be >= 0, got {self.popularity_exponent}")
        if self.activity not in ("geometric", "power-law"):
            raise ValueError(f"activity must be 'geometric' or 'power-law', got {self.activity!r}")
        if self.max_items_per_user is not None and self.max_items_per_user < MIN_ITEMS_PER_USER:
            raise ValueError(f"max_items_per_user must be >= {MIN_ITEMS_PER_USER}, got {self.max_items_per_user}")
        if self.activity == "power-law" and self.mean_items_per_user >= self.most_items_per_user:
            raise ValueError(
                f"mean_items_per_user must be below the per-user cap {self.most_items_per_user} "
                f"for power-law activity, got {self.mean_items_per_user}"
            )


@dataclass(frozen=True)
class _Sampler:
    """Popularity-weighted item draws, either global or restricted to one community, via one searchsorted.

    Items are laid out community by community; a draw for community ``c`` is a uniform point in
    that community's slice of the cumulative popularity mass.
    """

    items_by_community: npt.NDArray[np.int64]
    cumulative: npt.NDArray[np.float64]
    slice_start: npt.NDArray[np.int64]  # first position of each community in items_by_community
    slice_end: npt.NDArray[np.int64]
    mass_start: npt.NDArray[np.float64]
    mass: npt.NDArray[np.float64]
    global_cumulative: npt.NDArray[np.float64]

    @classmethod
    def build(cls, popularity: npt.NDArray[np.float64], community: npt.NDArray[np.int64], n: int) -> _Sampler:
        order = np.argsort(community, kind="stable").astype(np.int64)
        sizes = np.bincount(community, minlength=n).astype(np.int64)
        mass = np.bincount(community, weights=popularity, minlength=n).astype(np.float64)
        return cls(
            items_by_community=order,
            cumulative=np.cumsum(popularity[order]),
            slice_start=np.cumsum(sizes) - sizes,
            slice_end=np.cumsum(sizes),
            mass_start=np.cumsum(mass) - mass,
            mass=mass,
            global_cumulative=np.cumsum(popularity),
        )

    def draw(
        self, rng: np.random.Generator, communities: npt.NDArray[np.int64], affinity: float
    ) -> npt.NDArray[np.int64]:
        """One item per entry of ``communities``: from that community w.p. ``affinity``, else global."""
        n = int(communities.shape[0])
        uniform = rng.random(n)
        own = (rng.random(n) < affinity) & (self.mass[communities] > 0)
        items = np.empty(n, dtype=np.int64)
        anywhere = _search(self.global_cumulative, uniform[~own] * self.global_cumulative[-1])
        items[~own] = np.minimum(anywhere, self.global_cumulative.shape[0] - 1)
        c = communities[own]
        position = _search(self.cumulative, self.mass_start[c] + uniform[own] * self.mass[c])
        position = np.clip(position, self.slice_start[c], self.slice_end[c] - 1)  # guard float round-off
        items[own] = self.items_by_community[position]
        return items


def _search(cumulative: npt.NDArray[np.float64], targets: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """``searchsorted(side="right")`` of targets sorted first: in order, the binary searches of a large
    catalogue stay in cache (many times faster than random targets); the result is the same."""
    order = np.argsort(targets)
    position = np.empty(targets.shape[0], dtype=np.int64)
    position[order] = np.searchsorted(cumulative, targets[order], side="right")
    return position


@dataclass(frozen=True)
class LatentStructure:
    """The hidden truth behind a synthetic data set: item popularity weights and community labels."""

    popularity: npt.NDArray[np.float64]
    item_community: npt.NDArray[np.int64]
    user_community: npt.NDArray[np.int64]


def latent_structure(config: SyntheticConfig) -> LatentStructure:
    """Recreate the popularity and communities ``make_synthetic(config)`` drew from (for diagnostics)."""
    rng = np.random.default_rng([config.seed, _LATENT_STREAM])
    rank = rng.permutation(config.n_items)
    return LatentStructure(
        popularity=((rank + 1.0) ** -config.popularity_exponent).astype(np.float64),
        item_community=rng.integers(config.n_communities, size=config.n_items, dtype=np.int64),
        user_community=rng.integers(config.n_communities, size=config.n_users, dtype=np.int64),
    )


def _sorted_unique(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``np.unique`` by sorting: NumPy 2's hash-based ``unique`` is many times slower on large int arrays."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if keys.size else keys


def make_synthetic(config: SyntheticConfig) -> RawInteractions:
    """Draw a de-duplicated interaction set; the same config always gives the same pairs.

    Users and items are returned as ``int64`` indices ``0..n_users-1`` / ``0..n_items-1``, sorted by
    ``(user, item)``; their external ids are ``u<index>`` and ``i<index>``. Each user gets their
    drawn number of *distinct* items (at least 3, at most ``most_items_per_user``). Item popularity
    is Zipf with ``popularity_exponent`` over a random ranking of the items.
    """
    draw = SyntheticDraw.build(config)
    keys = draw.users(0, config.n_users, np.random.default_rng([config.seed, _DRAW_STREAM]))
    users, items = np.divmod(keys, config.n_items)
    log.info(
        "synthetic data: %d users, %d items, %d interactions (seed %d)",
        config.n_users,
        config.n_items,
        users.shape[0],
        config.seed,
    )
    return RawInteractions(users=users, items=items)


@dataclass(frozen=True)
class SyntheticDraw:
    """The latent structure and item sampler of one config, shared by every block of users drawn from it.

    Blocks are independent given their random stream, so a large set is drawn block by block, in
    threads, and gives the same pairs whatever the number of threads.

    Example::

        draw = SyntheticDraw.build(config)
        keys = draw.block(3, users_per_block=65_536)  # sorted user * n_items + item of users 196608..
    """

    config: SyntheticConfig
    latent: LatentStructure
    sampler: _Sampler

    @classmethod
    def build(cls, config: SyntheticConfig) -> SyntheticDraw:
        latent = latent_structure(config)
        return cls(config, latent, _Sampler.build(latent.popularity, latent.item_community, config.n_communities))

    def block(self, index: int, users_per_block: int) -> npt.NDArray[np.int64]:
        """Sorted keys ``user * n_items + item`` of block ``index``, drawn from its own random stream."""
        first = index * users_per_block
        count = min(users_per_block, self.config.n_users - first)
        return self.users(first, count, np.random.default_rng([self.config.seed, _DRAW_STREAM, index]))

    def users(self, first: int, count: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Sorted keys ``user * n_items + item`` of users ``first..first+count-1``.

        Draw, drop duplicate pairs, and draw again for the users still short of their count. Only
        the short users' pairs are re-sorted each round. After a few rounds from the popularity
        mixture, draws become uniform: a user who exhausted a small community still fills up quickly.
        """
        config, n_items = self.config, self.config.n_items
        wanted = items_per_user(config, rng, count)
        user_community = self.latent.user_community[first : first + count]
        done: list[npt.NDArray[np.int64]] = []
        pending = np.empty(0, dtype=np.int64)  # keys user * n_items + item of users still short
        short = np.arange(count, dtype=np.int64)  # users relative to ``first``
        deficit = wanted
        finished = np.zeros(count, dtype=bool)
        for round_ in range(_MAX_ROUNDS):
            users = np.repeat(short, deficit)
            if round_ < _MIXTURE_ROUNDS:
                items = self.sampler.draw(rng, user_community[users], config.community_affinity)
            else:
                items = rng.integers(n_items, size=users.shape[0], dtype=np.int64)
            pending = _sorted_unique(np.r_[pending, (users + first) * n_items + items])
            pending_users = pending // n_items - first
            have = np.bincount(pending_users, minlength=count)
            complete = have >= wanted  # only users with pending keys can be newly complete
            done.append(pending[complete[pending_users]])
            pending = pending[~complete[pending_users]]
            finished |= complete
            short = np.flatnonzero(~finished)
            if short.size == 0:
                break
            deficit = wanted[short] - have[short]
        else:
            raise RuntimeError(f"synthetic generator did not converge in {_MAX_ROUNDS} rounds: {config}")
        return np.sort(np.concatenate(done))


def items_per_user(config: SyntheticConfig, rng: np.random.Generator, n_users: int) -> npt.NDArray[np.int64]:
    """How many distinct items each of ``n_users`` users gets, drawn as ``config.activity`` says."""
    most = config.most_items_per_user
    if config.activity == "geometric":
        extra_mean = config.mean_items_per_user - MIN_ITEMS_PER_USER
        extra = rng.geometric(1.0 / (extra_mean + 1.0), size=n_users) - 1
        return np.minimum(MIN_ITEMS_PER_USER + extra, most).astype(np.int64)
    alpha = pareto_exponent(config.mean_items_per_user, most)
    # 1 - U lies in (0, 1]: the power never divides by zero, and the largest counts are capped below.
    counts = np.floor(MIN_ITEMS_PER_USER * (1.0 - rng.random(n_users)) ** (-1.0 / alpha))
    return np.minimum(counts, most).astype(np.int64)


@cache
def pareto_exponent(mean: float, most: int) -> float:
    """The ``alpha`` whose capped discrete Pareto ``min(floor(3 * U ** (-1 / alpha)), most)`` has this mean.

    ``P(count >= k) = (3 / k) ** alpha`` for ``3 <= k <= most``, so the mean is ``3 + sum`` of those
    tails over ``k = 4..most``: it falls from ``most`` to 3 as ``alpha`` grows, and bisection finds it.
    """
    if not MIN_ITEMS_PER_USER < mean < most:
        raise ValueError(f"a mean of {mean} items per user needs a cap above it and above 3, got {most}")
    k = np.arange(MIN_ITEMS_PER_USER + 1, most + 1, dtype=np.float64)
    log_ratio = np.log(MIN_ITEMS_PER_USER / k)
    low, high = 1e-3, 1e3
    for _ in range(80):
        alpha = float(np.sqrt(low * high))
        if MIN_ITEMS_PER_USER + float(np.exp(alpha * log_ratio).sum()) > mean:
            low = alpha
        else:
            high = alpha
    return float(np.sqrt(low * high))
