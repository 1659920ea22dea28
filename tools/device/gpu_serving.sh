#!/usr/bin/env bash
# Issue #23 on a lent H200 in one call: benchmarks.gpu_serving at catalogue scale, then the GPU served-path test
# (10M items × 256-bit codes and 10M × float32 d=64, 1M users in Redis; triton, faiss-gpu, float on the GPU, the
# Gowalla hq bundle; 1–16 uvicorn workers). Everything lands in $OUT: gpu_serving.json and .png, servers.log,
# metrics.txt (the last /metrics of the main phase), pyspy_worker.txt and pyspy_search.txt (py-spy of the busiest worker
# and of the search process), device.txt, run.log.
#
# Runs on the device machine from the repo root. Needs, carried with the call (tools/device/gpu_serving_carry.sh
# fetches them here):
#   .whl/                wheels the image lacks (the service's: fastapi, uvicorn, httptools, ...; py-spy)
#   .carry/debs/         Debian's redis-server and wrk with their libraries, unpacked under /tmp/debs (never /)
#   .carry/gowalla_hq/   the Gowalla hq bundle of the CPU serving figures, without its cold-start arrays
#   .gpu-kit/            ../shared/tools/faiss-gpu-device (faiss-gpu and float rows are skipped without it)
# DESIGNS (default "process") says how each measured server holds the index: "process" (RECSYS_SEARCH_PROCESS: one
# search process owns the GPU index and answers every worker), "own" (an index and a GPU context in every worker),
# "own-mps" (the same under CUDA MPS, which the benchmark starts); several, e.g. DESIGNS="process own-mps", are each
# measured in the main phase.
# Set RECSYS_COMMIT to the commit measured (no .git travels). GPU_SERVING_ARGS adds or overrides options of
# benchmarks.gpu_serving (e.g. "--workers 4 --batch-max-wait-ms 0.5"). BUDGET_S (default 540) is the whole
# script's wall-clock budget: the benchmark is given what the set-up leaves of it less TEST_S (default 75) for the
# test, and is interrupted (SIGINT, which writes what was measured) if it runs past that.
set -uo pipefail
STARTED=$(date +%s)
BUDGET_S=${BUDGET_S:-540}
TEST_S=${TEST_S:-75}  # kept for the GPU test after the benchmark
source tools/device/setup.sh || echo "tools/device/setup.sh: its last step failed (above); going on"
exec > >(tee -a "$OUT/run.log") 2>&1

source tools/device/carried_tools.sh || exit 1
ldd --version | head -n 1

KIT=()
[ -d .gpu-kit ] && KIT=(--faiss-gpu-kit .gpu-kit)
GOWALLA=()
[ -d .carry/gowalla_hq ] && GOWALLA=(--gowalla .carry/gowalla_hq)
read -r -a DESIGN_LIST <<< "${DESIGNS:-process}"

LEFT=$(( BUDGET_S - ($(date +%s) - STARTED) ))
echo "set-up took $(( BUDGET_S - LEFT )) s; the benchmark may use $(( LEFT - TEST_S )) s, the GPU test $TEST_S s"
# shellcheck disable=SC2086  # GPU_SERVING_ARGS is a list of options
timeout -s INT -k 10 $(( LEFT - TEST_S - 10 )) python3 -m benchmarks.gpu_serving "${KIT[@]}" "${GOWALLA[@]}" --designs "${DESIGN_LIST[@]}" \
  --budget-s $(( LEFT - TEST_S - 35 )) --work /tmp/gpu_serving --out "$OUT/gpu_serving.json" ${GPU_SERVING_ARGS:-}
echo "benchmark exit $? after $(( $(date +%s) - STARTED )) s"

# The served path on the GPU answers as the CPU does (tests/service/test_gpu_serving.py), in what is left.
LEFT=$(( BUDGET_S - ($(date +%s) - STARTED) - 5 ))
if [ "$LEFT" -ge 30 ]; then
  timeout -k 5 "$LEFT" python3 -m pytest -q -p no:cacheprovider -m gpu tests/service/test_gpu_serving.py 2>&1 | tail -n 5
else
  echo "GPU test skipped: ${LEFT} s left"
fi
echo "done after $(( $(date +%s) - STARTED )) s"
