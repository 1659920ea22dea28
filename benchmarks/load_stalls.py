"""How long a worker's model load holds the interpreter in one stretch, and where.

    python -m benchmarks.load_stalls --bundle-root /tmp/industrial/10000000/bundles --device gpu
    python -m benchmarks.load_stalls --random-items 1000000 --device gpu

uvicorn's supervisor pings each worker from a thread of that worker and kills a worker that does not answer within
its health-check timeout, loading or not; it then starts another, which loads again. A load step that holds the GIL
in one C call for longer than that timeout therefore restarts the worker forever, and the server never turns ready.
This loads a bundle as a worker does (``ModelLoader``: verify, build the index on --device, self-check, warm up for
--warm-batch queries) while a watchdog thread asks for the GIL every few milliseconds, and reports the longest
waits with what the loading thread was doing. ``--random-items`` publishes a bundle of random codes first.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.harness import benchmark_parser, markdown_table
from service.model import SWITCH_INTERVAL_S, ModelLoader, ModelLoadError

TICK_S = 0.005


class StallWatch:
    """A thread that sleeps ``TICK_S`` at a time and records each wake-up later than ``threshold_s``: the time it
    waited for the GIL, and the watched thread's innermost frames at that moment (libraries' included: the C call
    that held it is usually theirs)."""

    def __init__(self, watched: int, threshold_s: float = 0.25) -> None:
        self.watched, self.threshold_s = watched, threshold_s
        self.stalls: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def __enter__(self) -> StallWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            before = time.perf_counter()
            time.sleep(TICK_S)
            late = time.perf_counter() - before - TICK_S
            if late > self.threshold_s:
                frame = sys._current_frames().get(self.watched)
                stack = traceback.extract_stack(frame) if frame is not None else []
                where = [f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack]
                self.stalls.append({"at_s": round(before - started, 2), "held_s": round(late, 3), "after": where[-6:]})


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle-root", type=Path)
    source.add_argument("--random-items", type=int, help="publish a bundle of this many random items (and users)")
    parser.add_argument("--device", choices=["cpu", "gpu", "auto"], default="gpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--warm-batch", type=int, default=64, help="recsys-serve's batch_max_size")
    parser.add_argument("--healthcheck-s", type=float, default=5.0, help="the timeout the stalls are judged against")
    parser.add_argument("--out", type=Path, default=None, help="JSON record (default: print only)")
    args = parser.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as a worker's lifespan sets it before loading
    with tempfile.TemporaryDirectory() as folder:
        root = args.bundle_root
        if root is None:
            from benchmarks.gpu_catalogue import publish_synthetic
            from index.codes import CodeLayout

            root = Path(folder) / "bundles"
            publish_synthetic(root, n_items=args.random_items, n_users=args.random_items, layout=CodeLayout.PLANES2,
                              dim=64)  # fmt: skip
        loader = ModelLoader(bundle_root=root, device=args.device, backend=args.backend, warm_batch=args.warm_batch)
        started = time.perf_counter()
        try:
            with StallWatch(threading.get_ident()) as watch:
                model = loader.load()
        except ModelLoadError as error:  # no bundle there, or one that does not load: one line, as the service says
            print(f"load_stalls: error: {error}", file=sys.stderr)
            return 2
        load_s = time.perf_counter() - started
    longest = max((s["held_s"] for s in watch.stalls), default=0.0)
    record = {
        "bundle": str(args.bundle_root or f"random {args.random_items}"), "device": args.device,
        "backend": model.index.backend, "load_s": round(load_s, 2), "longest_hold_s": longest,
        "healthcheck_s": args.healthcheck_s, "would_be_killed": longest >= args.healthcheck_s,
        "stalls": sorted(watch.stalls, key=lambda s: -s["held_s"])[:10],
    }  # fmt: skip
    print(json.dumps(record))
    if args.out is not None:
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    rows = [[s["at_s"], s["held_s"], " < ".join(reversed(s["after"]))[:120]] for s in record["stalls"]]
    print(markdown_table(["at s", "GIL held s", "loading thread in"], rows or [["-", "-", "none over 0.25 s"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
