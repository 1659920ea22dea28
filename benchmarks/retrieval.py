"""Exact Hamming top-k: every backend (and the float and usearch peers) on synthetic codes; table, JSON, PNG.

    python -m benchmarks.retrieval --n-items 1000000 10000000 --bits 64 256 576 --batches 1 64 1024
    python -m benchmarks.retrieval --report-only --out benchmarks/results/retrieval.json

Records (appended to --out): backend, n_items, code_bits, batch, k, median_ms, qps, device, commit
(+ memory_bytes, runs, agrees). `agrees` says the backend returned the same ids and distances as the
first backend of the run (distances only for usearch, which orders ties its own way). On a GPU the
floors are added as rows: `floor-bytes` (the codes read once at the measured copy bandwidth) and
`floor-popcount` (batch × n × 32-bit words at 16 popcounts per SM per clock, the H100's integer rate).
Float peers (`faiss-float-cpu` / `faiss-float-gpu`, IndexFlatIP d = 64) carry code_bits 2048.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import RESULTS, benchmark_parser, commit, markdown_table, setup_faiss_gpu_kit


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def timed(call: Callable[[], Any], repeats: int, budget_s: float) -> tuple[float, int, Any]:
    """Median ms over 1..``repeats`` runs within ``budget_s``, after one untimed warm-up (compiles, caches)."""
    result = call()
    times: list[float] = []
    while not times or (len(times) < repeats and sum(times) < budget_s):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times), len(times), result


class FloatPeer:
    """FAISS IndexFlatIP over random d = 64 float vectors: what serving float embeddings costs."""

    def __init__(self, n_items: int, gpu: bool, dim: int = 64) -> None:
        import faiss

        rng = np.random.default_rng(3)
        self.index: Any = faiss.IndexFlatIP(dim)
        for start in range(0, n_items, 1 << 22):
            self.index.add(rng.standard_normal((min(1 << 22, n_items - start), dim), dtype=np.float32))
        if gpu:
            self._resources = faiss.StandardGpuResources()
            self.index = faiss.index_cpu_to_gpu(self._resources, 0, self.index)
        self.name = "faiss-float-gpu" if gpu else "faiss-float-cpu"
        self.dim = dim
        self.memory_bytes = n_items * dim * 4

    def search(self, batch: int, k: int) -> Any:
        queries = np.random.default_rng(4).standard_normal((batch, self.dim), dtype=np.float32)
        return self.index.search(queries, k)


def floors(n_items: int, bits: int, batches: list[int]) -> list[dict[str, Any]]:
    """Bytes read once at the measured bandwidth; popcounts at the chip's integer rate."""
    import torch

    probe = torch.ones(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB; float sums run at full bandwidth
    probe.sum()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(5):
        probe.sum()
    torch.cuda.synchronize()
    bandwidth = 5 * probe.numel() * 4 / (time.perf_counter() - started)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    clock_mhz = float(
        subprocess.run(
            ["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"], capture_output=True, text=True
        ).stdout.split()[0]
    )
    popcounts_per_s = sms * 16 * clock_mhz * 1e6
    rows = []
    for batch in batches:
        rows.append({"backend": "floor-bytes", "batch": batch, "median_ms": 1000 * n_items * bits / 8 / bandwidth,
                     "bandwidth_gbs": bandwidth / 1e9})  # fmt: skip
        rows.append({"backend": "floor-popcount", "batch": batch,
                     "median_ms": 1000 * batch * n_items * (bits // 32) / popcounts_per_s,
                     "popcounts_per_s": popcounts_per_s})  # fmt: skip
    return rows


def record(
    base: dict[str, Any], name: str, n_items: int, bits: int, batch: int, ms: float, **extra: Any
) -> dict[str, Any]:
    row = {**base, "backend": name, "n_items": n_items, "code_bits": bits, "batch": batch,
           "median_ms": round(ms, 4), "qps": round(1000 * batch / ms, 1), **extra}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def random_codes(n_items: int, n_bytes: int, seed: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    rng, codes = np.random.default_rng(seed), np.empty((n_items, n_bytes), np.uint8)
    for start in range(0, n_items, 1 << 22):
        codes[start : start + (1 << 22)] = rng.integers(0, 256, (min(1 << 22, n_items - start), n_bytes), np.uint8)
    return codes


def random_word_major(n_items: int, n_bytes: int, device: str, seed: int) -> Any:
    """Random codes generated on a GPU, word-major int32 as the Triton backend holds them (no host copy)."""
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    shape = (-(-n_bytes // 4), n_items)
    return torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, device=device, generator=generator)


def kernel_times(search: Any) -> dict[str, float]:
    """GPU milliseconds per kernel of one (warm) search, busiest first: the work behind a replayed CUDA graph,
    without the host's launch gaps that ``profile``'s per-phase events include."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    search()
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        search()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in trace.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:60]] = totals.get(event.name[:60], 0.0) + event.time_range.elapsed_us() / 1000
    busiest = sorted(totals.items(), key=lambda item: -item[1])
    return {name: round(ms, 4) for name, ms in busiest} | {"total": round(sum(totals.values()), 4)}


def measure_backend(
    name: str, codes: Any, args: argparse.Namespace, base: dict[str, Any], reference: dict[int, Any]
) -> list[dict[str, Any]]:
    from index.retrieval import make_backend

    n_items, bits = codes.shape[0], codes.shape[1] * 8
    try:
        backend = make_backend(codes, name, shards=args.shards)
    except (RuntimeError, ValueError, MemoryError) as error:
        print(f"skip {name} at n={n_items} bits={bits}: {error}", flush=True)
        return []
    rows = []
    for batch in args.batches:
        queries = random_codes(batch, bits // 8, seed=batch + 1)
        ms, runs, found = timed(partial(backend.search, queries, args.k), args.repeats, args.budget)
        agrees = None
        if batch in reference:
            agrees = bool(np.array_equal(found.ids, reference[batch].ids)
                          and np.array_equal(found.distances, reference[batch].distances))  # fmt: skip
        reference.setdefault(batch, found)
        extra = {}
        if args.profile and hasattr(backend, "profile"):
            backend.profile(queries, args.k)  # compiles the eager path's kernel variants: not a search's cost
            extra["phases_ms"] = {phase: round(t, 4) for phase, t in backend.profile(queries, args.k).items()}
            extra["kernels_ms"] = kernel_times(partial(backend.search, queries, args.k))
        rows.append(record(base, backend.name, n_items, bits, batch, ms, memory_bytes=backend.memory_bytes,
                           runs=runs, agrees=agrees, **extra))  # fmt: skip
    return rows


def measure_usearch(
    codes: Any, args: argparse.Namespace, base: dict[str, Any], reference: dict[int, Any]
) -> list[dict[str, Any]]:
    from usearch.index import MetricKind, ScalarKind, search  # type: ignore[attr-defined]

    n_items, bits, rows = codes.shape[0], codes.shape[1] * 8, []
    for batch in args.batches:
        queries = random_codes(batch, bits // 8, seed=batch + 1)
        ms, runs, found = timed(
            partial(search, codes, queries, args.k, MetricKind.Hamming, exact=True, dtype=ScalarKind.B1),
            args.repeats, args.budget,
        )  # fmt: skip
        distances = np.asarray(found.distances).reshape(batch, -1).astype(np.int32)
        agrees = bool(np.array_equal(distances, reference[batch].distances)) if batch in reference else None
        rows.append(record(base, "usearch-exact", n_items, bits, batch, ms, memory_bytes=codes.nbytes, runs=runs,
                           agrees=agrees))  # fmt: skip
    return rows


def measure_float(peer: str, n_items: int, args: argparse.Namespace, base: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        index = FloatPeer(n_items, gpu=peer == "float-gpu")
    except (RuntimeError, AttributeError, MemoryError) as error:
        print(f"skip {peer}: {error}", flush=True)
        return []
    rows = []
    for batch in args.batches:
        ms, runs, _ = timed(partial(index.search, batch, args.k), args.repeats, args.budget)
        rows.append(record(base, index.name, n_items, 2048, batch, ms, memory_bytes=index.memory_bytes, runs=runs))
    return rows


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    base = {"k": args.k, "device": device_name(), "commit": commit()}
    for n_items in args.n_items:
        for bits in args.bits:
            codes = random_codes(n_items, bits // 8, seed=0)
            reference: dict[int, Any] = {}
            for name in args.backends:
                records += measure_backend(name, codes, args, base, reference)
            if "usearch" in args.peers:
                records += measure_usearch(codes, args, base, reference)
            if args.floors:
                for row in floors(n_items, bits, args.batches):
                    ms = row.pop("median_ms")
                    records.append(record(base, row.pop("backend"), n_items, bits, row.pop("batch"), ms, **row))
        for peer in args.peers:
            if peer in ("float-cpu", "float-gpu"):
                records += measure_float(peer, n_items, args, base)
    return records


def report(records: list[dict[str, Any]], plot: Path | None) -> None:
    header = ("device", "backend", "n_items", "code bits", "batch", "k", "median ms", "queries/s")
    rows = [
        (r["device"], r["backend"], f"{r['n_items']:,}", r["code_bits"], r["batch"], r["k"], f"{r['median_ms']:.3f}",
         f"{r['qps']:,.0f}")
        for r in records
    ]  # fmt: skip
    print(markdown_table(header, rows))
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The newest record of each point (records are appended in time order): one line per backend and panel.
    newest = {(r["device"], r["backend"], r["n_items"], r["code_bits"], r["batch"]): r for r in records}
    records = list(newest.values())
    panels = sorted({(r["device"], r["n_items"], r["code_bits"]) for r in records if r["code_bits"] != 2048})
    if not panels:
        return
    names = sorted({r["backend"] for r in records})
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    columns = min(4, len(panels))
    rows_n = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows_n, columns, figsize=(4.4 * columns, 3.9 * rows_n), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (device, n_items, bits) in zip(axes.flat, panels, strict=False):
        rows = [r for r in records if r["device"] == device and r["n_items"] == n_items
                and r["code_bits"] in (bits, 2048)]  # fmt: skip
        for backend in sorted({r["backend"] for r in rows}):
            line = sorted((r["batch"], r["median_ms"]) for r in rows if r["backend"] == backend)
            style = "--" if "floor" in backend else "-"
            axis.plot(*zip(*line, strict=True), marker="o", label=backend, linestyle=style, color=colours[backend])
        axis.set(xscale="log", yscale="log", xlabel="query batch", ylabel="median ms (k = 100)",
                 title=f"{n_items:,} × {bits}-bit (float: d = 64)\n{device}")  # fmt: skip
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(plot, dpi=110)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--backends", nargs="+", default=["faiss-cpu", "torch"])
    parser.add_argument("--peers", nargs="*", default=[], choices=["usearch", "float-cpu", "float-gpu"])
    parser.add_argument("--n-items", nargs="+", type=int, default=[1_000_000])
    parser.add_argument("--bits", nargs="+", type=int, default=[64, 256, 576])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64, 1024])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--shards", type=int, default=None, help="shards per backend (default: one per GPU)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timed runs per row, at most")
    parser.add_argument("--floors", action="store_true", help="add the GPU floor rows")
    parser.add_argument("--profile", action="store_true", help="per-phase ms (CUDA events) where a backend has them")
    parser.add_argument("--faiss-gpu-kit", type=Path, default=None, help="set up the lent machines' faiss-gpu first")
    parser.add_argument("--out", type=Path, default=RESULTS / "retrieval.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG (default: beside --out)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.faiss_gpu_kit is not None:
        setup_faiss_gpu_kit(args.faiss_gpu_kit)
    records = json.loads(args.out.read_text()) if args.out.is_file() else []
    if not args.report_only:
        records += run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(records, indent=2) + "\n")
    report(records, args.plot or args.out.with_name(args.out.stem + "_latency.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
