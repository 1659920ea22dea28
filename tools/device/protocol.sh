#!/usr/bin/env bash
# Run benchmarks.quality (the #3 protocol: fp first, quantized methods warm-started from it) on a lent GPU.
#
# Runs on the device machine from the repo root. Needs, carried with the call:
#   .whl/         wheels the device image lacks (faiss-cpu, pydantic and its deps, redis)
#   .carry/data/  the dataset folders (copies of ../shared/data/gowalla, ../shared/data/yelp2018)
# Arguments go to quality.py, e.g.: --datasets gowalla --parallel 5 --extra "--max-minutes 2.5"
# Records: $OUT/quality.json, run logs: $OUT/logs/, table: stdout.
set -euo pipefail
source tools/device/setup.sh
mkdir -p "$OUT/logs"
status=0
python3 -m benchmarks.quality --data-dir .carry/data --out "$OUT/quality.json" --logs "$OUT/logs" \
    --bundle-root /tmp/quality-bundles "$@" || status=$?
for f in "$OUT"/logs/*.log; do
  grep -h '"event": "valid"\|"event": "lr"\|early stop\|time budget\|refit on' "$f" | tail -n 4 | cut -c1-200 | sed "s|^|$(basename "$f"): |"
done
exit $status
