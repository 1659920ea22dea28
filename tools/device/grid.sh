#!/usr/bin/env bash
# Run benchmarks.quality on a lent GPU machine in the background, across as many device calls as it needs.
#
#   bash tools/device/grid.sh WAIT_SECONDS [quality.py options …]
#
# The first call starts the grid in its own process session (it outlives the call while the machine is held)
# and waits up to WAIT_SECONDS; a later call with the same options only waits again. Every call copies what
# is there so far to $OUT: grid.tgz (records, the log, every run's log) and the PNG. Exit 0 while it runs,
# then the grid's exit code. Needs, carried with the call: .whl/ (wheels the image lacks) and .carry/data/.
set -euo pipefail
source tools/device/setup.sh
wait_seconds=$1
shift
work=/tmp/grid
if [ ! -f "$work/started" ]; then
  mkdir -p "$work"
  touch "$work/started"
  printf -v options '%q ' "$@"
  setsid nohup bash -c "python3 -m benchmarks.quality --data-dir .carry/data --logs $work/logs \
    --bundle-root $work/bundles --out $work/quality.json --plot $work/quality_recall_vs_bytes.png $options; \
    echo \$? >$work/exit" >"$work/grid.log" 2>&1 </dev/null &
fi
deadline=$((SECONDS + wait_seconds))
while [ ! -f "$work/exit" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 5; done
tail -n 40 "$work/grid.log"
for log in "$work"/logs/*.log; do
  [ -f "$log" ] && grep -h '"event": "valid"' "$log" | tail -n 1 | cut -c1-160 | sed "s|^|$(basename "$log"): |"
done
(cd "$work" && tar czf "$OUT/grid.tgz" --ignore-failed-read grid.log logs quality.json 2>/dev/null || true)
cp "$work"/*.png "$OUT"/ 2>/dev/null || true
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
if [ -f "$work/exit" ]; then exit "$(cat "$work/exit")"; fi
echo "grid still running"
