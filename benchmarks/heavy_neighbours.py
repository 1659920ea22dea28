"""What one heavy request costs the other requests of its worker: GET /recommend latency beside a client that loops on
the largest POST /recommend the limits allow.

    python -m benchmarks.heavy_neighbours --bundle var/serving/binary --seconds 20

One `recsys-serve` worker (so that every connection is on the same worker) over a real redis-server holding every
user's code, its index on the CPU. wrk sends GET /recommend for Zipf-drawn known users on one connection (closed loop,
every response checked) for --seconds; meanwhile a second client loops on one heavy POST on its own keep-alive
connection, one of:

- ``none``: no heavy client (the GET latency alone);
- ``users``: ``max_batch_users`` known users at the largest k the item limit allows (users × k ≤ max_request_items);
- ``histories``: unknown users with histories (cold start) filling the body to just under max_request_bytes.

Each row: the GET p50 / p99 / p99.9 and rate beside that heavy client, and the heavy requests' own count and median
latency; with --repeats N every row is run N times (interleaved) and the table gives medians. Records (every run):
benchmarks/results/heavy_neighbours.json (appended); a table ends the output.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import RESULTS, append_records, benchmark_parser, commit, markdown_table
from benchmarks.serving_stack import RedisProcess, ServiceProcess
from benchmarks.wrk_load import run_wrk, write_users_file
from index.bundle import Bundle
from service.settings import ServiceSettings

HEAVY = ("none", "users", "histories")


def heavy_body(kind: str, bundle: Bundle, settings: ServiceSettings) -> bytes:
    """The largest request of ``kind`` the limits allow, as bytes."""
    if kind == "users":
        users = settings.max_batch_users
        k = min(settings.max_k, settings.max_request_items // users)
        return json.dumps({"user_ids": bundle.user_ids[:users], "k": k}).encode()
    items = bundle.item_ids
    histories: dict[str, list[str]] = {}
    body = b""
    for user in range(settings.max_batch_users):
        history = [items[(user * 7919 + i * 104729) % len(items)] for i in range(settings.max_history_items)]
        trial = {**histories, f"new-user-{user}": history}
        encoded = json.dumps({"user_ids": list(trial), "k": 20, "histories": trial}).encode()
        if len(encoded) > settings.max_request_bytes:
            break
        histories, body = trial, encoded
    return body


class HeavyClient:
    """Loops on one request on one keep-alive connection until stopped; counts answers and their latencies."""

    def __init__(self, url: str, body: bytes) -> None:
        self.url, self.body = url, body
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> HeavyClient:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def _loop(self) -> None:
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                response = client.post("/recommend", content=self.body, headers=headers)
                if response.status_code == 200:
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.failures += 1


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle (or a root with CURRENT) with cold start")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each row's GET run")
    parser.add_argument("--heavy", nargs="+", choices=HEAVY, default=list(HEAVY), help="heavy clients to try")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every row (the table gives medians)")
    parser.add_argument("--out", type=Path, default=RESULTS / "heavy_neighbours.json")
    args = parser.parse_args(argv)
    bundle = Bundle.load(args.bundle)
    settings = ServiceSettings(bundle_root=args.bundle)  # type: ignore[call-arg]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="heavy-neighbours-") as tmp:
        work = Path(tmp)
        redis = RedisProcess.start(work / "redis.log")
        try:
            redis.load_user_codes(bundle.manifest.model_version, bundle.user_ids, bundle.user_codes)
            users_file = write_users_file(bundle.user_ids, work / "users.txt")
            service = ServiceProcess.start(
                name="heavy neighbours", bundle=args.bundle, redis_url=redis.url, device="cpu", backend="auto",
                workers=1, log=work / "service.log", settings={}, extra_env={}, timeout_s=300,
            )  # fmt: skip
            try:
                run_wrk(service.url, users_file, connections=1, threads=1, seconds=2, mix="get")  # warm-up
                for repeat, kind in ((r, kind) for r in range(args.repeats) for kind in args.heavy):
                    body = heavy_body(kind, bundle, settings) if kind != "none" else b""
                    client = HeavyClient(service.url, body) if body else None
                    if client is not None:
                        client.__enter__()
                        time.sleep(1.0)  # the heavy loop runs before the GETs are timed
                    try:
                        get = run_wrk(service.url, users_file, connections=1, threads=1, seconds=args.seconds,
                                      mix="get")  # fmt: skip
                    finally:
                        if client is not None:
                            client.__exit__()
                    heavy = client.latencies if client is not None else []
                    rows.append({
                        "heavy": kind, "repeat": repeat, "heavy_body_bytes": len(body), "get_rate": get["rate"],
                        "get_p50_ms": get["p50_ms"], "get_p99_ms": get["p99_ms"], "get_p999_ms": get["p999_ms"],
                        "get_errors": get["errors"], "heavy_requests": len(heavy),
                        "heavy_failures": client.failures if client is not None else 0,
                        "heavy_p50_ms": round(1000 * statistics.median(heavy), 1) if heavy else None,
                    })  # fmt: skip
                    print(json.dumps(rows[-1]), flush=True)
            finally:
                service.stop()
        finally:
            redis.stop()
    meta = {
        "commit": commit(), "cores": os.cpu_count(), "bundle": bundle.manifest.model_version, "workers": 1,
        "seconds": args.seconds, "max_batch_users": settings.max_batch_users,
        "max_request_items": settings.max_request_items, "max_request_bytes": settings.max_request_bytes,
    }  # fmt: skip
    append_records(args.out, [{**meta, **row} for row in rows])
    table = []
    for kind in args.heavy:
        runs = [row for row in rows if row["heavy"] == kind]

        def median(key: str, runs: list[dict[str, Any]] = runs) -> Any:
            values = [row[key] for row in runs if row[key] is not None]
            return round(statistics.median(values), 2) if values else None

        figures = ("get_rate", "get_p50_ms", "get_p99_ms", "get_p999_ms", "heavy_requests", "heavy_p50_ms")
        table.append([kind, f"{runs[0]['heavy_body_bytes']:,} B", *map(median, figures)])
    print(markdown_table(
        ["heavy client", "body", "GET req/s", "GET p50 ms", "GET p99 ms", "GET p99.9 ms", "heavy req", "heavy p50 ms"],
        table,
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
