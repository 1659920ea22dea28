"""Ingest: how many events a second POST /events takes while the host serves /recommend at half its capacity, and
how much the /recommend p99 moves meanwhile (issue #31: under 20 %).

    python -m benchmarks.events_ingest --bundle var/events/gowalla --repeats 3

One `recsys-serve` with ``--workers`` workers (2: one per core of the 2-core VM, as the serving benchmarks run it),
its index on the CPU, events enabled (``RECSYS_EVENTS_API_KEY``), over a fresh redis-server holding every user's
code; the load generators (Debian's wrk, benchmarks/events_load.lua) run on the same host.

1. Capacity: closed-loop wrk sweeps of GET /recommend for Zipf-drawn known users over connection counts
   (benchmarks/wrk_load.py, as benchmarks/serving.py measures it); capacity is the highest rate whose p99 stays
   within --p99-ms with no error, the median of --capacity-sweeps sweeps. No event has been posted yet.
2. Half of it, paced: --connections connections, one wrk thread each, wait an exponential time before each GET
   (wrk's delay()), set so that they offer half the capacity (a near-Poisson stream: wrk2's constant-rate mode is not
   packaged in Debian). Each thread times its own requests.
3. For each repeat and each rate of --event-rates, and first for 0: one run of --seconds cut into alternating
   windows of --window seconds; in every second window a second wrk posts batches of --batch events (Zipf-drawn known
   users, random items, distinct event ids) at that rate, paced the same way. Each GET's latency is filed under the
   window it was sent in, so one run gives the p99 without and with events from the same connections, interleaved
   in time (two runs started apart would differ by more: how uvicorn's workers happen to share the connections
   moves a run's p99 by ±50 % on this VM). At 0 no window has events: that row is the noise floor. Each run records
   the events accepted per second of posting, failed and 503 posts, the POST latency, and the GET rate, p50 and p99
   in both kinds of window; a repeat stops after the first run whose p99 moved more than --stop-move.

The table gives per event rate the medians over repeats; the headline is the highest rate whose median p99 move is
under --target-move, and the first above it. Records (every run): benchmarks/results/events_ingest.json.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, append_records, benchmark_parser, commit, markdown_table, progress
from benchmarks.serving import machine
from benchmarks.serving_stack import RedisProcess, ServiceProcess
from benchmarks.wrk_load import K, run_wrk, write_users_file
from index.bundle import Bundle, resolve_bundle_path

LUA = Path(__file__).resolve().with_name("events_load.lua")
EVENTS_KEY = "ingest-key"


@dataclass(frozen=True)
class Files:
    users: Path
    items: Path


class PacedWrk:
    """One wrk process of events_load.lua, started now and read by ``result()``: one thread per connection, so that
    each times its own requests, filed under the window (events off or on) they were sent in."""

    def __init__(
        self, url: str, files: Files, *, mode: str, connections: int, seconds: float, mean_delay_ms: float,
        start: float, window_s: float, batch: int = 1, seed: int = 1,
    ) -> None:  # fmt: skip
        binary = shutil.which("wrk")
        if binary is None:
            raise RuntimeError("wrk is not on PATH (Debian: apt-get install wrk)")
        self.seconds = seconds
        command = [
            binary, f"-t{connections}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
            "-s", str(LUA), url, "--", str(files.users), str(files.items), mode, f"{mean_delay_ms:.3f}", str(K),
            str(batch), str(seed), EVENTS_KEY, f"{start:.6f}", str(window_s),
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self) -> dict[str, Any]:
        out, err = self.process.communicate(timeout=self.seconds + 60)
        line = next((ln for ln in out.splitlines() if ln.startswith("WRK_RESULT ")), None)
        if self.process.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({self.process.returncode}): {err[-500:] or out[-500:]}")
        raw: dict[str, Any] = json.loads(line.removeprefix("WRK_RESULT "))
        seconds = raw["duration_us"] / 1e6

        def window(name: str) -> dict[str, Any]:
            got = raw[name]
            return {
                "requests": got["count"], "rate": round(got["count"] / (seconds / 2), 1),
                "errors": raw[f"failed_{name}"],
                **{f"p{p}_ms": got[f"p{p}_us"] / 1000 for p in ("50", "90", "99", "999")},
                "mean_ms": round(got["mean_us"] / 1000, 3),
            }  # fmt: skip

        return {
            "off": window("off"), "on": window("on"),
            "accepted_per_s": round(raw["accepted"] / (seconds / 2), 1),  # events are posted in half the time
            "errors": raw["failed_checks"] + raw["socket_errors"], "socket_errors": raw["socket_errors"],
            "status_503": raw["status_503"], "first_failure": raw["first_failure"],
        }  # fmt: skip


def mean_delay(connections: int, rate: float, latency_ms: float) -> float:
    """The think time that makes ``connections`` connections offer ``rate`` requests a second."""
    return max(0.0, 1000 * connections / rate - latency_ms)


def retune(delay_ms: float, connections: int, target: float, achieved: float) -> float:
    """The think time that would have made a run at ``delay_ms`` offer ``target`` requests a second, not
    ``achieved``: each connection's cycle is its think time plus what the request and wrk's timers took."""
    overhead_ms = 1000 * connections / achieved - delay_ms
    return mean_delay(connections, target, overhead_ms)


def capacity(url: str, users: Path, args: Any) -> tuple[float, list[dict[str, Any]]]:
    """The median over sweeps of the highest closed-loop rate within the p99 budget with no error."""
    best: list[float] = []
    steps: list[dict[str, Any]] = []
    for sweep in range(args.capacity_sweeps):
        rates = [0.0]
        for connections in progress(args.capacity_connections, desc=f"capacity sweep {sweep + 1}", unit="step"):
            step = run_wrk(url, users, connections=connections, threads=1, seconds=args.capacity_seconds, mix="get")
            ok = step["p99_ms"] <= args.p99_ms and step["errors"] == 0
            steps.append({"sweep": sweep, "connections": connections, "rate": step["rate"],
                          "p50_ms": step["p50_ms"], "p99_ms": step["p99_ms"], "errors": step["errors"],
                          "within_budget": ok})  # fmt: skip
            if ok:
                rates.append(step["rate"])
        best.append(max(rates))
    return statistics.median(best), steps


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle (or a root with CURRENT) with an encoder")
    parser.add_argument("--workers", type=int, default=2, help="recsys-serve workers (2 on the 2-core VM)")
    parser.add_argument("--p99-ms", type=float, default=25.0, help="the p99 budget that defines capacity")
    parser.add_argument("--capacity", type=float, default=None, help="skip the sweeps: this many GET/s is capacity")
    parser.add_argument("--capacity-sweeps", type=int, default=3)
    parser.add_argument("--capacity-seconds", type=float, default=5.0)
    parser.add_argument("--capacity-connections", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--load-share", type=float, default=0.5, help="share of capacity the paced GETs offer")
    parser.add_argument("--connections", type=int, default=32, help="connections (and wrk threads) of the paced GETs")
    parser.add_argument("--event-rates", nargs="+", type=float, default=[25, 50, 100, 200, 400, 800, 1600],
                        help="events per second offered, in batches of --batch")  # fmt: skip
    parser.add_argument("--batch", type=int, default=10, help="events per POST /events")
    parser.add_argument("--event-connections", type=int, default=4, help="connections of the event poster")
    parser.add_argument("--seconds", type=float, default=32.0, help="length of each step (windows off and on)")
    parser.add_argument("--window", type=float, default=2.0, help="seconds of each window without or with events")
    parser.add_argument("--repeats", type=int, default=3, help="baseline and ladder this many times (medians)")
    parser.add_argument("--target-move", type=float, default=0.20, help="the p99 move the headline must stay under")
    parser.add_argument("--stop-move", type=float, default=1.0, help="a repeat stops after a step past this move")
    parser.add_argument("--out", type=Path, default=RESULTS / "events_ingest.json")
    args = parser.parse_args(argv)
    bundle_path = resolve_bundle_path(args.bundle)
    bundle = Bundle.load(bundle_path)
    if bundle.cold_start is None:
        parser.error(f"{bundle_path}: no cold-start encoder, so events re-code nobody (train fp, ste or hq)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="events-ingest-") as tmp:
        work = Path(tmp)
        files = Files(write_users_file(bundle.user_ids, work / "users.txt"), work / "items.txt")
        files.items.write_text("\n".join(bundle.item_ids) + "\n")
        redis = RedisProcess.start(work / "redis.log")
        try:
            redis.load_user_codes(bundle.manifest.model_version, bundle.user_ids, bundle.user_codes)
            service = ServiceProcess.start(
                name="events ingest", bundle=bundle_path, redis_url=redis.url, device="cpu", backend="auto",
                workers=args.workers, log=work / "service.log", settings={"RECSYS_EVENTS_API_KEY": EVENTS_KEY},
                extra_env={}, timeout_s=300,
            )  # fmt: skip
            try:
                rows = measure(service.url, files, args)
            finally:
                service.stop()
        finally:
            redis.stop()
    meta = {
        "commit": commit(), "machine": machine(), "cores": os.cpu_count(),
        "command": shlex.join(["python", "-m", "benchmarks.events_ingest", *(argv or sys.argv[1:])]),
        "bundle": bundle.manifest.model_version, "items": len(bundle.item_ids), "users": len(bundle.user_ids),
        "workers": args.workers, "batch": args.batch, "seconds": args.seconds, "k": K,
    }  # fmt: skip
    append_records(args.out, [{**meta, **row} for row in rows])
    report(rows, args)
    return 0


def measure(url: str, files: Files, args: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    run_wrk(url, files.users, connections=4, threads=1, seconds=3, mix="get")  # warm-up
    if args.capacity is None:
        full, sweeps = capacity(url, files.users, args)
        rows += [{"step": "capacity", **step} for step in sweeps]
    else:
        full = args.capacity
    target = args.load_share * full
    print(f"capacity {full:,.0f} GET/s; paced GETs at {target:,.0f}/s", flush=True)
    paced = {"connections": args.connections, "window_s": args.window}
    # Calibration: what the connections' own latency and wrk's timers add to the think time, measured and taken
    # off it (again after every run, from its windows without events).
    get_delay = mean_delay(args.connections, target, 0.0)
    for _ in range(2):
        trial = PacedWrk(url, files, mode="get", seconds=4, mean_delay_ms=get_delay, start=time.time(), **paced)
        get_delay = retune(get_delay, args.connections, target, trial.result()["off"]["rate"])
    event_latency_ms = 5.0  # a guess, then each step's measured POST latency
    steps = [(repeat, rate) for repeat in range(args.repeats) for rate in [0.0, *args.event_rates]]
    stopped: set[int] = set()
    for number, (repeat, rate) in enumerate(progress(steps, desc="ingest steps", unit="step")):
        if repeat in stopped:
            continue
        start = time.time()
        posts = None
        if rate > 0:
            batches = rate / args.batch
            # Each connection sends often enough that no gap nears uvicorn's 5-second keep-alive.
            connections = max(1, min(args.event_connections, int(batches / 2)))
            posts = PacedWrk(url, files, mode="events", connections=connections, seconds=args.seconds,
                             mean_delay_ms=mean_delay(connections, batches, event_latency_ms), start=start,
                             window_s=args.window, batch=args.batch, seed=1000 + number)  # fmt: skip
        got = PacedWrk(url, files, mode="get", seconds=args.seconds, mean_delay_ms=get_delay, start=start,
                       seed=number, **paced).result()  # fmt: skip
        post = posts.result() if posts is not None else None
        off, on = got["off"], got["on"]
        move = on["p99_ms"] / off["p99_ms"] - 1
        row = {
            "step": "ingest", "repeat": repeat, "capacity": full, "get_target": round(target, 1),
            "event_rate_offered": rate, "window_s": args.window,
            **{f"get_off_{key}": value for key, value in off.items()},
            **{f"get_on_{key}": value for key, value in on.items()},
            "get_socket_errors": got["socket_errors"], "p99_move": round(move, 4),
            "events_accepted_per_s": post["accepted_per_s"] if post else 0.0,
            "post_rate": post["on"]["rate"] if post else 0.0, "post_errors": post["errors"] if post else 0,
            "post_503": post["status_503"] if post else 0, "post_p50_ms": post["on"]["p50_ms"] if post else None,
            "post_p99_ms": post["on"]["p99_ms"] if post else None,
            "first_failure": (post or {}).get("first_failure") or got["first_failure"],
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        rows.append(row)
        if post is not None:
            event_latency_ms = post["on"]["mean_ms"]
        get_delay = retune(get_delay, args.connections, target, off["rate"])
        if move > args.stop_move:
            stopped.add(repeat)
        time.sleep(1.0)  # the service drains what the last step left queued
    return rows


def report(rows: list[dict[str, Any]], args: Any) -> None:
    """Per event rate, medians over repeats; the move is each run's p99 in its windows with events against its p99
    in the windows without, and the row of 0 events/s (no events in either) is the noise floor."""
    ingest = [row for row in rows if row["step"] == "ingest"]
    table, passed, broke = [], None, None
    for rate in sorted({row["event_rate_offered"] for row in ingest}):
        runs = [row for row in ingest if row["event_rate_offered"] == rate]

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(row[key] for row in runs if row[key] is not None)

        move, accepted = median("p99_move"), median("events_accepted_per_s")
        if rate > 0 and broke is None:
            if move < args.target_move:
                passed = (rate, accepted, move)
            else:
                broke = (rate, accepted, move)
        errors = sum(r["get_off_errors"] + r["get_on_errors"] + r["get_socket_errors"] for r in runs)
        table.append([
            f"{rate:,.0f}" if rate else "0 (noise)", f"{accepted:,.0f}", sum(r["post_errors"] for r in runs),
            sum(r["post_503"] for r in runs), f"{median('post_p99_ms'):.1f}" if rate else "–",
            f"{median('get_off_rate'):,.0f} / {median('get_on_rate'):,.0f}",
            f"{median('get_off_p50_ms'):.2f} / {median('get_on_p50_ms'):.2f}",
            f"{median('get_off_p99_ms'):.2f} / {median('get_on_p99_ms'):.2f}", f"{move:+.1%}", errors, len(runs),
        ])  # fmt: skip
    print(markdown_table(
        ["events/s offered", "accepted/s", "POST errors", "503s", "POST p99 ms", "GET/s off / on",
         "GET p50 ms off / on", "GET p99 ms off / on", "p99 move", "GET errors", "runs"],
        table,
    ))  # fmt: skip
    if passed:
        print(f"highest rate with the p99 move under {args.target_move:.0%}: {passed[1]:,.0f} events/s accepted "
              f"(offered {passed[0]:,.0f}; p99 {passed[2]:+.1%})")  # fmt: skip
    if broke:
        print(f"first rate past it: {broke[1]:,.0f} events/s accepted (offered {broke[0]:,.0f}; p99 {broke[2]:+.1%})")


if __name__ == "__main__":
    sys.exit(main())
