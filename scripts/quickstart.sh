#!/usr/bin/env bash
# The main job, end to end on one machine: install, train on the embedded synthetic dataset, export the
# bundle, build the FAISS index, start Redis and the service, ask /recommend once, stop what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
WORK=${WORK:-var/quickstart}
BUNDLES="$WORK/bundles"
mkdir -p "$WORK"

echo "== 1/4 train (synthetic data, 1-bit codes) and export a bundle"
"$VENV/bin/recsys-train" --dataset synthetic --method ste --epochs 60 --lr 5e-3 --bundle-root "$BUNDLES"

echo "== 2/4 build the FAISS binary index into the bundle"
"$VENV/bin/recsys-index" build --bundle-root "$BUNDLES"

free_port() { "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port)
API_PORT=$(free_port)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== 3/4 start redis-server on :$REDIS_PORT and the service on :$API_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
pids+=($!)
RECSYS_BUNDLE_ROOT="$BUNDLES" RECSYS_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" RECSYS_PORT="$API_PORT" \
  "$VENV/bin/recsys-serve" >"$WORK/service.log" 2>&1 &
pids+=($!)

echo "== 4/4 GET /recommend"
"$VENV/bin/python" - "$API_PORT" "$BUNDLES" <<'PY'
import json, pathlib, sys, time, urllib.error, urllib.request

port, root = sys.argv[1], pathlib.Path(sys.argv[2])
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 60
while True:
    try:
        ready = json.load(urllib.request.urlopen(f"{base}/readyz", timeout=2))
        break
    except (urllib.error.URLError, ConnectionError):
        if time.monotonic() > deadline:
            sys.exit("quickstart: the service did not become ready; see var/quickstart/service.log")
        time.sleep(0.3)
user = (root / (root / "CURRENT").read_text().strip() / "user_ids.txt").read_text().split("\n", 1)[0]
url = f"{base}/recommend?user_id={user}&k=10"
print("readyz:", json.dumps(ready))
print("GET", url)
print(json.dumps(json.load(urllib.request.urlopen(url, timeout=5)), indent=2))
PY
