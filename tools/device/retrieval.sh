#!/usr/bin/env bash
# The #4 retrieval measurements on a lent GPU in one call: GPU correctness tests, then the Triton rows at 1M and 10M
# (64/256/576-bit, batch 1/8/64/1024, floors, per-phase times) and 100M (256-bit), then FAISS GPU binary and float
# flat peers at 1M and 10M when the faiss-gpu kit is carried.
#
# Runs on the device machine from the repo root. Needs, carried with the call:
#   .whl/       wheels the device image lacks (faiss-cpu, pydantic and its deps, redis)
#   .gpu-kit/   optional: ../shared/tools/faiss-gpu-device (the FAISS rows are skipped without it)
# Set RECSYS_COMMIT to the commit measured (no .git travels). Records: $OUT/r10m.json, r100m.json, peers.json.
#   bash tools/device/retrieval.sh            # everything (about 5 minutes on an H200)
#   SKIP_PEERS=1 bash tools/device/retrieval.sh
set -euo pipefail
source tools/device/setup.sh
rows() { grep -E '^\| ' | grep -v floor-bytes || true; }
python3 -m pytest -q -m gpu tests/index/retrieval/test_backends.py -p no:cacheprovider 2>&1 | tail -n 3
python3 -m benchmarks.retrieval --backends triton --shards 1 --n-items 1000000 10000000 --bits 64 256 576 \
    --batches 1 8 64 1024 --floors --profile --repeats 7 --budget 1.0 --out "$OUT/r10m.json" | rows
python3 -m benchmarks.retrieval --backends triton --shards 1 --n-items 100000000 --bits 256 \
    --batches 1 64 1024 --floors --profile --repeats 3 --budget 2.0 --out "$OUT/r100m.json" | rows
if [ -z "${SKIP_PEERS:-}" ] && [ -d .gpu-kit ]; then
  python3 -m benchmarks.retrieval --faiss-gpu-kit .gpu-kit --backends triton faiss-gpu --peers float-gpu --shards 1 \
      --n-items 1000000 10000000 --bits 64 256 576 --batches 1 64 1024 --repeats 3 --budget 1.0 \
      --out "$OUT/peers.json" | rows
fi
