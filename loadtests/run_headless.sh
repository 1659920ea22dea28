#!/usr/bin/env bash
# Run the locust load test headless against HOST and keep its reports.
#
# usage: loadtests/run_headless.sh HOST [USERS] [SPAWN_RATE] [RUN_TIME]
#   HOST        base URL of the service, e.g. http://127.0.0.1:8000
#   USERS       simulated users (default 50)
#   SPAWN_RATE  users started per second (default 10)
#   RUN_TIME    test duration, e.g. 30s, 5m (default 1m)
#
# environment:
#   LOCUST              locust executable (default: locust; e.g. .venv/bin/locust)
#   LOAD_OUT            report directory (default: var/loadtest): locust_*.csv and report.html
#   RECSYS_BUNDLE_ROOT  bundle (root) whose user ids are requested; see loadtests/locustfile.py
#
# Exits non-zero when any request failed, so it can gate CI.
set -euo pipefail

usage() { sed -n '2,16s/^# \{0,1\}//p' "$0"; }
if [[ $# -ge 1 && ($1 == -h || $1 == --help) ]]; then
    usage
    exit 0
fi
if [[ $# -lt 1 || $# -gt 4 ]]; then
    usage >&2
    exit 2
fi

host=$1
users=${2:-50}
spawn_rate=${3:-10}
run_time=${4:-1m}
locust=${LOCUST:-locust}
out=${LOAD_OUT:-var/loadtest}
locustfile="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/locustfile.py"

mkdir -p "$out"
echo "locust: $users users (+$spawn_rate/s) for $run_time against $host; reports in $out" >&2

exec "$locust" \
    --locustfile "$locustfile" \
    --host "$host" \
    --headless \
    --only-summary \
    --users "$users" \
    --spawn-rate "$spawn_rate" \
    --run-time "$run_time" \
    --stop-timeout 5 \
    --csv "$out/locust" \
    --html "$out/report.html" \
    --exit-code-on-error 1
