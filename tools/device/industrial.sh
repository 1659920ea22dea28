#!/usr/bin/env bash
# Issue #33 on one lent GPU: benchmarks.industrial_scale (generate → load + split → train + export + publish → index
# build → serve → capacity, every stage the command a user types) at each scale of SCALES in turn, in the background
# across as many device calls of one lease as it needs. Before each scale, benchmarks.propagation_bandwidth times one
# propagation of that scale's graph against the device's copy bandwidth (about a minute at 10M; BANDWIDTH=0 skips it).
#
#   bash tools/device/industrial.sh WAIT_SECONDS
#
# SCALES (default "1000000:3 10000000:10"): users=items : minutes of training. INDUSTRIAL_ARGS adds options of
# benchmarks.industrial_scale (e.g. "--batch-size 2097152", or "--stages generate load train index" to leave the
# serving stages to tools/device/industrial_serving.sh once the card is free). TRAIN_AFTER names files the train stage
# waits for (what other jobs write once done with the GPU): generate and load run at once, on the host, but a 10M
# training needs the card's memory to itself (beside four #32 recipes it ran out of it). The first call starts the
# runs in their own process session; every call waits up to WAIT_SECONDS, then copies the records
# (industrial_scale.json) and each stage's log to $OUT. Exit 0 while it runs, then the runs' exit code. Set
# RECSYS_COMMIT (no .git travels). Needs, carried with the call: .whl/ (the service's wheels, faiss-cpu) and
# .carry/debs/ (redis-server and wrk: tools/device/gpu_serving_carry.sh). Nothing else: the data is generated there.
set -euo pipefail
source tools/device/setup.sh
source tools/device/carried_tools.sh
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}  # 10M: less reserved beside what is used
wait_seconds=$1
work=/tmp/industrial
# Unless INDUSTRIAL_ARGS gives --train-options, training takes this card's (small_card_train_options, setup.sh).
card_options=$(small_card_train_options)
if [[ ${INDUSTRIAL_ARGS:-} != *--train-options* ]] && [ -n "$card_options" ]; then
  INDUSTRIAL_ARGS="${INDUSTRIAL_ARGS:-} --train-options '$card_options'"
fi
if [ ! -f "$work/started" ]; then
  mkdir -p "$work"
  touch "$work/started"
  setsid nohup bash -c "status=0
    # The trainer's GPU-only tests first (a minute; GPU_TESTS=0 skips them): CUDA-graph steps (their trainings
    # propagate over 32-bit CSR indices on the GPU) and the memory they hand back, the layer mean's buffers. A
    # failure is reported, not fatal to the runs.
    if [ ${GPU_TESTS:-1} != 0 ]; then python3 -m pytest -q -m gpu -p no:cacheprovider tests/trainer/test_step_graph.py \
      tests/trainer/test_model.py >$work/gpu_tests.log 2>&1 || echo 'GPU tests failed'; fi
    for scale in ${SCALES:-1000000:3 10000000:10}; do
      n=\${scale%%:*}; minutes=\${scale#*:}
      if [ ${BANDWIDTH:-1} != 0 ]; then python3 -m benchmarks.propagation_bandwidth --users \$n --items \$n \
        --device cuda --out $work/propagation_bandwidth.json || status=\$?; fi
      python3 -m benchmarks.industrial_scale --users \$n --items \$n --device cuda --train-minutes \$minutes \
        --work-dir $work/\$n --out $work/industrial_scale.json --note 'lent GPU, one stage at a time' \
        ${TRAIN_AFTER:+--train-after $TRAIN_AFTER} ${INDUSTRIAL_ARGS:-} || { status=\$?
          # A stage failed after the bundle was published: how long loading it as a worker holds the interpreter
          # (uvicorn kills a worker that cannot answer its health check), whatever the failure was.
          if [ -f $work/\$n/bundles/CURRENT ]; then python3 -m benchmarks.load_stalls --bundle-root \
            $work/\$n/bundles --device gpu --out $work/\$n/load_stalls.json || true; fi; }
    done
    echo \$status >$work/exit" >"$work/run.log" 2>&1 </dev/null &
fi
deadline=$((SECONDS + wait_seconds))
while [ ! -f "$work/exit" ] && [ "$SECONDS" -lt "$deadline" ]; do sleep 5; done
grep -v '^\s*$' "$work/run.log" | grep -v 'it/s\]\|s/it\]' | tail -n 30 | cut -c1-400
for log in "$work"/*/train.log; do
  [ -f "$log" ] && { grep -h '"event": "valid"' "$log" || true; } | tail -n 3 | cut -c1-200 | sed "s|^|$log: |"
done
cp "$work/industrial_scale.json" "$work/propagation_bandwidth.json" "$OUT/" 2>/dev/null || true
[ -f "$work/gpu_tests.log" ] && tail -n 3 "$work/gpu_tests.log"
(cd "$work" && tar czf "$OUT/industrial_logs.tgz" --ignore-failed-read run.log gpu_tests.log ./*/*.log ./*/*.json ./*/serving/*.log \
  2>/dev/null || true)
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
free -g | head -n 2
if [ -f "$work/exit" ]; then exit "$(cat "$work/exit")"; fi
echo "still running"
