"""Where one GET /recommend's time goes, stage by stage, in microseconds of CPU and of wall time.

    python -m benchmarks.request_costs --items 20000 --users 20000                       # the 2-core CPU
    python -m benchmarks.request_costs --items 10000000 --users 1000000 --device gpu --search-process

Every stage runs the service's own objects (the app from ``create_app``, its recommender, user-code cache, micro-
batcher and index; a real redis-server holding every user's code; with ``--search-process`` a real search process),
one request at a time, for users drawn as the load test draws them (Zipf over a fixed shuffle), each stage timed
alone over ``--requests`` calls; the table gives medians of ``--repeats`` runs. Stages:

- ``http``: what uvicorn, httptools and the socket cost a worker: the CPU per request of a ``recsys-serve`` worker
  under wrk (``--wrk-connections``, one by default; GET only), less the app's own (``app``); ``worker under wrk`` is
  that CPU per request whole;
- ``app``: the whole ASGI call in process (everything below, plus the middlewares), with the hot path, and
  ``app (route)``: the same through FastAPI's route instead (``RECSYS_HOT_PATH=false``);
- ``parameters``: the hot path's check of the query string;
- ``user code``: ``UserCodeCache.get_many`` from its LRU, and from Redis (LRU off: one MGET);
- ``seen items``: the user's training items from the bundle (what exclude-seen skips);
- ``batcher hop``: the micro-batcher's hand-off to its search thread and back, less the search it runs;
- ``index search``: ``ItemIndex.search`` of one user (query form, the backend's search, filtering, scores); with a
  search process it holds ``search hop`` (the round trip less the search process's own time) and ``owner search``
  (the search process's backend call, as it reports it);
- ``exclusion``: the filtering of the fetched items past the seen ones, alone;
- ``answer``: item rows to external ids and the ``Answer``; ``JSON``: the response body.

CPU is this process's (``time.process_time``: every thread of it; the search process's CPU is its own row). Records:
benchmarks/results/request_costs.json (appended); a table ends the output.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.gpu_catalogue import publish_synthetic, user_id
from benchmarks.harness import RESULTS, append_records, benchmark_parser, commit, markdown_table
from benchmarks.serving_stack import RedisProcess, ServiceProcess, cpu_ticks
from benchmarks.wrk_load import run_wrk, write_synthetic_users
from index.bundle import Bundle
from index.codes import CodeLayout
from index.item_index import ItemIndex
from index.retrieval.faiss_backend import set_cpu_threads
from service.app import create_app
from service.hot_path import RecommendHotPath
from service.recommender import Recommender
from service.schemas import answers_json
from service.search_process import START_TIMEOUT_S
from service.settings import ServiceSettings

K = 20
Timing = tuple[float, float]  # (wall µs, CPU µs) per call


def zipf_users(n_users: int, count: int, seed: int = 7) -> list[int]:
    """Rows drawn as the wrk script draws ranks (exponent 1), through a fixed shuffle of who is heavy."""
    rng = np.random.default_rng(seed)
    ranks = np.floor(np.exp(rng.random(count) * np.log(n_users + 1))).astype(np.int64) - 1
    return [int(r) for r in rng.permutation(n_users)[np.clip(ranks, 0, n_users - 1)]]


def timed(calls: int, call: Callable[[int], object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        call(i)
    return 1e6 * (time.perf_counter() - wall) / calls, 1e6 * (time.process_time() - cpu) / calls


async def timed_async(calls: int, call: Callable[[int], Awaitable[object]]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        await call(i)
    return 1e6 * (time.perf_counter() - wall) / calls, 1e6 * (time.process_time() - cpu) / calls


def http_scope(query: str) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/recommend", "raw_path": b"/recommend", "root_path": "", "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1")], "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000),
    }  # fmt: skip


async def call_app(app: Any, query: str) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(http_scope(query), receive, send)
    if sent[0]["status"] != 200:
        raise RuntimeError(f"GET /recommend?{query} answered {sent[0]['status']}: {sent[-1].get('body')!r}")


class Stages:
    """The app of one configuration, started (lifespan) over one bundle and Redis, and each stage's timing."""

    def __init__(self, settings: ServiceSettings, rows: list[int], calls: int) -> None:
        self.settings, self.rows, self.calls = settings, rows, calls

    async def measure(self) -> dict[str, Timing]:
        set_cpu_threads(self.settings.search_threads)  # as the batcher's search thread has it (OpenMP: per thread)
        app = create_app(self.settings)
        out: dict[str, Timing] = {}
        async with app.router.lifespan_context(app):
            recommender: Recommender = app.state.recommender
            model, bundle = recommender.model, recommender.model.bundle
            users = [user_id(row) for row in self.rows]
            queries = [f"user_id={user}&k={K}&exclude_seen=true" for user in users]
            for user in users[:200]:  # the LRU holds the heavy users, as under load
                await recommender.recommend(user, K, exclude_seen=True)
            n = self.calls
            out["app"] = await timed_async(n, lambda i: call_app(app, queries[i % len(queries)]))
            hot = RecommendHotPath(app, self.settings)
            out["parameters"] = timed(n, lambda i: hot.plain_parameters(queries[i % len(queries)].encode()))
            pairs = [(user, row) for user, row in zip(users, self.rows, strict=True)]
            out["user code (LRU)"] = await timed_async(n, lambda i: recommender.codes.get_many(bundle, [pairs[i]]))
            lru, recommender.codes.lru.size = recommender.codes.lru.size, 0
            recommender.codes.lru._items.clear()
            out["user code (Redis)"] = await timed_async(n, lambda i: recommender.codes.get_many(bundle, [pairs[i]]))
            recommender.codes.lru.size = lru
            codes = [await recommender.codes.get(bundle, user, row) for user, row in pairs[:n]]
            seen = [bundle.seen_items(row) for row in self.rows[:n]]
            out["seen items"] = timed(n, lambda i: bundle.seen_items(self.rows[i]))
            index: ItemIndex = model.index
            owned = owner_search_s(app)
            out["index search"] = timed(n, lambda i: index.search(codes[i][None], K, exclude=[seen[i]]))
            searches = owner_search_s(app)[1] - owned[1]
            if searches:  # the search process's own backend calls, as its answers reported them
                owner = 1e6 * (owner_search_s(app)[0] - owned[0]) / searches
                out["owner search"] = (owner, float("nan"))
                out["search hop"] = (out["index search"][0] - owner, float("nan"))
            batched = await timed_async(n, lambda i: recommender.batcher.search(model, codes[i], K, exclude=seen[i]))
            out["batcher hop"] = (batched[0] - out["index search"][0], batched[1] - out["index search"][1])
            fetched = [index.search(codes[i][None], K + len(seen[i])) for i in range(min(n, 256))]
            out["exclusion"] = timed(n, lambda i: exclusion(fetched[i % len(fetched)], seen[i % len(fetched)]))
            answers = [await recommender.recommend(user, K, exclude_seen=True) for user in users[:64]]
            ids = [np.asarray(fetched[i % len(fetched)].ids[0][:K]) for i in range(64)]
            out["answer"] = timed(n, lambda i: [bundle.item_ids[r] for r in ids[i % 64].tolist()])
            out["JSON"] = timed(n, lambda i: answers_json([answers[i % 64]], batch=False))
        return out


def owner_search_s(app: Any) -> tuple[float, float]:
    """(seconds, count) of the search process's backend calls this app's metrics have recorded."""
    registry = app.state.metrics.registry
    name = "recsys_search_process_search_seconds"
    return registry.get_sample_value(f"{name}_sum") or 0.0, registry.get_sample_value(f"{name}_count") or 0.0


def json_figure(value: float) -> float | None:
    """A figure for the JSON record: None where the stage has no such figure (NaN is not JSON)."""
    return round(value, 1) if value == value else None


def exclusion(found: Any, seen: np.ndarray) -> None:
    ids, scores = found.ids[0], found.scores[0]
    out_ids, out_scores = np.full(K, -1, np.int64), np.full(K, -np.inf, np.float32)
    ItemIndex._finish_row(ids, scores, seen, K, complete=False, out_ids=out_ids, out_scores=out_scores)


def worker_cpu_per_request(root: Path, redis: RedisProcess, args: Any, users_file: Path, work: Path) -> float:
    """CPU µs per GET of a one-worker ``recsys-serve`` under wrk (``--wrk-connections``), its search process left
    out."""
    settings = {"RECSYS_SEARCH_PROCESS": str(args.search_process), "RECSYS_BATCH_MAX_SIZE": "64"}
    service = ServiceProcess.start(
        name="request costs", bundle=root, redis_url=redis.url, device=args.device, backend=args.backend, workers=1,
        log=work / "servers.log", settings=settings, extra_env={}, timeout_s=START_TIMEOUT_S * 10,
    )  # fmt: skip
    try:
        connections = args.wrk_connections
        run_wrk(service.url, users_file, connections=connections, threads=1, seconds=2, mix="get")
        pid = service.process.pid
        ticks = cpu_ticks(pid)
        result = run_wrk(service.url, users_file, connections=connections, threads=1, seconds=args.seconds, mix="get")
        cpu_s = (cpu_ticks(pid) - ticks) / os.sysconf("SC_CLK_TCK")
        return 1e6 * cpu_s / max(1, int(result["requests"]))
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--items", type=int, default=20_000, help="synthetic catalogue size (256-bit codes)")
    parser.add_argument("--users", type=int, default=20_000, help="synthetic users (20–200 seen items each)")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="where the index searches")
    parser.add_argument("--backend", default="auto", help="RECSYS_RETRIEVAL_BACKEND")
    parser.add_argument("--search-process", action="store_true", help="search through a search process")
    parser.add_argument("--requests", type=int, default=2000, help="calls per stage and run")
    parser.add_argument("--repeats", type=int, default=3, help="runs: the table gives each stage's median")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the wrk run of the http stage")
    parser.add_argument("--wrk-connections", type=int, default=1,
                        help="wrk's connections in the http stage (more: the worker's micro-batches fill)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "request_costs.json")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None or shutil.which("redis-server") is None:
        parser.error("needs wrk and redis-server on PATH")

    with tempfile.TemporaryDirectory(prefix="request-costs-") as tmp:
        work = Path(tmp)
        root = publish_synthetic(work / "bundles", n_items=args.items, n_users=args.users, layout=CodeLayout.SIGN1,
                                 dim=256)  # fmt: skip
        bundle = Bundle.load(root)
        redis = RedisProcess.start(work / "redis.log")
        owner: subprocess.Popen[bytes] | None = None
        try:
            redis.load_user_codes(bundle.manifest.model_version, bundle.user_ids, bundle.user_codes)
            socket_path = None
            if args.search_process:
                socket_path, owner = start_owner(work, args)
            rows = zipf_users(args.users, args.requests)
            runs: dict[str, list[Timing]] = {}
            for hot_path in (True, False):
                settings = ServiceSettings(
                    bundle_root=root, redis_url=redis.url, device=args.device, retrieval_backend=args.backend,
                    search_socket=socket_path, hot_path=hot_path, log_level="warning",
                )  # type: ignore[arg-type]  # fmt: skip
                for _ in range(args.repeats):
                    stages = Stages(settings, rows, args.requests)
                    measured = asyncio.run(stages.measure())
                    if not hot_path:  # only the whole call differs
                        measured = {"app (route)": measured["app"]}
                    for name, timing in measured.items():
                        runs.setdefault(name, []).append(timing)
            users_file = write_synthetic_users("u", args.users, work / "users")
            http_cpu = [worker_cpu_per_request(root, redis, args, users_file, work) for _ in range(args.repeats)]
        finally:
            if owner is not None:
                owner.terminate()
                owner.wait(timeout=30)
            redis.stop()

    medians = {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
               for name, ts in runs.items()}  # fmt: skip
    worker = statistics.median(http_cpu)
    medians["http"] = (float("nan"), worker - medians["app"][1])
    medians["worker under wrk"] = (float("nan"), worker)
    meta = {"commit": commit(), "device": args.device, "cores": os.cpu_count(), "items": args.items,
            "users": args.users, "search_process": args.search_process, "k": K, "requests": args.requests,
            "repeats": args.repeats, "wrk_connections": args.wrk_connections}  # fmt: skip
    append_records(args.out, [{**meta, "stage": name, "wall_us": json_figure(w), "cpu_us": json_figure(c)}
                              for name, (w, c) in medians.items()])  # fmt: skip
    print(f"{meta}\n")
    print(markdown_table(["stage", "wall µs", "CPU µs"],
                         [[name, f"{w:,.0f}" if w == w else "–", f"{c:,.0f}" if c == c else "–"]
                          for name, (w, c) in medians.items()]))  # fmt: skip
    return 0


def start_owner(work: Path, args: Any) -> tuple[Path, subprocess.Popen[bytes]]:
    socket_path = work / "search.sock"
    env = {**os.environ, "RECSYS_DEVICE": args.device, "RECSYS_RETRIEVAL_BACKEND": args.backend,
           "RECSYS_LOG_LEVEL": "warning"}  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "service.search_process", "--socket", str(socket_path)],
                               env=env)  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("request_costs: the search process did not start")
        time.sleep(0.05)
    return socket_path, process


if __name__ == "__main__":
    sys.exit(main())
