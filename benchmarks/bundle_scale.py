"""Export at catalogue scale: wall time and peak host memory of each stage of ``trainer.export.export_bundle``.

    python -m benchmarks.bundle_scale --users 1000000 --items 1000000 --bundle-root /tmp/scale/b1m

Training is not what is measured: the model is built as ``recsys-train`` builds it (synthetic data, hashed input
layer, HQ 2-bit codes) and exported untrained, which costs what a trained model's export costs (every stage's
work depends on the sizes, not on the weights). Each stage of the export is timed by wrapping the function that
does it; peak RSS is sampled every 20 ms, so a peak shorter than that may be missed. Then, each in a fresh
process so that its peak is its own: ``recsys-index build``, ``recsys-index check`` and one ``Bundle.load`` (what
each service worker does at start). Ends with a table and one JSON record per stage in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness import RESULTS, append_records, commit, run_measured

PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The process's resident set, sampled in a thread: the highest value since the last ``reset``."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, self.now())

    def reset(self) -> None:
        self.peak = self.now()


def timed_stages(rss: PeakRss, records: list[dict[str, Any]]) -> Callable[[str, Callable[..., Any]], Any]:
    import torch

    cuda = torch.cuda.is_available()

    def wrap(name: str, function: Callable[..., Any]) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            rss.reset()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if cuda:
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - started
                record = {"stage": name, "seconds": round(seconds, 2), "peak_rss_mb": rss.peak >> 20}
                if cuda:
                    record["peak_gpu_mb"] = torch.cuda.max_memory_allocated() >> 20
                records.append(record)

        return timed

    return wrap


@contextmanager
def patched(module: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def export(
    users: int, items: int, eval_users: int, bundle_root: Path, records: list[dict[str, Any]], device: str = "cpu"
) -> Path:
    import dataclasses

    import torch

    import index.bundle
    import trainer.export
    from trainer.cli import build_parser, train_config
    from trainer.data import SyntheticConfig, load_dataset
    from trainer.evaluate import evaluation_users, held_out_of
    from trainer.train import TrainResult, build_model

    torch.set_num_threads(os.cpu_count() or 1)
    rss = PeakRss()
    wrap = timed_stages(rss, records)
    argv = ["--synthetic-users", str(users), "--synthetic-items", str(items), "--input-layer", "hash",
            "--method", "hq", "--bits", "2", "--dim", "64", "--device", device]  # fmt: skip
    config = train_config(build_parser().parse_args(argv))
    synthetic = SyntheticConfig(n_users=users, n_items=items, seed=config.optim.seed)
    data = wrap("data (synthetic, split)", load_dataset)("synthetic", synthetic=synthetic)
    # The same users for every version of the export, whether it samples or not: recsys-train --eval-users's sample.
    tested = evaluation_users(data.test, eval_users, config.optim.seed)
    data = dataclasses.replace(data, test=held_out_of(data.test, tested))
    model, quantizer = wrap("build model", build_model)(data, config, torch.device(device))
    result = TrainResult(model=model, quantizer=quantizer, best_epoch=0, best_valid={})
    q = type(quantizer)
    stages = [
        (q, "node_representations", "export: propagation (final embeddings)"),
        (q, "export", "export: quantization"),
        (trainer.export, "device_metrics", "export: test metrics, device path"),
        (trainer.export, "served_path_metrics", "export: test metrics, served path"),
        (trainer.export, "cold_start_section", "export: cold-start section"),
        (trainer.export, "popularity_order", "export: popularity order"),
        (index.bundle, "sha256_of", "publish: sha256 (all calls)"),
        (trainer.export, "publish_bundle", "publish (write, checksum, fsync)"),
    ]
    with contextlib.ExitStack() as stack:
        for owner, attr, label in stages:
            stack.enter_context(patched(owner, attr, wrap(label, getattr(owner, attr))))
        report = wrap("export_bundle (total)", trainer.export.export_bundle)(result, data, config, bundle_root)
    return report.bundle_path


def merge_sha_calls(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The checksum wrapper runs once per file: one row with their sum."""
    sha = [r for r in records if r["stage"].startswith("publish: sha256")]
    rest = [r for r in records if not r["stage"].startswith("publish: sha256")]
    if sha:
        merged = {"stage": sha[0]["stage"], "seconds": round(sum(r["seconds"] for r in sha), 2),
                  "peak_rss_mb": max(r["peak_rss_mb"] for r in sha), "calls": len(sha)}  # fmt: skip
        rest.append(merged)
    return rest


def in_fresh_process(label: str, argv: list[str]) -> dict[str, Any]:
    """Wall time and peak RSS of a command (wait4's maximum resident set of that process alone)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        done = run_measured(argv, timeout=3600, stdout=out, stderr=err)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if done.returncode:
        raise RuntimeError(f"{label} failed: {stderr[-2000:]}")
    peak = done.peak_rss_bytes >> 20
    return {"stage": label, "seconds": round(done.seconds, 2), "peak_rss_mb": peak, "stdout": stdout.strip()[-300:]}


LOAD_ONE = """
import resource, sys, time
from pathlib import Path
started = time.perf_counter()
from index.bundle import Bundle
b = Bundle.load(Path(sys.argv[1]))
loaded = time.perf_counter() - started
row = b.user_row(sys.argv[2])
print(loaded, row, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--bundle-root", type=Path, required=True)
    parser.add_argument("--device", default="cpu", help="where the model is built and propagated (cuda on a GPU host)")
    parser.add_argument("--eval-users", type=int, default=2000, help="test users the export ranks (a seeded sample)")
    parser.add_argument("--index-device", default="cpu", help="recsys-index's --device")
    parser.add_argument("--skip-export", action="store_true", help="measure the bundle CURRENT names already")
    parser.add_argument("--out", type=Path, default=RESULTS / "bundle_scale.json")
    parser.add_argument("--label", default="", help="what this run measures (e.g. before, after)")
    args = parser.parse_args(argv)
    records: list[dict[str, Any]] = []
    if not args.skip_export:
        export(args.users, args.items, args.eval_users, args.bundle_root, records, args.device)
        records = merge_sha_calls(records)
    python = sys.executable
    index_args = ["--bundle-root", str(args.bundle_root), "--device", args.index_device]
    records.append(in_fresh_process("recsys-index build", [python, "-m", "index.cli", "build", *index_args]))
    records.append(in_fresh_process("recsys-index check", [python, "-m", "index.cli", "check", *index_args]))
    load = in_fresh_process("Bundle.load + user_row (a worker)", [python, "-c", LOAD_ONE, str(args.bundle_root), "1"])
    loaded_s, _, peak = load.pop("stdout").split()
    load |= {"seconds": round(float(loaded_s), 2), "peak_rss_mb": int(peak)}
    records.append(load)
    print(f"\n{'stage':<44} {'seconds':>8} {'peak RSS MiB':>13} {'peak GPU MiB':>13}")
    for record in records:
        gpu = record.get("peak_gpu_mb", "-")
        print(f"{record['stage']:<44} {record['seconds']:>8} {record['peak_rss_mb']:>13} {gpu:>13}")
    sizes = {p.name: p.stat().st_size for p in sorted(resolve(args.bundle_root).iterdir())}
    print("\n" + "\n".join(f"{name:<24} {size / 2**20:>10.1f} MiB" for name, size in sizes.items()))
    meta = {"users": args.users, "items": args.items, "label": args.label, "cpus": os.cpu_count(), "commit": commit()}
    append_records(args.out, [{**meta, "stages": records, "file_bytes": sizes}])
    return 0


def resolve(root: Path) -> Path:
    from index.bundle import resolve_bundle_path

    return resolve_bundle_path(root)


if __name__ == "__main__":
    sys.exit(main())
