# Sourced by the tools/device/*.sh scripts on a lent GPU machine (repo root): install the carried wheels (.whl/) into
# /tmp/site, put them and the repo on PYTHONPATH, make $OUT, record the device in $OUT/device.txt.
# No .git travels to the device: pass the revision in, e.g. RECSYS_COMMIT=$(git rev-parse --short HEAD).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
export RECSYS_COMMIT=${RECSYS_COMMIT:-unknown}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
# 10M training is estimated at 60–70 GB (docs/benchmarks/industrial.md): on a card under 100 GiB the hashed decoder
# is decoded in chunks, about 10 GB less. Prints the recsys-train options for this card (nothing on a larger one).
small_card_train_options() {
  local mib
  mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1)
  if [ "${mib:-0}" -lt 102400 ]; then echo "--decode-chunk 4194304"; fi
}
