# Sourced by the tools/device/*.sh scripts on a lent GPU machine (repo root): install the carried wheels (.whl/) into
# /tmp/site, put them and the repo on PYTHONPATH, make $OUT, record the device in $OUT/device.txt.
# No .git travels to the device: pass the revision in, e.g. RECSYS_COMMIT=$(git rev-parse --short HEAD).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export RECSYS_COMMIT=${RECSYS_COMMIT:-unknown}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
