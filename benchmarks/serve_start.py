"""`recsys-serve` on a large bundle: time to ready, resident memory of each process, and a short /recommend load.

    python -m benchmarks.serve_start --bundle-root /tmp/scale/b1m --workers 2 --requests 2000 --concurrency 16

Starts a fresh redis-server and `recsys-serve` (index on --device, their output in --log), waits for /readyz (or
fails with the log's tail as soon as the server exits), reads every process's RSS
and PSS (PSS splits pages shared through the page cache, such as a mapped bundle, among the processes that map
them), then sends --requests GET /recommend for known users drawn uniformly (5 % unknown ones) from
--concurrency connections and reports p50/p99/p99.9. The slowest 1 % are kept with when they were sent and how many
items their user had seen (how far past k the search must fetch): whether a tail is the first requests' or heavy
users' shows there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from benchmarks.serving_stack import RedisProcess, ServiceProcess
from index.bundle import resolve_bundle_path
from index.npz_map import read_npz


def memory_of(pid: int) -> dict[str, int]:
    """RSS and PSS in MiB of a process and its children (uvicorn's workers)."""
    pids = [pid, *map(int, subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split())]
    out = {}
    for one in pids:
        try:
            rollup = Path(f"/proc/{one}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        fields = {line.split()[0].rstrip(":"): int(line.split()[1]) for line in rollup[1:]}
        out[str(one)] = {"rss_mb": fields["Rss"] >> 10, "pss_mb": fields["Pss"] >> 10}
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Timed:
    """One request: its user, when it was sent (seconds into the load) and how long its answer took."""

    user: str
    sent_s: float
    latency_s: float


async def load(url: str, users: list[str], requests: int, concurrency: int) -> list[Timed]:
    timed: list[Timed] = []
    rng = random.Random(0)
    queue = [rng.choice(users) if rng.random() > 0.05 else f"unknown-{i}" for i in range(requests)]
    begun = time.perf_counter()

    async def client_loop(client: httpx.AsyncClient) -> None:
        while queue:
            user = queue.pop()
            started = time.perf_counter()
            response = await client.get(f"{url}/recommend", params={"user_id": user, "k": 20})
            response.raise_for_status()
            timed.append(Timed(user, started - begun, time.perf_counter() - started))

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return timed


def slowest(timed: list[Timed], bundle: Path, row_of: Mapping[str, int], share: float = 0.01) -> list[dict[str, Any]]:
    """The slowest ``share`` of the requests, each with its user's count of seen items (None: an unknown user);
    ``row_of``: the bundle row of every user the load drew from."""
    worst = sorted(timed, key=lambda one: one.latency_s, reverse=True)[: max(1, int(len(timed) * share))]
    indptr = read_npz(bundle / "seen.npz")["indptr"]
    seen = {one.user: int(indptr[row + 1] - indptr[row]) for one in worst if (row := row_of.get(one.user)) is not None}
    return [{"ms": round(1000 * one.latency_s, 1), "sent_s": round(one.sent_s, 2), "seen": seen.get(one.user)}
            for one in worst]  # fmt: skip


def percentile_ms(latencies: list[float], share: float) -> float:
    """The ``share`` quantile of sorted ``latencies`` (seconds), in milliseconds."""
    return round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * share))], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle-root", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="cpu", help="recsys-serve --device")
    parser.add_argument("--ready-timeout", type=float, default=600, help="seconds the server may take to be ready")
    parser.add_argument("--log", type=Path, default=None,
                        help="where redis-server's and recsys-serve's output goes (info level: each loading step "
                        "with its time); default a file in a temporary folder, named if the server fails")  # fmt: skip
    parser.add_argument("--warm-max-fetch", type=int, default=0,
                        help="RECSYS_WARM_MAX_FETCH: the largest fetch a GPU index captures before ready (0, the "
                        "service's default: from the bundle's most-seen user)")  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        log = args.log or Path(folder) / "serve_start.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        redis = RedisProcess.start(log)
        started = time.perf_counter()
        try:
            serve = ServiceProcess.start(
                name="serve_start", bundle=args.bundle_root, redis_url=redis.url, device=args.device,
                backend="auto", workers=args.workers, log=log, extra_env={}, timeout_s=args.ready_timeout,
                settings={"RECSYS_LOG_LEVEL": "info", "RECSYS_WARM_MAX_FETCH": str(args.warm_max_fetch)},
            )  # fmt: skip
        except BaseException:
            redis.stop()
            raise
        try:
            ready_s = time.perf_counter() - started
            memory = memory_of(serve.process.pid)
            bundle = resolve_bundle_path(args.bundle_root)
            ids = (bundle / "user_ids.txt").read_text().split("\n")[:-1]
            # The users random.sample(ids, n) draws, each with its row, which ``slowest`` reads seen counts at.
            row_of = {ids[row]: row for row in random.Random(1).sample(range(len(ids)), min(100_000, len(ids)))}
            users = list(row_of)
            del ids
            timed = asyncio.run(load(serve.url, users, args.requests, args.concurrency))
            latencies = sorted(one.latency_s for one in timed)
            record = {
                "bundle": str(args.bundle_root), "device": args.device, "workers": args.workers,
                "warm_max_fetch": args.warm_max_fetch, "ready_s": round(ready_s, 1), "readiness": serve.readiness,
                "memory": memory, "requests": len(latencies), "p50_ms": percentile_ms(latencies, 0.5),
                "p99_ms": percentile_ms(latencies, 0.99), "p999_ms": percentile_ms(latencies, 0.999),
                "slowest": slowest(timed, bundle, row_of), "memory_after_load": memory_of(serve.process.pid),
            }  # fmt: skip
            print(json.dumps(record))
        finally:
            serve.stop()
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
