"""Serving throughput: the highest request rate whose p99 stays within budget with zero errors.

    python -m benchmarks.serving --generator wrk --bundle binary=var/serving/binary \\
        --bundle float=var/serving/float --workers 2 --repeats 3
    python -m benchmarks.serving --bundle binary=var/serving/binary --rates 250 500 750 1000 --seconds 20

``--generator wrk`` (Debian's `wrk`, one C thread, closed loop) drives the server with GET /recommend for
Zipf-drawn known users (5 % unknown ones): one step per connection count (--connections), each the highest rate
those connections sustain, and the best step within budget counts. Its own cost per request is a fraction of
locust's, which on the same two cores cost the server more CPU than it used itself; `--repeats N` runs the whole
sweep N times and the table gives the median best rate with the spread.

For each bundle (mode): a fresh redis-server and `recsys-serve` (index on the CPU), then locust headless
(FastHttpUser, the project's locustfile: Zipf-distributed known users, 5 % unknown ones, a readiness
probe) from a second process on loopback, one step per target rate (users × a fixed rate per user,
--rps-per-user), stopping after the first step that misses the budget; `--floor` first runs the same steps
against a server that does no work (the harness's own latency). Records (appended to --out): mode, catalog,
target_rps, rps, p50_ms, p99_ms, error_rate, users, rps_per_user, machine, commit; then a table of the best
step per mode.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, ROOT, benchmark_parser, commit

# Each locust user is one connection sending at a fixed rate. Many slow users cost the harness itself: on the
# 2-core VM a do-nothing server measured at 1,500 req/s gave p99 29 ms with 150 users × 10/s, 12 ms with 60 × 25,
# 8 ms with 30 × 50 and 4 ms with 15 × 100 (locust's greenlets, not the server, waiting). `--floor` measures it.
RPS_PER_USER = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(url: str, seconds: float = 120, *, path: str = "/readyz", status: str = "ready") -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=1) as response:
                if json.loads(response.read())["status"] == status:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def machine() -> str:
    return f"{platform.node() or 'host'}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}"


def locust_step(url: str, bundle: Path | None, rate: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    users, seconds = max(1, round(rate / args.rps_per_user)), args.seconds
    prefix = out / f"step_{rate}"
    env = {**os.environ, "RECSYS_LOAD_RPS_PER_USER": str(rate / users)}
    if bundle is not None:
        env["RECSYS_BUNDLE_ROOT"] = str(bundle)
    locustfile = ROOT / ("loadtests/locustfile.py" if bundle is not None else "loadtests/floor_locustfile.py")
    subprocess.run(
        [str(Path(sys.executable).parent / "locust"), "--locustfile", str(locustfile),
         "--headless", "--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s",
         "--host", url, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING"],
        env=env, check=False, capture_output=True, timeout=seconds + 120,
    )  # fmt: skip
    with open(f"{prefix}_stats.csv", newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    requests = float(total["Request Count"])
    return {
        "rps": float(total["Requests/s"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "error_rate": float(total["Failure Count"]) / requests if requests else 1.0,
        "requests": requests,
        "users": users,
    }


WRK_SCRIPT = """
local ids = {%s}
local n = #ids
request = function()
  return wrk.format("GET", "/recommend?user_id=" .. ids[math.random(n)] .. "&k=20")
end
"""


def wrk_script(bundle: Path | None, path: Path, count: int = 20_000, seed: int = 7) -> Path:
    """A wrk script asking for Zipf-drawn known users (the locustfile's skew) and 5 % unknown ones."""
    # The locustfile's own population (one Zipf rule for both generators). Importing it imports locust, which
    # patches the standard library for gevent: harmless here, where no threads run beside the subprocesses.
    from loadtests.locustfile import UserPopulation, bundle_dir, read_ids

    rng = random.Random(seed)
    known = read_ids(bundle_dir(bundle), "user_ids.txt") if bundle is not None else ["u0"]
    population = UserPopulation.zipf(known, from_bundle=bundle is not None)
    ids = [population.pick(rng) if rng.random() >= 0.05 else f"unknown-{rng.randrange(10**6)}" for _ in range(count)]
    path.write_text(WRK_SCRIPT % ",".join(json.dumps(urllib.parse.quote(i, safe="")) for i in ids))
    return path


def parse_duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk_step(url: str, script: Path, connections: int, args: argparse.Namespace) -> dict[str, float]:
    """``connections`` connections from one wrk thread, each sending its next request when the last is answered."""
    result = subprocess.run(
        [shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", f"-d{args.seconds}s", "--latency", "--timeout", "5s",
         "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=args.seconds + 60,
    )  # fmt: skip
    out = result.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad += sum(int(n) for n in errors.groups()) if errors else 0
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": parse_duration_ms(latency["50"]),
        "p99_ms": parse_duration_ms(latency["99"]),
        "error_rate": bad / requests if requests else 1.0,
        "requests": requests,
        "users": connections,
    }


def step_through(
    mode: str, url: str, bundle: Path | None, catalog: str, args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    """One step per rate (locust) or connection count (wrk) until the first over budget."""
    records: list[dict[str, Any]] = []
    script = wrk_script(bundle, work / f"{mode}.lua") if args.generator == "wrk" else None
    for rate in args.connections if script is not None else args.rates:
        if script is not None:
            step = wrk_step(url, script, rate, args)
        else:
            step = locust_step(url, bundle, rate, args, work / mode)
        ok = step["p99_ms"] <= args.p99_ms and step["error_rate"] == 0
        record = {"mode": mode, "catalog": catalog, "workers": args.workers, "generator": args.generator,
                  "target_rps": rate if script is None else None, **step,
                  "rps_per_user": args.rps_per_user if script is None else None, "within_budget": ok,
                  "repeat": args.repeat, "machine": machine(), "commit": commit()}  # fmt: skip
        print(json.dumps(record), flush=True)
        records.append(record)
        if not ok:
            break
    return records


def run_floor(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The harness alone: the same locust pacing against a server that does no work (benchmarks/floor_app.py)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "benchmarks.floor_app:app", "--port", str(port), "--workers",
         str(args.workers), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, 30, path="/healthz", status="ok")
        return step_through("floor", url, None, "none (fixed answer)", args, work)
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_mode(mode: str, bundle: Path, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    redis_port, port = free_port(), free_port()
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = {**os.environ, "RECSYS_BUNDLE_ROOT": str(bundle), "RECSYS_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
           "RECSYS_PORT": str(port), "RECSYS_DEVICE": "cpu", "RECSYS_LOG_LEVEL": "warning",
           "RECSYS_WORKERS": str(args.workers)}  # fmt: skip
    server = subprocess.Popen([str(Path(sys.executable).parent / "recsys-serve")], env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    records: list[dict[str, Any]] = []
    try:
        wait_ready(url)
        with urllib.request.urlopen(f"{url}/readyz") as response:
            ready = json.loads(response.read())
        catalog = f"{bundle.resolve().name} ({ready['search_backend']})"
        records = step_through(mode, url, bundle, catalog, args, work)
    finally:
        server.terminate()
        server.wait(timeout=30)
        redis.terminate()
        redis.wait(timeout=30)
    return records


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--bundle", action="append", default=[], help="MODE=PATH (a bundle or a root with CURRENT)")
    parser.add_argument("--floor", action="store_true", help="first measure the harness on a do-nothing server")
    parser.add_argument(
        "--rps-per-user", type=float, default=RPS_PER_USER, help="request rate of each locust user (connection)"
    )
    parser.add_argument("--generator", choices=["locust", "wrk"], default="locust", help="the load generator")
    parser.add_argument("--rates", nargs="+", type=int, default=[250, 500, 750, 1000, 1500, 2000])
    parser.add_argument(
        "--connections", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32], help="wrk: connection counts, in order"
    )
    parser.add_argument("--repeats", type=int, default=1, help="run every mode's sweep this many times")
    parser.add_argument("--seconds", type=int, default=20, help="duration of each rate step")
    parser.add_argument("--p99-ms", type=float, default=25.0, help="latency budget")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the service")
    parser.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = parser.parse_args()
    if not args.bundle and not args.floor:
        parser.error("give at least one --bundle MODE=PATH, or --floor")
    if any(spec.partition("=")[0] == "floor" for spec in args.bundle):
        parser.error("'floor' names the harness run (--floor); call the bundle's mode something else")
    records = json.loads(args.out.read_text()) if args.out.is_file() else []
    runs = ([("floor", None)] if args.floor else []) + [
        (mode, Path(path)) for mode, _, path in (spec.partition("=") for spec in args.bundle)
    ]
    if args.generator == "wrk" and shutil.which("wrk") is None:
        parser.error("--generator wrk needs wrk on PATH (Debian: apt-get install wrk; scripts/setup.sh installs it)")
    fresh: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            args.repeat = repeat  # stored in each record
            for mode, bundle in runs:
                (Path(tmp) / mode).mkdir(exist_ok=True)
                fresh += run_floor(args, Path(tmp)) if bundle is None else run_mode(mode, bundle, args, Path(tmp))
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(records + fresh, indent=2) + "\n")
    report(fresh, [mode for mode, _ in runs], args)
    return 0


def best_within_budget(steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    passing = [r for r in steps if r["within_budget"]]
    return max(passing, key=lambda r: r["rps"]) if passing else None


def report(fresh: list[dict[str, Any]], modes: list[str], args: argparse.Namespace) -> None:
    """The best step of each mode; over several repeats the median best rate and the spread."""
    print(f"\n| mode | generator | workers | highest rate within p99 ≤ {args.p99_ms:g} ms, 0 errors (median of "
          f"{args.repeats}, spread) | p50 / p99 ms there | catalog |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for mode in modes:
        bests = [best_within_budget([r for r in fresh if r["mode"] == mode and r["repeat"] == n])
                 for n in range(args.repeats)]  # fmt: skip
        rates = sorted(b["rps"] if b else 0.0 for b in bests)
        found = [b for b in bests if b]
        if not found:
            print(f"| {mode} | {args.generator} | {args.workers} | none of the steps | — | — |")
            continue
        median = statistics.median(rates)
        middle = min(found, key=lambda b: abs(b["rps"] - median))
        print(f"| {mode} | {args.generator} | {args.workers} | {median:.0f} req/s ({rates[0]:.0f}–{rates[-1]:.0f}) "
              f"| {middle['p50_ms']:.1f} / {middle['p99_ms']:.1f} | {middle['catalog']} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
