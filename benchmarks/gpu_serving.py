"""/recommend served from one GPU at catalogue scale, end to end: rate against latency, by mode and worker count.

    # the lent H200, in one call (tools/device/gpu_serving.sh unpacks redis-server, wrk and the wheels first):
    python -m benchmarks.gpu_serving --items 10000000 --users 1000000 --faiss-gpu-kit .gpu-kit \\
        --gowalla .carry/gowalla_hq --budget-s 480 --out "$OUT/gpu_serving.json"
    # a CPU machine, small (what the device run does, on the CPU backends):
    python -m benchmarks.gpu_serving --cpu --items 200000 --users 20000 --workers 2 --scale-workers 1 \\
        --connections 4 16 --peer-connections 4 --seconds 5 --out /tmp/gpu_serving.json

Set-up, all real processes: bundles built by benchmarks/gpu_catalogue.py through the trainer's bundle writer (10M
items × 256-bit codes and 10M × float32 d = 64, 1M users with 20–200 seen items each) and optionally a trained
Gowalla bundle; one redis-server holding every user's code under the service's key; for each measured
configuration a fresh `recsys-serve` (uvicorn workers, each loading and verifying the bundle, its index on the GPU).
wrk (benchmarks/wrk_load.py says why) sends the locustfile's mix: Zipf-drawn known users with k = 20 and
exclude-seen, 9 % batch POSTs of 8 users, 4.5 % unknown users; every response is checked.

Each server holds its index as a --designs entry says: ``process`` (one search process owns the GPU backend for
every worker), ``own`` (an index in every worker) or ``own-mps`` (the same under CUDA MPS, which the benchmark
starts). Phases, most important first, each skipped when the time left (--budget-s) cannot hold it:
1. main: the main mode (--main, default codes:triton) held as the first design at --workers, one step per connection
   count (--connections), then on the same server the post phase: only batch POSTs of --post-users users
   (--post-connections; items/s);
2. peers: each --peers mode (faiss-gpu binary flat, float IndexFlatIP on the GPU, Gowalla), first design;
3. main again for each other design (--design-connections);
4. scale: the main mode, first design, at each of --scale-workers, at --scale-connections.
Each server is warmed (wrk at its smallest and largest connection counts) before its steps. In each design's main
phase, py-spy samples the busiest worker and the search process during the --profile-connections step. Results are
rewritten after every step (JSON at --out; PNG of p99 against rate and of rate against workers beside it), so a run
stopped by its time limit (SIGINT / SIGTERM) still leaves what it measured; a table of every step ends the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from benchmarks.gpu_catalogue import synthetic_content
from benchmarks.harness import RESULTS, benchmark_parser, commit, progress
from benchmarks.serving_stack import MpsDaemon, RedisProcess, ServiceProcess, cpu_ticks, faiss_gpu_boot
from benchmarks.wrk_load import (
    BATCH_USERS,
    GpuSampler,
    K,
    MetricsSnapshot,
    host_cpu,
    metrics_delta,
    profile_worker,
    run_wrk,
    write_synthetic_users,
    write_users_file,
)
from index.bundle import Bundle, publish_bundle
from index.codes import CodeLayout

GPU_BACKENDS = ("triton", "faiss-gpu", "torch")
DESIGNS = ("process", "own", "own-mps")
TARGET_RATE, TARGET_P99_MS = 10_000.0, 10.0  # issue #23, for codes + triton at 10M items


@dataclass(frozen=True)
class Mode:
    """What serves: a catalogue (``codes``, ``float`` or ``gowalla``) and a search backend, written ``codes:triton``.

    For ``float`` the backend part says only the device (``float:gpu`` is FAISS ``IndexFlatIP`` on the GPU)."""

    catalogue: str
    backend: str
    device: str

    @classmethod
    def parse(cls, text: str) -> Mode:
        catalogue, _, backend = text.partition(":")
        if catalogue not in ("codes", "float", "gowalla") or not backend:
            raise argparse.ArgumentTypeError(f"{text!r}: expected CATALOGUE:BACKEND, CATALOGUE codes|float|gowalla")
        if backend in ("gpu", "cpu"):
            return cls(catalogue, "auto", backend)
        return cls(catalogue, backend, "gpu" if backend in GPU_BACKENDS else "cpu")

    @property
    def name(self) -> str:
        return f"{self.catalogue}-{self.backend if self.backend != 'auto' else self.device}"

    @property
    def needs_faiss_gpu(self) -> bool:
        return self.device == "gpu" and (self.backend == "faiss-gpu" or self.catalogue == "float")


@dataclass(frozen=True)
class Design:
    """How one server holds its index: ``process`` (one search process answers every worker), ``own`` (an index in
    every worker) or ``own-mps`` (an index in every worker, the workers' GPU contexts merged by CUDA MPS)."""

    name: str

    @classmethod
    def parse(cls, text: str) -> Design:
        if text not in DESIGNS:
            raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(DESIGNS)}")
        return cls(text)

    @property
    def search_process(self) -> bool:
        return self.name == "process"

    @property
    def mps(self) -> bool:
        return self.name == "own-mps"


@dataclass
class Catalogue:
    """A published bundle root, what it is, and the file of its users for wrk."""

    root: Path
    label: str
    fields: dict[str, Any]
    users_file: Path
    startup_s: float = 60.0  # the last server start on it (until one is measured, a guess from its size)


class Stopped(Exception):
    """SIGINT or SIGTERM: the run's time is up; write what was measured."""


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signal.Signals(signum).name)


def device_name(cpu: bool) -> str:
    cores = f"{os.cpu_count()} cores"
    smi = shutil.which("nvidia-smi")
    if not cpu and smi:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return f"{out.stdout.strip().splitlines()[0]}, {cores}"
    return f"cpu ({cores}, {platform.processor() or platform.machine()})"


class Run:
    """The plan, the processes and the records of one benchmark run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.out: Path = args.out
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.work: Path = args.work
        self.log = self.out.with_name("servers.log")
        self.points: list[dict[str, Any]] = []
        self.skipped: list[str] = []
        self.profiles: dict[str, dict[str, Any]] = {}  # by server label: its busiest worker and its search process
        self.device = device_name(args.cpu)
        self.meta: dict[str, Any] = {
            "device": self.device, "commit": commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "generator": "wrk (closed loop), benchmarks/gpu_serving.lua", "k": 20, "setup_s": {},
            "settings": {"batch_max_size": args.batch_max_size, "batch_max_wait_ms": args.batch_max_wait_ms,
                         "warm_max_fetch": args.warm_max_fetch},
            "designs": [design.name for design in args.designs],
            "argv": sys.argv[1:],
        }  # fmt: skip
        self.catalogues: dict[str, Catalogue] = {}
        self.redis: RedisProcess | None = None
        self.faiss_env: dict[str, str] | None = None
        self.mps: MpsDaemon | None = None

    def left(self) -> float:
        return float(self.args.budget_s) - (time.monotonic() - self.started)

    def say(self, text: str) -> None:
        tqdm.write(f"[{time.monotonic() - self.started:6.1f} s] {text}")

    # --- set-up -------------------------------------------------------------------------------------------------

    def build(self, modes: list[Mode]) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.redis = RedisProcess.start(self.work / "redis.log")
        for name in dict.fromkeys(mode.catalogue for mode in modes):
            started = time.monotonic()
            self.catalogues[name] = self._catalogue(name)
            self.meta["setup_s"][name] = round(time.monotonic() - started, 1)
            self.say(f"catalogue {name}: {self.catalogues[name].label} ({self.meta['setup_s'][name]} s with Redis)")
        if any(mode.needs_faiss_gpu for mode in modes) and self.args.faiss_gpu_kit is not None:
            self.faiss_env = faiss_gpu_boot(self.args.faiss_gpu_kit, self.work / "faiss_gpu_boot")

    def _catalogue(self, name: str) -> Catalogue:
        assert self.redis is not None
        if name == "gowalla":
            if self.args.gowalla is None:
                raise ValueError("a gowalla mode needs --gowalla BUNDLE_ROOT")
            bundle = Bundle.load(self.args.gowalla)
            m = bundle.manifest
            self.redis.load_user_codes(m.model_version, bundle.user_ids, bundle.user_codes)
            code = f"{m.code_layout} d={m.dim} ({m.method}, {m.bits}-bit)"
            fields = {"catalogue": "gowalla", "n_items": m.n_items, "n_users": m.n_users, "code": code,
                      "model_version": m.model_version}  # fmt: skip
            label = f"{m.dataset} {m.method} {m.bits}-bit d={m.dim}: {m.n_items:,} items, {m.n_users:,} users"
            return Catalogue(
                self.args.gowalla, label, fields, write_users_file(bundle.user_ids, self.work / "gowalla.users")
            )
        layout, dim = (
            (CodeLayout.SIGN1, self.args.bits) if name == "codes" else (CodeLayout.FLOAT32, self.args.float_dim)
        )
        root = self.work / name
        shutil.rmtree(root, ignore_errors=True)
        version = f"synthetic-{layout.value}-d{dim}-{self.args.items}x{self.args.users}"
        content = synthetic_content(
            n_items=self.args.items, n_users=self.args.users, layout=layout, dim=dim, seed=23, version=version
        )
        publish_bundle(root, content)
        self.redis.load_user_codes(version, content.user_ids, content.user_codes)
        code = f"{dim}-bit codes" if name == "codes" else f"float32 d={dim}"
        fields = {"catalogue": name, "n_items": self.args.items, "n_users": self.args.users, "code": code,
                  "model_version": version}  # fmt: skip
        label = f"{self.args.items:,} items × {code}, {self.args.users:,} users"
        users = write_synthetic_users("u", self.args.users, self.work / f"{name}.users")  # ids of gpu_catalogue
        return Catalogue(root, label, fields, users, startup_s=10 + 4 * self.args.items / 1e6)

    # --- measurement ---------------------------------------------------------------------------------------------

    def mps_environment(self) -> dict[str, str] | None:
        """The environment of a server under CUDA MPS (the daemon starts on first use); None where MPS cannot run."""
        if self.mps is None:
            try:
                self.mps = MpsDaemon.start(self.work / "mps")
            except RuntimeError as error:
                self.say(f"CUDA MPS: {error}")
                return None
            self.meta["cuda_mps"] = "started"
        return self.mps.environment

    def phase(
        self, phase: str, mode: Mode, design: Design, workers: int, connections: list[int], posts: list[int]
    ) -> None:
        """Start a server for ``mode`` held as ``design`` says, warm it, take one step per connection count (then one
        step of batch POSTs per count in ``posts``: the post phase, on the same server), stop it."""
        catalogue = self.catalogues[mode.catalogue]
        seconds = self.args.seconds if phase == "main" else self.args.short_seconds
        step_s = seconds + 2
        needed = catalogue.startup_s + self.args.warmup_s + step_s
        label = f"{mode.name} {design.name} × {workers} workers"
        if self.left() < needed:
            self.skip(f"{phase} {label}: {self.left():.0f} s left, needs ~{needed:.0f}")
            return
        if mode.needs_faiss_gpu and self.faiss_env is None and not self.args.cpu:
            self.skip(f"{phase} {mode.name}: no faiss-gpu here (give --faiss-gpu-kit on the lent machines)")
            return
        assert self.redis is not None
        settings = {"RECSYS_BATCH_MAX_SIZE": str(self.args.batch_max_size),
                    "RECSYS_BATCH_MAX_WAIT_MS": str(self.args.batch_max_wait_ms),
                    "RECSYS_WARM_MAX_FETCH": str(self.args.warm_max_fetch),
                    "RECSYS_SEARCH_PROCESS": str(design.search_process)}  # fmt: skip
        extra_env = dict(self.faiss_env) if mode.needs_faiss_gpu and self.faiss_env else {}
        if design.mps:
            mps_env = self.mps_environment()
            if mps_env is None:
                self.skip(f"{phase} {label}: CUDA MPS does not run here")
                return
            extra_env.update(mps_env)
        self.say(f"{phase}: {label} on {catalogue.label} — starting")
        try:
            service = ServiceProcess.start(
                name=mode.name, bundle=catalogue.root, redis_url=self.redis.url, device=mode.device,
                backend=mode.backend, workers=workers, log=self.log, settings=settings, extra_env=extra_env,
                timeout_s=max(10.0, self.left() - step_s),
            )  # fmt: skip
        except (RuntimeError, TimeoutError) as error:
            self.skip(f"{phase} {label}: the server did not start: {error}")
            return
        catalogue.startup_s = service.started_s
        self.meta["setup_s"][f"start {label}"] = round(service.started_s, 1)
        self.say(f"ready in {service.started_s:.1f} s: {service.readiness}")
        try:
            self._warm(service, catalogue, connections)
            steps = [(phase, count) for count in connections] + [("post", count) for count in posts]
            for step, count in steps:
                if self.left() < step_s:
                    self.skip(f"{step} {label} at {count} connections: out of time")
                    break
                self._step(step, mode, design, workers, count, service, catalogue, seconds)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:  # this server's steps end; the run goes on
            self.skip(f"{phase} {label}: {error}")
        finally:
            service.stop()

    def _warm(self, service: ServiceProcess, catalogue: Catalogue, connections: list[int]) -> None:
        """Caches, CUDA graphs and kernels of the batch sizes the steps will meet, before any is timed."""
        half = max(1.0, self.args.warmup_s / 2)
        for count in sorted({min(connections), max(connections)}):
            if self.left() < half + self.args.short_seconds + 2:
                return
            warm = run_wrk(service.url, catalogue.users_file, connections=count, threads=self.args.wrk_threads,
                           seconds=half, seed=99)  # fmt: skip
            if warm["errors"]:
                self.say(
                    f"warm-up at {count} connections: {warm['errors']} errors, e.g. {warm['wrk']['first_failure']}"
                )

    def _step(
        self,
        phase: str,
        mode: Mode,
        design: Design,
        workers: int,
        connections: int,
        service: ServiceProcess,
        catalogue: Catalogue,
        seconds: float,
    ) -> None:
        args = self.args
        server = f"{mode.name} {design.name} x{workers}"
        profile_here = phase == "main" and connections == args.profile_connections and server not in self.profiles
        before = MetricsSnapshot.parse(service.get("/metrics").decode())
        busy0, total0 = host_cpu()
        pids = service.worker_pids()
        owner = service.search_process_pid()
        ticks0 = {pid: cpu_ticks(pid) for pid in [*pids, *([owner] if owner else [])]}
        with GpuSampler() as gpu:
            if profile_here:  # py-spy beside wrk: the busiest worker once the load has started, the search process
                holder: dict[str, Any] = {}
                spies = [threading.Thread(target=self._spy, args=(pids, ticks0, seconds, holder, "worker"))]
                if owner:
                    spies.append(threading.Thread(target=self._spy, args=([owner], ticks0, seconds, holder, "search")))
                for spying in spies:
                    spying.start()
            post_users = args.post_users if phase == "post" else None
            result = run_wrk(service.url, catalogue.users_file, connections=connections, threads=args.wrk_threads,
                             seconds=seconds, mix="post" if post_users else "mix",
                             batch_users=post_users or BATCH_USERS)  # fmt: skip
            if profile_here:
                for spying in spies:
                    spying.join()
                self.profiles[server] = {"mode": mode.name, "design": design.name, "workers": workers,
                                         "connections": connections, **holder}  # fmt: skip
        busy1, total1 = host_cpu()
        after_text = service.get("/metrics").decode()
        tick_s = os.sysconf("SC_CLK_TCK")
        worker_s = sum(cpu_ticks(pid) - ticks0[pid] for pid in pids) / tick_s
        owner_s = (cpu_ticks(owner) - ticks0[owner]) / tick_s if owner else 0.0
        point = {
            "mode": mode.name, "design": design.name, "phase": phase,
            "backend": service.readiness.get("search_backend"),
            "index_device": service.readiness.get("index_device"), **catalogue.fields, "workers": workers,
            **result, "service": metrics_delta(before, MetricsSnapshot.parse(after_text)),
            "host_cpu_busy": round((busy1 - busy0) / max(1, total1 - total0), 3),
            "server_cpu_ms_per_request": round(1000 * worker_s / max(1, result["requests"]), 3),
            "search_process_cpu_ms_per_request": round(1000 * owner_s / max(1, result["requests"]), 3),
            "search_process_cores": round(owner_s / max(1e-9, result["seconds"]), 2),
            **(gpu.summary() or {}), "device": self.device, "commit": self.meta["commit"],
        }  # fmt: skip
        if post_users:  # every answer checked to hold k items for each of its users
            point["post_users"] = post_users
            point["items_per_s"] = round(point["rate"] * post_users * K, 1)
        if mode.catalogue == "codes" and mode.backend == "triton" and not post_users:
            point["meets_target"] = (
                point["rate"] >= TARGET_RATE and point["p99_ms"] <= TARGET_P99_MS and point["errors"] == 0
            )
        if phase == "main":
            self.out.with_name("metrics.txt").write_text(after_text)
        self.points.append(point)
        self.say(
            f"{server} c={connections}: {point['rate']:,.0f} req/s, p50 {point['p50_ms']:.2f} "
            f"p99 {point['p99_ms']:.2f} p99.9 {point['p999_ms']:.2f} ms, {point['errors']} errors, "
            f"batch {point['service']['batch_mean']}, search {point['service']['search_ms_mean']} ms "
            f"(owner: merged {point['service']['owner_merged_mean']}, search {point['service']['owner_search_ms_mean']}"
            f" ms, queued {point['service']['owner_queued_ms_mean']} ms), "
            f"cpu/req {point['server_cpu_ms_per_request']} + {point['search_process_cpu_ms_per_request']} ms"
            + (f", {point['items_per_s']:,.0f} items/s" if post_users else "")
        )
        self.write()

    def _spy(self, pids: list[int], ticks0: dict[int, int], seconds: float, holder: dict[str, Any], role: str) -> None:
        """py-spy on the busiest of ``pids`` once the load has run a second; its summary lands in ``holder[role]``."""
        time.sleep(1.0)
        busiest = max(pids, key=lambda pid: cpu_ticks(pid) - ticks0[pid])
        raw = self.out.with_name(f"pyspy_{role}.txt")
        holder[role] = profile_worker(busiest, max(1.0, seconds - 3), raw)

    def skip(self, why: str) -> None:
        self.skipped.append(why)
        self.say(f"skipped: {why}")
        self.write()

    # --- output --------------------------------------------------------------------------------------------------

    def write(self) -> None:
        self.meta["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.meta["catalogues"] = {name: c.label for name, c in self.catalogues.items()}
        body = {"meta": self.meta, "points": self.points, "profiles": self.profiles, "skipped": self.skipped}
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        tmp.replace(self.out)

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.mps is not None:
            self.mps.stop()


def plot(points: list[dict[str, Any]], path: Path, main: str) -> None:
    """p99 against request rate for each mode (main and peer steps); rate against workers for the main mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    curves = [p for p in points if p["phase"] in ("main", "peers")]
    for server in dict.fromkeys(server_label(p) for p in curves):
        steps = sorted((p for p in curves if server_label(p) == server), key=lambda p: p["connections"])
        line = left.plot([p["rate"] for p in steps], [p["p99_ms"] for p in steps], marker="o", label=f"{server} p99")
        left.plot([p["rate"] for p in steps], [p["p999_ms"] for p in steps], marker=".", linestyle=":",
                  color=line[0].get_color(), alpha=0.6)  # fmt: skip
        for p in steps:
            left.annotate(str(p["connections"]), (p["rate"], p["p99_ms"]), fontsize=7, alpha=0.7)
    left.axhline(TARGET_P99_MS, color="grey", linestyle="--", linewidth=0.8)
    left.axvline(TARGET_RATE, color="grey", linestyle="--", linewidth=0.8)
    left.set(xscale="log", yscale="log", xlabel="requests/s (closed loop; labels: connections)",
             ylabel="p99 (solid) and p99.9 (dotted) latency, ms", title="/recommend, k = 20, exclude seen")  # fmt: skip
    left.legend(fontsize=8)
    first = next((p["design"] for p in points if p["mode"] == main), None)
    scale = [p for p in points if p["mode"] == main and p["design"] == first and p["phase"] in ("main", "scale")]
    if scale:
        wanted = (
            max(p["connections"] for p in scale if p["phase"] == "scale")
            if any(p["phase"] == "scale" for p in scale)
            else scale[0]["connections"]
        )
        rows = sorted((p for p in scale if p["connections"] == wanted), key=lambda p: p["workers"])
        right.plot([p["workers"] for p in rows], [p["rate"] for p in rows], marker="o")
        for p in rows:
            right.annotate(f"p99 {p['p99_ms']:.1f} ms", (p["workers"], p["rate"]), fontsize=8)
        right.set(xscale="log", xlabel="uvicorn workers (one GPU)", ylabel="requests/s",
                  title=f"{main} ({first}): workers at {wanted} connections")  # fmt: skip
        right.set_xticks([p["workers"] for p in rows], [str(p["workers"]) for p in rows])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def server_label(point: dict[str, Any]) -> str:
    run = f", {point['run']}" if point.get("run") else ""  # records merged from several runs (gpu_serving_runs)
    return f"{point['mode']} {point['design']} ({point['workers']} w{run})"


def table(points: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | design | phase | workers | conns | req/s | p50 | p99 | p99.9 ms | errors | batch | search ms "
        "| cpu ms/req workers + search |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        s = p["service"]
        run = f" ({p['run']})" if p.get("run") else ""
        lines.append(
            f"| {p['mode']}{run} | {p['design']} | {p['phase']} | {p['workers']} | {p['connections']} | "
            f"{p['rate']:,.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['p999_ms']:.2f} | {p['errors']} | "
            f"{s['batch_mean']} | {s['search_ms_mean']} | "
            f"{p['server_cpu_ms_per_request']} + {p['search_process_cpu_ms_per_request']} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = benchmark_parser(__doc__)
    add = parser.add_argument
    add("--cpu", action="store_true", help="CPU backends: main codes:auto, peers float:cpu (and gowalla:auto)")
    add("--items", type=int, default=10_000_000, help="synthetic catalogue size")
    add("--users", type=int, default=1_000_000, help="synthetic users (codes in Redis, 20–200 seen items each)")
    add("--bits", type=int, default=256, help="code bits of the codes catalogue")
    add("--float-dim", type=int, default=64, help="dimensions of the float catalogue")
    add("--gowalla", type=Path, default=None, help="a trained bundle (root) to serve too: adds a gowalla peer")
    add("--main", type=Mode.parse, default=None, help="CATALOGUE:BACKEND (default codes:triton, --cpu: codes:auto)")
    add("--peers", type=Mode.parse, nargs="*", default=None,
        help="default codes:faiss-gpu float:gpu [gowalla:triton]; --cpu: float:cpu [gowalla:auto]")  # fmt: skip
    add("--workers", type=int, default=8, help="uvicorn workers of the main and peer phases")
    add("--peer-workers", type=int, default=None, help="workers of the peer phase (default --workers)")
    add("--connections", type=int, nargs="+", default=[16, 32, 64, 128, 256], help="main phase: wrk connections")
    add("--peer-connections", type=int, nargs="+", default=[16, 128], help="peer phase: wrk connections")
    add("--design-connections", type=int, nargs="*", default=None,
        help="main phase of the designs after the first: wrk connections (default --connections)")  # fmt: skip
    add("--post-users", type=int, default=64, help="post phase: users per POST /recommend (every request a batch)")
    add(
        "--post-connections",
        type=int,
        nargs="*",
        default=[8, 32],
        help="post phase (after the main steps, on the first design's server): wrk connections (none: skip)",
    )
    add("--scale-workers", type=int, nargs="*", default=[1, 2, 4, 16], help="scale phase: worker counts")
    add("--scale-connections", type=int, default=64, help="scale phase: wrk connections")
    add("--profile-connections", type=int, default=64, help="the main step during which py-spy samples a worker")
    add("--seconds", type=float, default=10.0, help="length of each main step")
    add("--short-seconds", type=float, default=8.0, help="length of each peer and scale step")
    add("--warmup-s", type=float, default=4.0, help="warm-up per server (half at its smallest, half largest step)")
    add("--wrk-threads", type=int, default=4, help="wrk threads (cores the generator may use)")
    add("--batch-max-size", type=int, default=64, help="RECSYS_BATCH_MAX_SIZE of the service")
    add("--batch-max-wait-ms", type=float, default=0.0, help="RECSYS_BATCH_MAX_WAIT_MS of the service")
    add("--warm-max-fetch", type=int, default=0, help="RECSYS_WARM_MAX_FETCH of the service (0: from the bundle)")
    add("--designs", type=Design.parse, nargs="+", default=[Design("process")],
        help="how servers hold the index, each measured in the main phase (the first also in the others): process "
        "(RECSYS_SEARCH_PROCESS: one process owns it, for every worker), own (each worker its own), own-mps (each "
        "its own, under CUDA MPS, which the benchmark starts)")  # fmt: skip
    add("--faiss-gpu-kit", type=Path, default=None, help="the lent machines' faiss-gpu kit (.gpu-kit)")
    add("--budget-s", type=float, default=480.0, help="stop starting work that would end past this many seconds")
    add("--work", type=Path, default=Path("/tmp/gpu_serving"), help="where bundles and user lists are written")
    add("--out", type=Path, default=RESULTS / "gpu_serving.json", help="the JSON written")
    args = parser.parse_args(argv)
    args.main = args.main or Mode.parse("codes:auto" if args.cpu else "codes:triton")
    if args.peers is None:
        args.peers = [Mode.parse(m) for m in (["float:cpu"] if args.cpu else ["codes:faiss-gpu", "float:gpu"])]
        if args.gowalla is not None:
            args.peers.append(Mode.parse("gowalla:auto" if args.cpu else "gowalla:triton"))
    if args.peer_workers is None:
        args.peer_workers = args.workers
    if args.items < 200 or args.users < 1 or args.seconds < 1 or args.workers < 1:
        parser.error("--items must be ≥ 200, --users, --seconds and --workers positive")
    if args.gowalla is not None and not args.gowalla.exists():
        parser.error(f"--gowalla {args.gowalla}: no such bundle or root")
    if args.faiss_gpu_kit is not None and not (args.faiss_gpu_kit / "faiss_gpu_sm90_site.tar.xz").is_file():
        parser.error(f"--faiss-gpu-kit {args.faiss_gpu_kit}: no faiss_gpu_sm90_site.tar.xz in it")
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not on PATH (Debian: apt-get install {tool}; the device script unpacks it)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    modes = [args.main, *args.peers]
    # Most important first, so that a run cut short by its budget loses the least: the first design's sweep (and its
    # batch POSTs), the peers that targets compare with, the other designs, then the other worker counts (largest
    # first).
    first = args.designs[0]
    no_posts: list[int] = []
    Phase = tuple[str, Mode, Design, int, list[int], list[int]]
    phases: list[Phase] = [("main", args.main, first, args.workers, args.connections, args.post_connections)]
    phases += [("peers", mode, first, args.peer_workers, args.peer_connections, no_posts) for mode in args.peers]
    phases += [("main", args.main, design, args.workers, args.design_connections or args.connections, no_posts)
               for design in args.designs[1:]]  # fmt: skip
    phases += [("scale", args.main, first, w, [args.scale_connections], no_posts)
               for w in sorted(set(args.scale_workers) - {args.workers}, reverse=True)]  # fmt: skip
    try:
        run.build(modes)
        for phase, mode, design, workers, connections, posts in progress(phases, "phases", "server"):
            run.phase(phase, mode, design, workers, connections, posts)
    except Stopped as signal_name:
        run.skip(f"stopped by {signal_name} after {time.monotonic() - run.started:.0f} s")
    finally:
        run.stop()
        run.write()
        if run.points:
            plot(run.points, args.out.with_suffix(".png"), args.main.name)
    print(f"\n{run.device}, commit {run.meta['commit']}; catalogues: {run.meta['catalogues']}")
    print(table(run.points))
    for why in run.skipped:
        print(f"skipped: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
