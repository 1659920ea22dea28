#!/usr/bin/env bash
# Issue #33 in a lease too short for the whole pipeline (tools/device/industrial.sh): at N users × N items, the
# propagation's share of the device's bandwidth, then the user's commands up to the first minutes of training, with
# the hashed input and 2-bit codes (recsys-generate, then recsys-train stopped by TRAIN_TIMEOUT before or during its
# export). What it measures comes back under $OUT: propagation_bandwidth.json; train.log, whose debug lines give
# each epoch's time and whose "valid" lines the validation curve; gpu_memory_mib.txt, nvidia-smi's memory in use
# every half second; generate.log with the file's size and time.
#
#   N=10000000 MINUTES=1.5 TRAIN_TIMEOUT=330 RECSYS_COMMIT=<sha> bash tools/device/train_probe.sh
#
# A card under 100 GiB decodes the hashed input in chunks (small_card_train_options, setup.sh), as industrial.sh does.
# Needs, carried with the call: .whl/ (the service's wheels; the trainer needs none beyond the machine's torch).
set -euo pipefail
source tools/device/setup.sh
n=${N:-10000000}
work=${PROBE_WORK:-/tmp/probe}
mkdir -p "$work"
python3 -m benchmarks.propagation_bandwidth --users "$n" --items "$n" --device "${DEVICE:-cuda}" --out "$OUT/propagation_bandwidth.json"
python3 -m trainer.data.generate --users "$n" --items "$n" --interactions-per-user 20.1 --out "$work/synthetic.csv" \
  | tee "$OUT/generate.log"
read -ra card_options <<<"$(small_card_train_options)"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 >"$OUT/gpu_memory_mib.txt" &
sampler=$!
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
status=0
timeout "${TRAIN_TIMEOUT:-330}" python3 -m trainer.cli --dataset "$work/synthetic.csv" --input-layer hash --method hq \
  --bits 2 --dim 64 --device "${DEVICE:-cuda}" --batch-size "${BATCH:-1048576}" --lr 5e-3 --eval-users 10000 --eval-every 1 --epochs 1000 \
  --patience 20 --max-minutes "${MINUTES:-1.5}" --bundle-root "$work/bundles" --results-json "$OUT/train.json" \
  --log-level debug "${card_options[@]}" >"$OUT/train.log" 2>&1 || status=$?
kill "$sampler" 2>/dev/null || true
echo "recsys-train exit $status (124: stopped by TRAIN_TIMEOUT)"
grep -v 'it/s\]\|s/epoch\]\|epoch/s\]' "$OUT/train.log" | grep -i 'loaded\|hash\|epoch\|valid\|stopping\|error' | tail -n 25 | cut -c1-300
echo "peak GPU memory in use: $(sort -n "$OUT/gpu_memory_mib.txt" | tail -n 1) MiB"
