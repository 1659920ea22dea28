#!/usr/bin/env bash
# #8 on a lent multi-GPU machine: GPU tests (sharded retrieval, NCCL training), then python -m benchmarks.scaling runs.
#
# Runs on the device machine from the repo root, with .whl/ (wheels the image lacks), .gpu-kit/ (faiss-gpu,
# ../shared/tools/faiss-gpu-device) and .carry/data/gowalla carried. Results under $OUT. Each argument is one
# scaling.py run's options (all append to $OUT/scaling.json); SKIP_TESTS=1 skips the tests:
#   bash tools/device/scaling.sh "--gpus 1 2 --skip-retrieval" "--gpus 1 2 --skip-train --batches 64 1024"
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/logs"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $(ls .whl/*.whl | grep -v faiss)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site_all .whl/*.whl
export RECSYS_COMMIT=${RECSYS_COMMIT:-unknown} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
nvidia-smi topo -m >"$OUT/topology.txt" 2>&1 || true
status=0
if [ -z "${SKIP_TESTS:-}" ]; then
  PYTHONPATH="/tmp/site:$PWD" timeout 300 python3 tools/device/gpu_index_tests.py -k retrieval \
      >"$OUT/gpu_index_tests.log" 2>&1 || status=$?
  tail -n 3 "$OUT/gpu_index_tests.log"
  PYTHONPATH="/tmp/site_all:$PWD" timeout 300 python3 -m pytest -p no:cacheprovider -v -m gpu \
      tests/trainer/test_distributed.py tests/trainer/test_step_graph.py >"$OUT/gpu_train_tests.log" 2>&1 || status=$?
  tail -n 3 "$OUT/gpu_train_tests.log"
fi
export PYTHONPATH="/tmp/site_all:$PWD"
for options in "$@"; do
  # shellcheck disable=SC2086
  python3 -m benchmarks.scaling --data-dir .carry/data --logs "$OUT/logs" --out "$OUT/scaling.json" \
      --plot "$OUT/scaling.png" $options || status=$?
done
exit $status
