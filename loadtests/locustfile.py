"""Locust load test for the recommendation service, shaped like production traffic.

Why this shape and not a loop over one user id:

- Real traffic is skewed: a few heavy users ask again and again (their codes stay hot in Redis) and
  a long tail asks rarely. User ids are drawn Zipf-like from the ids the served bundle knows, so the
  cache sees the same mix of hits and misses it would in production; a uniform draw would overstate
  misses and a single id would hide them.
- About 5% of requests come from users the model has never seen. They take the popularity fallback,
  which skips Redis and the index, so it is a different code path with its own latency.
- Pages that show several people's picks (feeds, e-mails) ask for a batch: ``POST /recommend`` with
  ``BATCH_USERS`` users, one Redis round trip and one batched search.
- New users who have just interacted with a few items come with their history (cold start): the
  service derives their code from those items; they are answered with ``source = "history"`` when
  the bundle carries the cold-start arrays, and from popularity otherwise.
- With ``RECSYS_EVENTS_API_KEY`` set, known users also buy: they are shown their items, post the
  purchase of one to ``/events`` and ask again. The second answer must come from their events
  (``source = "events"`` when the bundle can code them) and must not show the item again; known users'
  other answers may then come from their events too. Unset, no events are sent.
- Every response is checked against the API contract, so a fast but wrong answer (an error body,
  too many items, the wrong source) counts as a failure, and ``--exit-code-on-error`` can gate CI.

User ids come from ``user_ids.txt`` of the bundle that ``RECSYS_BUNDLE_ROOT`` names (a bundle, or a
root whose ``CURRENT`` names one); without it the test falls back to ``u0``..``u999``, the ids of
the synthetic dataset. Run it with ``loadtests/run_headless.sh HOST [USERS] [SPAWN_RATE] [RUN_TIME]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import random
import secrets
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from locust import FastHttpUser, between, constant_throughput, task

K = 20
"""Items asked for per request, as the product pages do."""

BATCH_USERS = 8
"""Users per batch request."""

HISTORY_ITEMS = 5
"""Items a cold-start request gives as the new user's history."""

ZIPF_EXPONENT = 1.0
"""Skew of user popularity (classic Zipf): the i-th heaviest user asks 1/i as often as the heaviest."""

FALLBACK_USER_IDS = [f"u{i}" for i in range(1000)]
"""Synthetic-dataset ids, used when no bundle can be read."""

FALLBACK_ITEM_IDS = [f"i{i}" for i in range(500)]

SOURCES = {"codes", "popular"}

EVENTS_API_KEY = os.environ.get("RECSYS_EVENTS_API_KEY") or None
"""The X-API-Key of POST /events; unset or empty: the load test sends no events."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UserPopulation:
    """Known user ids with Zipf-like request weights; ``pick`` draws one id.

    Example::

        population = UserPopulation.zipf(["u0", "u1", "u2"], from_bundle=True)
        population.pick(random.Random(0))  # "u0", "u1" or "u2", heavy users more often
    """

    user_ids: list[str]
    cum_weights: list[float]
    from_bundle: bool
    item_ids: list[str] = dataclasses.field(default_factory=lambda: FALLBACK_ITEM_IDS)
    cold_start: bool = False  # the bundle answers histories from codes (it has cold_start.npz)

    @classmethod
    def zipf(
        cls,
        user_ids: list[str],
        *,
        from_bundle: bool,
        exponent: float = ZIPF_EXPONENT,
        item_ids: list[str] | None = None,
        cold_start: bool = False,
    ) -> UserPopulation:
        if not user_ids:
            raise ValueError("cannot draw from an empty list of user ids")
        # A fixed-seed shuffle decides who is heavy, so heavy users are not just the first rows of the
        # bundle, yet every run (and every worker process) agrees on them.
        ranked = list(user_ids)
        random.Random(2024).shuffle(ranked)
        weights = (1.0 / (rank + 1) ** exponent for rank in range(len(ranked)))
        return cls(
            user_ids=ranked,
            cum_weights=list(itertools.accumulate(weights)),
            from_bundle=from_bundle,
            item_ids=item_ids or FALLBACK_ITEM_IDS,
            cold_start=cold_start,
        )

    def pick(self, rng: random.Random) -> str:
        return rng.choices(self.user_ids, cum_weights=self.cum_weights, k=1)[0]

    def pick_many(self, rng: random.Random, count: int) -> list[str]:
        return rng.choices(self.user_ids, cum_weights=self.cum_weights, k=count)

    def history(self, rng: random.Random) -> list[str]:
        return rng.sample(self.item_ids, min(HISTORY_ITEMS, len(self.item_ids)))


def bundle_dir(root: Path) -> Path:
    """A bundle directory itself, or the bundle a root's ``CURRENT`` names."""
    return root if (root / "manifest.json").is_file() else root / (root / "CURRENT").read_text("utf-8").strip()


def read_ids(bundle: Path, name: str) -> list[str]:
    ids = [line for line in (bundle / name).read_text("utf-8").splitlines() if line]
    if not ids:
        raise ValueError(f"{bundle / name}: no ids")
    return ids


@cache
def user_population() -> UserPopulation:
    """Read once per process; locust imports this module once and shares it between simulated users."""
    root = os.environ.get("RECSYS_BUNDLE_ROOT")
    if root:
        try:
            bundle = bundle_dir(Path(root))
            ids, items = read_ids(bundle, "user_ids.txt"), read_ids(bundle, "item_ids.txt")
        except (OSError, ValueError) as exc:
            logger.warning("cannot read user ids from RECSYS_BUNDLE_ROOT=%s (%s); using u0..u999", root, exc)
        else:
            logger.info("drawing from %d user ids of the bundle under %s", len(ids), root)
            cold_start = (bundle / "cold_start.npz").is_file()
            return UserPopulation.zipf(ids, from_bundle=True, item_ids=items, cold_start=cold_start)
    else:
        logger.warning("RECSYS_BUNDLE_ROOT is not set; using user ids u0..u999")
    return UserPopulation.zipf(FALLBACK_USER_IDS, from_bundle=False)


class CheckedResponse(Protocol):
    """What the checks use of locust's ``catch_response`` context (its own methods are unannotated)."""

    status_code: int

    @property
    def text(self) -> str | None: ...

    def json(self) -> Any: ...

    def success(self) -> None: ...

    def failure(self, exc: Any) -> None: ...


def describe_status(response: CheckedResponse) -> str:
    """``status 503: <body>``, or the connection error when there was no response (status 0)."""
    if response.status_code == 0:
        return f"no response: {getattr(response, 'error', None)!r}"
    return f"status {response.status_code}: {(response.text or '')[:200]}"


def check_recommendation(
    response: CheckedResponse, *, expected_sources: set[str], excluded: frozenset[str] = frozenset()
) -> None:
    """Mark the response failed unless it is a 200 with at most ``K`` items from an expected source, none of them
    ``excluded``."""
    if response.status_code != 200:
        response.failure(describe_status(response))
        return
    try:
        body = response.json()
    except ValueError:
        response.failure(f"body is not JSON: {(response.text or '')[:200]}")
        return
    items = body.get("items") if isinstance(body, dict) else None
    source = body.get("source") if isinstance(body, dict) else None
    if not isinstance(items, list):
        response.failure(f"'items' is not a list: {items!r:.200}")
    elif len(items) > K:
        response.failure(f"{len(items)} items for k={K}")
    elif source not in expected_sources:
        response.failure(f"source {source!r}, expected one of {sorted(expected_sources)}")
    elif excluded & {item.get("item_id") for item in items if isinstance(item, dict)}:
        response.failure(f"shows {sorted(excluded)}, which the user just bought")
    else:
        response.success()


def shown_items(response: CheckedResponse) -> list[str]:
    """The item ids of a recommendation (none if it is not one)."""
    try:
        items = response.json()["items"] if response.status_code == 200 else []
        return [item["item_id"] for item in items]
    except (ValueError, KeyError, TypeError):
        return []


FAILED = object()  # what ``results_of`` returns once it has marked the response failed


def results_of(response: CheckedResponse) -> object:
    """The ``results`` of a 200 JSON object (None where it has none); ``FAILED``, with the response marked failed,
    for a status other than 200 or a body that is not a JSON object."""
    if response.status_code != 200:
        response.failure(describe_status(response))
        return FAILED
    try:
        return response.json().get("results")
    except (ValueError, AttributeError):
        response.failure(f"body is not a JSON object: {(response.text or '')[:200]}")
        return FAILED


def check_events(response: CheckedResponse, *, expected_statuses: set[str]) -> None:
    """Mark the response failed unless it is a 200 reporting one event with an expected status."""
    results = results_of(response)
    if results is FAILED:
        return
    statuses = [r.get("status") for r in results] if isinstance(results, list) else None
    if statuses is None or len(statuses) != 1 or statuses[0] not in expected_statuses:
        response.failure(f"statuses {statuses!r}, expected one of {sorted(expected_statuses)}")
    else:
        response.success()


def check_batch(response: CheckedResponse, users: list[str], *, expected_sources: set[str]) -> None:
    """Mark the response failed unless it answers every user, in order, each with at most ``K`` items."""
    results = results_of(response)
    if results is FAILED:
        return
    if not isinstance(results, list) or [r.get("user_id") for r in results] != users:
        response.failure(f"results do not answer {users} in order: {str(results)[:200]}")
    elif any(len(r.get("items", [])) > K or r.get("source") not in expected_sources for r in results):
        response.failure(f"a result has more than {K} items or a source outside {sorted(expected_sources)}")
    else:
        response.success()


def check_readiness(response: CheckedResponse) -> None:
    """'ready' and 'degraded' both serve: a degraded probe is counted apart (as ``/readyz [degraded]``), not as a
    failure, so a run against a service whose Redis is down reports that without failing its recommendations."""
    if response.status_code != 200:
        response.failure(describe_status(response))
        return
    body = response.json()
    status = body.get("status") if isinstance(body, dict) else None
    if status == "degraded":
        # Redis did not answer within its timeout: codes come from the bundle. Under load, that is a finding.
        meta = getattr(response, "request_meta", None)
        if isinstance(meta, dict):
            meta["name"] = "/readyz [degraded]"
        response.success()
    elif status != "ready":
        response.failure(f"readiness {status!r}")
    else:
        response.success()


class RecommendUser(FastHttpUser):
    """A client of the recommendation API: mostly known users, a few new ones, and a health probe."""

    # RECSYS_LOAD_RPS_PER_USER fixes each simulated user's request rate (benchmarks step the total rate
    # as users × this); unset, users think 50–250 ms between requests like people browsing.
    wait_time = (
        constant_throughput(float(os.environ["RECSYS_LOAD_RPS_PER_USER"]))
        if os.environ.get("RECSYS_LOAD_RPS_PER_USER")
        else between(0.05, 0.25)
    )

    def on_start(self) -> None:
        self.population = user_population()
        self.rng = random.Random()
        # Ids read from the bundle must be ranked by their codes (or, once users buy, by their events' codes); the
        # fallback ids may be unknown to whatever bundle is served, so there any source is a valid answer.
        self.after_buying = {"events"} if self.population.cold_start else {"codes"}
        if not self.population.from_bundle:
            self.after_buying = SOURCES | {"events"}
        self.known_sources = {"codes"} if self.population.from_bundle else SOURCES
        if EVENTS_API_KEY:
            self.known_sources = self.known_sources | self.after_buying
        if os.environ.get("RECSYS_LOAD_RPS_PER_USER"):
            return  # a benchmark's fixed rate: the weights alone, from the first request
        # Browsing: one request of every kind first, so that even a run of seconds checks each kind the service
        # answers; from then on the weights below draw them.
        for kind in (self.recommend_known_user, self.recommend_batch, self.recommend_cold_start,
                     self.recommend_unknown_user, self.readiness):  # fmt: skip
            kind()
        if EVENTS_API_KEY:
            self.buy_then_ask_again()

    @task(95)
    def recommend_known_user(self) -> None:
        user_id = self.population.pick(self.rng)
        with self.client.get(
            "/recommend", params={"user_id": user_id, "k": str(K)}, name="/recommend", catch_response=True
        ) as response:
            check_recommendation(response, expected_sources=self.known_sources)

    @task(10)
    def recommend_batch(self) -> None:
        users = self.population.pick_many(self.rng, BATCH_USERS)
        with self.client.post(
            "/recommend", json={"user_ids": users, "k": K}, name="/recommend [batch]", catch_response=True
        ) as response:
            check_batch(response, users, expected_sources=self.known_sources)

    @task(5)
    def recommend_cold_start(self) -> None:
        user_id = f"loadtest-cold-{secrets.token_hex(6)}"
        body = {"user_ids": [user_id], "k": K, "histories": {user_id: self.population.history(self.rng)}}
        expected = {"history"} if self.population.cold_start else {"history", "popular"}
        with self.client.post("/recommend", json=body, name="/recommend [cold start]", catch_response=True) as response:
            check_batch(response, [user_id], expected_sources=expected)

    @task(5)
    def recommend_unknown_user(self) -> None:
        user_id = f"loadtest-new-{secrets.token_hex(6)}"
        with self.client.get(
            "/recommend",
            params={"user_id": user_id, "k": str(K)},
            name="/recommend [unknown user]",
            catch_response=True,
        ) as response:
            check_recommendation(response, expected_sources={"popular"})

    @task(5 if EVENTS_API_KEY else 0)
    def buy_then_ask_again(self) -> None:
        """A known user is shown their items, buys one and asks again: the purchase must reach the next answer."""
        user_id = self.population.pick(self.rng)
        params = {"user_id": user_id, "k": str(K)}
        with self.client.get(
            "/recommend", params=params, name="/recommend [before buying]", catch_response=True
        ) as response:
            check_recommendation(response, expected_sources=self.known_sources)
            shown = shown_items(response)
        bought = self.rng.choice(shown) if shown else self.rng.choice(self.population.item_ids)
        event = {"user_id": user_id, "item_id": bought, "event_id": f"loadtest-{secrets.token_hex(8)}"}
        with self.client.post(
            "/events", json={"events": [event]}, headers={"X-API-Key": EVENTS_API_KEY or ""}, name="/events",
            catch_response=True,
        ) as response:  # fmt: skip
            # Fallback ids may name items the served bundle does not have.
            check_events(response, expected_statuses={"accepted"} if self.population.from_bundle else
                         {"accepted", "unknown_item"})  # fmt: skip
        with self.client.get(
            "/recommend", params=params, name="/recommend [after buying]", catch_response=True
        ) as response:
            check_recommendation(response, expected_sources=self.after_buying, excluded=frozenset({bought}))

    @task(1)
    def readiness(self) -> None:
        with self.client.get("/readyz", name="/readyz", catch_response=True) as response:
            check_readiness(response)
