"""Sweep the Triton kernels' tile shapes on one GPU: median ms per search for each (kernel, BLOCK_Q, BLOCK_N, warps).

    python3 -m benchmarks.triton_tiles --n-items 10000000 --bits 256 --batches 64 1024 --out $OUT/tiles.json
    python3 -m benchmarks.triton_tiles --kernels mma --block-q 32 64 128 256 --block-n 64 128 256 ...
    python3 -m benchmarks.triton_tiles --gather-entries 4 8 16 --gather-warps 2 4 8 ...   # the gather's shape

Random codes are generated on the GPU once and shared by every configuration; each configuration's answer is
checked against the popcount kernel's with default tiles (`agrees`). Prints a table and writes the records as JSON.
"""

from __future__ import annotations

import itertools
import json
import sys
from functools import partial
from pathlib import Path

import index.retrieval.triton_backend as triton_backend
from benchmarks.harness import benchmark_parser, commit, markdown_table
from benchmarks.retrieval import device_name, kernel_times, random_codes, random_word_major, timed
from index.retrieval.triton_backend import Tiles, TritonBackend


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--n-items", type=int, default=10_000_000)
    parser.add_argument("--bits", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--block-q", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--block-n", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--profile", action="store_true", help="add each configuration's per-phase ms (CUDA events)")
    parser.add_argument("--kernels", nargs="+", choices=["popcount", "mma"], default=["popcount", "mma"])
    parser.add_argument(
        "--gather-entries",
        type=int,
        nargs="*",
        default=[],
        help="sweep the entries per gather program × --gather-warps instead (default scan tiles)",
    )
    parser.add_argument("--gather-warps", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("tiles.json"))
    args = parser.parse_args()
    n_bytes = args.bits // 8
    words = random_word_major(args.n_items, n_bytes, "cuda", seed=0)
    rows = []
    for batch in args.batches:
        queries = random_codes(batch, n_bytes, seed=batch + 1)
        popcount = Tiles(16, 128, 4, mma=False)
        reference = TritonBackend.from_word_major(words, n_bytes, tiles=popcount).search(queries, args.k)
        if args.gather_entries:  # the scan's default tiles; the gather kernel's shape varies
            shapes = [("gather", entries, 0, warps) for entries in args.gather_entries for warps in args.gather_warps]
        else:
            shapes = list(itertools.product(args.kernels, args.block_q, args.block_n, args.warps))
        for kernel, block_q, block_n, warps in shapes:
            if kernel == "gather":
                triton_backend.GATHER_WARPS = warps
                # exactly this many entries per program, not the length-based choice the backend makes by default
                triton_backend.gather_entries = lambda room, sms, entries=block_q: entries
                backend = TritonBackend.from_word_major(words, n_bytes)
            else:
                tiles = Tiles(block_q, block_n, warps, mma=kernel == "mma")
                backend = TritonBackend.from_word_major(words, n_bytes, tiles=tiles)
            ms, runs, found = timed(partial(backend.search, queries, args.k), args.repeats, 2.0)
            # Tiles that do not fit the GPU's shared memory at this width give way to smaller ones (scan_tiles).
            ran = backend._scan_tiles(batch)[:1] if kernel == "mma" else []
            agrees = bool((found.ids == reference.ids).all() and (found.distances == reference.distances).all())
            row = {"n_items": args.n_items, "code_bits": args.bits, "batch": batch, "k": args.k, "kernel": kernel,
                   "block_q": block_q, "block_n": block_n, "warps": warps, "median_ms": round(ms, 3), "runs": runs,
                   "agrees": agrees, "device": device_name(), "commit": commit(),
                   "scan_ran": f"{ran[0].block_q}x{ran[0].block_n}" if ran else None}  # fmt: skip
            if args.profile:
                row["phases_ms"] = {phase: round(ms, 3) for phase, ms in backend.profile(queries, args.k).items()}
            if kernel == "gather":  # BLOCK_Q holds the entries per program; the gather's own GPU time beside
                row["gather_ms"] = kernel_times(partial(backend.search, queries, args.k)).get("_gather_kernel")
            print(json.dumps(row), flush=True)
            rows.append(row)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    header = (
        "batch",
        "kernel",
        "BLOCK_Q (gather: entries)",
        "BLOCK_N",
        "warps",
        "ran",
        "median ms",
        "gather ms",
        "agrees",
    )
    table = [
        (row["batch"], row["kernel"], row["block_q"], row["block_n"], row["warps"], row["scan_ran"] or "—",
         f"{row['median_ms']:.2f}", row.get("gather_ms", "—"), row["agrees"])
        for row in sorted(rows, key=lambda r: (r["batch"], r["median_ms"]))
    ]  # fmt: skip
    print(markdown_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
