"""Serving throughput: the highest request rate whose p99 stays within budget with zero errors.

    python benchmarks/serving.py --bundle binary=var/serving/binary --bundle float=var/serving/float \\
        --rates 250 500 750 1000 1500 2000 --seconds 20

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
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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


def commit() -> str:
    if os.environ.get("RECSYS_COMMIT"):
        return os.environ["RECSYS_COMMIT"]
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


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


def step_through(
    mode: str, url: str, bundle: Path | None, catalog: str, args: argparse.Namespace, work: Path
) -> list[dict[str, Any]]:
    """One locust step per rate until the first over budget."""
    records: list[dict[str, Any]] = []
    for rate in args.rates:
        step = locust_step(url, bundle, rate, args, work / mode)
        ok = step["p99_ms"] <= args.p99_ms and step["error_rate"] == 0
        record = {"mode": mode, "catalog": catalog, "workers": args.workers, "target_rps": rate, **step,
                  "rps_per_user": args.rps_per_user, "within_budget": ok,
                  "machine": machine(), "commit": commit()}  # fmt: skip
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", action="append", default=[], help="MODE=PATH (a bundle or a root with CURRENT)")
    parser.add_argument("--floor", action="store_true", help="first measure the harness on a do-nothing server")
    parser.add_argument(
        "--rps-per-user", type=float, default=RPS_PER_USER, help="request rate of each locust user (connection)"
    )
    parser.add_argument("--rates", nargs="+", type=int, default=[250, 500, 750, 1000, 1500, 2000])
    parser.add_argument("--seconds", type=int, default=20, help="duration of each rate step")
    parser.add_argument("--p99-ms", type=float, default=25.0, help="latency budget")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes of the service")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    args = parser.parse_args()
    if not args.bundle and not args.floor:
        parser.error("give at least one --bundle MODE=PATH, or --floor")
    if any(spec.partition("=")[0] == "floor" for spec in args.bundle):
        parser.error("'floor' names the harness run (--floor); call the bundle's mode something else")
    records = json.loads(args.out.read_text()) if args.out.is_file() else []
    runs = ([("floor", None)] if args.floor else []) + [
        (mode, Path(path)) for mode, _, path in (spec.partition("=") for spec in args.bundle)
    ]
    fresh: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode, bundle in runs:
            (Path(tmp) / mode).mkdir()
            fresh += run_floor(args, Path(tmp)) if bundle is None else run_mode(mode, bundle, args, Path(tmp))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(records + fresh, indent=2) + "\n")
    print(
        f"\n| mode | catalog | highest rate within p99 ≤ {args.p99_ms:g} ms, 0 errors | p50 ms | p99 ms | next step |"
    )
    print("|---|---|---|---|---|---|")
    for mode, _ in runs:
        steps = [r for r in fresh if r["mode"] == mode]
        passing = [r for r in steps if r["within_budget"]]
        best = max(passing, key=lambda r: r["rps"]) if passing else None
        over = next((r for r in steps if not r["within_budget"]), None)
        after = f"{over['rps']:.0f} req/s: p99 {over['p99_ms']:.0f} ms" if over else "— (all steps within budget)"
        if best is None:
            print(f"| {mode}, {args.workers} worker(s) | — | none of the steps | — | — | {after} |")
        else:
            rate, p50, p99 = f"{best['rps']:.0f} req/s", f"{best['p50_ms']:.0f}", f"{best['p99_ms']:.0f}"
            print(f"| {mode}, {args.workers} worker(s) | {best['catalog']} | {rate} | {p50} | {p99} | {after} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
