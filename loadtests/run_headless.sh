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
#   LOAD_OUT            report directory (default: var/loadtest): locust_*.csv, report.html and
#                       latency.png (p50/p95/p99 against the request rate, when matplotlib is installed)
#   PYTHON              interpreter for the plot (default: the one next to $LOCUST, else python3)
#   RECSYS_BUNDLE_ROOT  bundle (root) whose user ids are requested; see loadtests/locustfile.py
#   RECSYS_EVENTS_API_KEY  the service's POST /events key: known users then also buy and ask again
#
# Exits non-zero when any request failed, so it can gate CI.
set -euo pipefail

usage() { sed -n '2,17s/^# \{0,1\}//p' "$0"; }
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

status=0
"$locust" \
    --locustfile "$locustfile" \
    --host "$host" \
    --headless \
    --only-summary \
    --users "$users" \
    --spawn-rate "$spawn_rate" \
    --run-time "$run_time" \
    --stop-timeout 5 \
    --csv "$out/locust" \
    --csv-full-history \
    --html "$out/report.html" \
    --exit-code-on-error 1 || status=$?

python=${PYTHON:-$(dirname "$(command -v "$locust")")/python}
[[ -x $python ]] || python=python3
"$python" "$(dirname "$locustfile")/plot_latency.py" "$out/locust_stats_history.csv" "$out/latency.png" || true
exit "$status"
