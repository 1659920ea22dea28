#!/usr/bin/env bash
# Issue #33's serving stages on the bundle tools/device/industrial.sh trained (/tmp/industrial/N), with the card to
# themselves, in the background across as many device calls of one lease as they need:
#   1. at once, the GPU warm-up tests (tests/index/test_warm.py), which need no card of their own;
#   2. once every file of AFTER exists (what other jobs write when they are done with the GPU, e.g. industrial.sh's
#      /tmp/industrial/exit; none: at once), the serve stage once per warm-up reach in WARM_FETCHES
#      (RECSYS_WARM_MAX_FETCH; default "0 256": the bundle's reach, the service's default, against the old 256):
#      time to ready, memory, and 2,000 requests whose slowest 1 % are kept with their users' seen counts;
#   3. the capacity stage (wrk, 8 workers and the search process; CAPACITY_OPTIONS, default GETs at 16 to 256
#      connections) at the warm-up reach whose serve p99 was lowest; CAPACITY=0 leaves it out.
# SERVE_NOTE (default "lent GPU, alone") is recorded with each row: say so when something else shares the card.
#
#   bash tools/device/industrial_serving.sh WAIT_SECONDS
#
# N is SCALE (default 10000000). Records go to the same industrial_scale.json as industrial.sh's, copied to $OUT with
# the stages' logs. Exit 0 while it runs, then its exit code. Needs .whl/ and .carry/debs/, as industrial.sh does.
set -euo pipefail
source tools/device/setup.sh
source tools/device/carried_tools.sh
wait_seconds=$1
n=${SCALE:-10000000}
work=/tmp/industrial
scale="python3 -m benchmarks.industrial_scale --users $n --items $n --device cuda --work-dir $work/$n --out $work/industrial_scale.json"
if [ ! -f "$work/serving_started" ]; then
  touch "$work/serving_started"
  setsid nohup bash -c "status=0
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/index/test_warm.py || status=\$?
    for file in ${AFTER:-}; do while [ ! -f \$file ]; do sleep 5; done; done
    echo \"card free at \$(date +%T)\"
    if [ ! -f $work/$n/bundles/CURRENT ]; then  # the training failed: nothing to serve, no rows to record
      echo \"no bundle published under $work/$n/bundles: the serving stages need industrial.sh's train stage\"
      echo 1 >$work/serving_exit; exit 1
    fi
    for fetch in ${WARM_FETCHES:-0 256}; do
      $scale --stages serve --note \"${SERVE_NOTE:-lent GPU, alone}; RECSYS_WARM_MAX_FETCH \$fetch\" \
        --serve-options \"--requests 2000 --concurrency 16 --ready-timeout 300 --warm-max-fetch \$fetch\" || status=\$?
    done
    if [ ${CAPACITY:-1} != 0 ]; then
      best=\$(python3 -c \"import json; rows = [r for r in json.load(open('$work/industrial_scale.json')) \\
        if r['stage'] == 'serve' and r.get('p99_ms') and 'warm_max_fetch' in r]; \\
        print(min(rows, key=lambda r: r['p99_ms'])['warm_max_fetch'] if rows else 0)\")
      echo \"capacity at RECSYS_WARM_MAX_FETCH \$best\"
      $scale --stages capacity --note \"${SERVE_NOTE:-lent GPU, alone}; RECSYS_WARM_MAX_FETCH \$best, the lower serve p99\" \
        --capacity-options \"${CAPACITY_OPTIONS:---connections 16 64 128 256 --scale-workers --budget-s 260} --warm-max-fetch \$best\" \
        || status=\$?
    fi
    echo \$status >$work/serving_exit" >"$work/serving.log" 2>&1 </dev/null &
fi
deadline=$((SECONDS + wait_seconds))
while [ ! -f "$work/serving_exit" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 5; done
{ grep -v "^\s*$" "$work/serving.log" || true; } | tail -n 30 | cut -c1-600
cp "$work/industrial_scale.json" "$OUT/" 2>/dev/null || true
(cd "$work" && tar czf "$OUT/industrial_serving_logs.tgz" --ignore-failed-read serving.log ./*/serve*.log \
  ./*/capacity.* ./*/serving/*.log 2>/dev/null || true)
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
if [ -f "$work/serving_exit" ]; then exit "$(cat "$work/serving_exit")"; fi
echo "still running"
