#!/usr/bin/env bash
# The one-command recipe (`recsys-train --teacher auto`) for every code width of issue #32, on a lent GPU, in the
# background across as many device calls as it needs (the machine is kept between calls of one lease).
#
#   bash tools/device/recipe.sh WAIT_SECONDS
#
# Per dataset, all started at once and sharing one --stage-cache, so each fp stage (d = 64, 128, 256) is trained
# once, by whichever run claims it first (each run trains its stages side by side), and waited for by the others:
#   hq2_d64    16 B: fp d=64 warm start, fp d=128 teacher, 2-bit student. Its wall time is the recipe's on a GPU
#              shared with the other runs (the caps are wall minutes; the refits are slower than alone);
#   hq1u2_d128 16 B the other way: 1-bit items at d=128, 2-bit users (fp d=128 and d=256);
#   hq2_d128   32 B: fp d=128 and d=256;
#   hq1u2_d64  8 B: 1-bit items at d=64, 2-bit users (fp d=64 and d=128);
#   hq2_d32    8 B the other way: 2-bit codes at d=32 (fp d=32 and d=64); not in the default RUNS.
# STAGES=auto (the default) trains the stages as `recsys-train --teacher auto` does: a BPR warm start and a teacher
# per --teacher-options candidate (softmax at two weights, BPR), the best on validation distilling. STAGES=mixed is
# one softmax teacher at each dataset's measured weight; STAGES=bpr a BPR teacher (#19's 16-byte students kept 97.9 %
# of a BPR fp); STAGES=softmax the #32 full-precision recipe for both stages (docs/experiments/fp_quality.md: its
# students fell short).
# The first call starts the runs in their own process session; every call waits up to WAIT_SECONDS and copies what
# is there to $OUT/recipe.tgz.
# Needs, carried with the call: .whl/ and .carry/data/{gowalla,yelp2018}.
set -euo pipefail
source tools/device/setup.sh
wait_seconds=$1
work=${RECIPE_WORK:-/tmp/recipe}
PROTOCOL=${PROTOCOL:-"--epochs 1000 --eval-every 5 --patience 6 --lr-decay-patience 3 --batch-size 8192 --lr 5e-3 --refit"}
STUDENT_CAP="--max-minutes ${STUDENT_MINUTES:-3.5}"
SOFTMAX="--loss softmax --softmax-negatives 0 --temperature 0.2 --lr 1e-3 --max-minutes ${STAGE_MINUTES:-2.5}"
# The warm start as `recsys-train --teacher auto` trains it: the run's own (BPR) options, as in #19. An empty
# teacher entry passes no --teacher-options: the product's default teachers.
BPR_STAGE="--max-minutes ${STAGE_MINUTES:-2.5}"
declare -A STAGE_OPTIONS=([gowalla]="$BPR_STAGE" [yelp2018]="$BPR_STAGE" [ml-100k]="$BPR_STAGE")
declare -A TEACHER_OPTIONS=([gowalla]="" [yelp2018]="" [ml-100k]="")
# The #32 fp recipe (sampled softmax, strong L2) per dataset.
declare -A SOFTMAX_FP=([gowalla]="$SOFTMAX --reg 2e-1" [yelp2018]="$SOFTMAX --reg 5e-2" [ml-100k]="$SOFTMAX --reg 5e-2")
case "${STAGES:-auto}" in
  auto) ;;
  bpr) for d in "${!TEACHER_OPTIONS[@]}"; do TEACHER_OPTIONS[$d]="--loss bpr"; done ;;
  softmax) for d in "${!SOFTMAX_FP[@]}"; do  # both stages softmax: students kept 68-82 %
    STAGE_OPTIONS[$d]=${SOFTMAX_FP[$d]}; TEACHER_OPTIONS[$d]=${SOFTMAX_FP[$d]}; done ;;
  mixed) for d in "${!SOFTMAX_FP[@]}"; do TEACHER_OPTIONS[$d]=${SOFTMAX_FP[$d]}; done ;;
  *) echo "recipe.sh: STAGES must be auto, bpr, softmax or mixed, got ${STAGES}" >&2; exit 2 ;;
esac
DATASETS=${DATASETS:-gowalla yelp2018}
RUNS=${RUNS:-hq2_d64 hq1u2_d128 hq2_d128 hq1u2_d64}  # which of the runs above
DATA_DIR=${DATA_DIR:-.carry/data}

run() {  # dataset name options...: one recipe run, its log and record under $work
  local dataset=$1 name=$2
  shift 2
  local start rc=0
  start=$(date +%s)
  # shellcheck disable=SC2086
  python3 -m trainer.cli --dataset "$dataset" --data-dir "$DATA_DIR" --bundle-root "$work/bundles/${dataset}_$name" \
    --results-json "$work/records/${dataset}_$name.json" $PROTOCOL $STUDENT_CAP --teacher auto \
    --stage-cache "$work/stages" --stage-options "${STAGE_OPTIONS[$dataset]}" \
    ${TEACHER_OPTIONS[$dataset]:+--teacher-options "${TEACHER_OPTIONS[$dataset]}"} "$@" >"$work/logs/${dataset}_$name.log" 2>&1 || rc=$?
  echo "$dataset $name exit $rc wall $(($(date +%s) - start)) s" >>"$work/walls.txt"
}

if [ ! -f "$work/started" ]; then
  mkdir -p "$work/logs" "$work/records" "$work/stages"
  touch "$work/started"
  export OMP_NUM_THREADS=2
  for dataset in $DATASETS; do
    setsid nohup bash -c "$(declare -f run); $(declare -p PROTOCOL STUDENT_CAP STAGE_OPTIONS TEACHER_OPTIONS work DATA_DIR RUNS);
      declare -A OPTIONS=([hq2_d64]='--bits 2 --dim 64' [hq1u2_d128]='--bits 1 --user-bits 2 --dim 128'
        [hq2_d128]='--bits 2 --dim 128' [hq1u2_d64]='--bits 1 --user-bits 2 --dim 64' [hq2_d32]='--bits 2 --dim 32')
      for name in \$RUNS; do run $dataset \$name --method hq \${OPTIONS[\$name]} & sleep 2; done
      wait; touch $work/done_$dataset" >"$work/logs/${dataset}_chain.log" 2>&1 </dev/null &
  done
fi
deadline=$((SECONDS + wait_seconds))
all_done() { local d; for d in $DATASETS; do [ -f "$work/done_$d" ] || return 1; done; }
while ! all_done && [ "$SECONDS" -lt "$deadline" ]; do sleep 5; done
cat "$work/walls.txt" 2>/dev/null || true
ls -la "$work/stages"
for log in "$work"/logs/*.log; do
  echo "== $(basename "$log"): $(grep -c '"event": "valid"' "$log" || true) validations"
  { grep -h 'stage\|refit\|stopping\|recall@20\|rror' "$log" || true; } | tail -n 6 | cut -c1-220
done
(cd "$work" && tar czf "$OUT/recipe.tgz" --ignore-failed-read logs records walls.txt 2>/dev/null || true)
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
if all_done; then echo "all done"; else echo "still running"; fi
