"""What the search process itself costs: round trips per second through a worker's ``ItemIndex`` over the search
process's backend (``ServingModel.remote_index``) against the same searches in process, for several queries per
round trip (a worker's micro-batch) and several workers at once.

    python -m benchmarks.search_process --items 20000 --users 2000 --rows 1 8 32 --clients 1 2 --device cpu

Each client is a thread with its own connection, as each uvicorn worker has; the search process is started as
``recsys-serve`` starts it. The catalogue is a synthetic bundle of ``--layout`` codes (benchmarks.gpu_catalogue),
each query excluding its user's 20–200 seen items, k = 20. The in-process row is the same searches on an
``ItemIndex`` in this process, one client, with as many FAISS threads per search (``--search-threads``, the
service's default 1): the difference is the price of the socket, the frames and the search process's loop.
Each step is the median of ``--repeats`` runs; the record keeps every run. Records:
benchmarks/results/search_process.json.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_catalogue import publish_synthetic
from benchmarks.harness import RESULTS, append_records, benchmark_parser, commit, markdown_table
from index.bundle import Bundle
from index.codes import CodeLayout
from index.item_index import ItemIndex
from index.retrieval.faiss_backend import set_cpu_threads
from service.model import ServingModel

K = 20


def start_search_process(socket_path: Path, device: str, clients: int, threads: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RECSYS_DEVICE": device, "RECSYS_LOG_LEVEL": "warning", "RECSYS_WORKERS": str(clients),
           "RECSYS_SEARCH_THREADS": str(threads)}  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "service.search_process", "--socket", str(socket_path)], env=env)
    deadline = time.monotonic() + 60
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("search_process: the search process did not start")
        time.sleep(0.05)
    return process


def round_trips(search: Any, bundle: Bundle, rows: int, clients: int, seconds: float, threads: int) -> float:
    """Searches of ``rows`` queries per second, summed over ``clients`` threads each searching ``search()``."""
    codes = np.asarray(bundle.user_codes[:rows])
    exclude = [bundle.seen_items(row) for row in range(rows)]
    counts: list[int] = []

    def client() -> None:
        set_cpu_threads(threads)  # OpenMP's thread count is per thread, as in the search process's search thread
        index = search()
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            index.search(codes, K, exclude=exclude)
            done += 1
        counts.append(done)

    workers = [threading.Thread(target=client) for _ in range(clients)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=20_000, help="catalogue size")
    parser.add_argument("--users", type=int, default=2_000, help="users of the catalogue")
    parser.add_argument("--layout", choices=["sign1", "float32"], default="sign1")
    parser.add_argument("--dim", type=int, default=256, help="code bits (sign1) or dimensions (float32)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32], help="queries per round trip")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2], help="concurrent workers (threads)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per step: the record keeps the median and range")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where the search process searches")
    parser.add_argument("--search-threads", type=int, default=1, help="FAISS CPU threads per search, both modes")
    parser.add_argument("--out", type=Path, default=RESULTS / "search_process.json")
    args = parser.parse_args(argv)
    if min(args.rows) < 1 or min(args.clients) < 1 or max(args.rows) > args.users or args.repeats < 1:
        parser.error("--rows, --clients and --repeats must be positive, --rows at most --users")

    def step(mode: str, search: Any, rows: int, clients: int) -> dict[str, Any]:
        rates = [round_trips(search, bundle, rows, clients, args.seconds, args.search_threads)
                 for _ in range(args.repeats)]  # fmt: skip
        return {"mode": mode, "rows": rows, "clients": clients, "round_trips_per_s": statistics.median(rates),
                "runs": rates}  # fmt: skip

    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="search-process-") as work:
        root = publish_synthetic(
            Path(work) / "bundles", n_items=args.items, n_users=args.users, layout=CodeLayout(args.layout), dim=args.dim
        )
        bundle = Bundle.load(root)
        local = ItemIndex.for_bundle(bundle, device=args.device)
        points += [step("in process", lambda: local, rows, 1) for rows in args.rows]
        socket_path = Path(work) / "search.sock"
        process = start_search_process(socket_path, args.device, max(args.clients), args.search_threads)
        try:
            remote = partial(ServingModel.remote_index, bundle, socket_path, 30.0, None)
            points += [step("search process", remote, rows, clients) for clients in args.clients for rows in args.rows]
        finally:
            process.terminate()
            process.wait(timeout=30)

    meta = {"commit": commit(), "device": args.device, "cores": os.cpu_count(), "items": args.items,
            "layout": args.layout, "dim": args.dim, "k": K, "seconds": args.seconds,
            "search_threads": args.search_threads, "repeats": args.repeats}  # fmt: skip
    append_records(args.out, [{**meta, **point} for point in points])
    print(f"median of {args.repeats} runs of {args.seconds:g} s (range in brackets)")
    print(markdown_table(
        ["mode", "queries / trip", "workers", "trips/s", "queries/s", "µs / trip"],
        [[p["mode"], p["rows"], p["clients"],
          f"{p['round_trips_per_s']:,.0f} [{min(p['runs']):,.0f}–{max(p['runs']):,.0f}]",
          f"{p['round_trips_per_s'] * p['rows']:,.0f}", f"{1e6 * p['clients'] / p['round_trips_per_s']:,.0f}"]
         for p in points],
    ))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
