#!/usr/bin/env bash
# Train several methods / settings on Gowalla side by side on one lent GPU and collect the records.
#
# Runs on the device machine from the repo root (see BENCHMARKS.md). Needs, carried with the call:
#   .whl/         wheels the device image lacks (faiss-cpu, pydantic and its deps)
#   .carry/data/  the dataset folder(s), e.g. a copy of ../shared/data/gowalla
# Each argument is one run: "NAME:recsys-train options", e.g. "fp_a:--method fp --lr 1e-3".
# Records go to $OUT/quality.json, logs to $OUT/NAME.log.
set -euo pipefail
source tools/device/setup.sh
DATASET=${DATASET:-gowalla}
pids=()
for spec in "$@"; do
  name=${spec%%:*}
  opts=${spec#*:}
  # shellcheck disable=SC2086
  ( start=$(date +%s); rc=0; python3 -m trainer.cli --dataset "$DATASET" --data-dir .carry/data \
      --bundle-root "/tmp/bundles/$name" --results-json "$OUT/quality_$name.json" $opts \
      >"$OUT/$name.log" 2>&1 || rc=$?; echo "$name: exit $rc, wall $(( $(date +%s) - start )) s"; exit $rc ) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
records = [r | {"run": p.stem.removeprefix("quality_")} for p in sorted(out.glob("quality_*.json")) for r in json.loads(p.read_text())]
(out / "quality.json").write_text(json.dumps(records, indent=2))
print(f"{'run':<10}{'method':<7}{'R@20':>8}{'N@20':>8}{'R@50':>8}{'epoch':>7}{'train s':>9}{'peak MB':>9}")
for r in records:
    print(f"{r['run']:<10}{r['method']:<7}{r['recall@20']:>8.4f}{r['ndcg@20']:>8.4f}{r['recall@50']:>8.4f}"
          f"{r['best_epoch']:>7}{r['train_seconds']:>9.1f}{r['peak_gpu_mb']:>9.0f}")
PY
for f in "$OUT"/*.log; do grep -h '"event": "valid"' "$f" | tail -n 2 | sed "s|^|$(basename "$f"): |" | cut -c1-220; done
exit $status
