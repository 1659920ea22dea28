#!/usr/bin/env bash
# The whole test suite from a fresh machine: install, lint, type-check, then pytest (which starts its own
# redis-server and uvicorn). Fails when any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest "$@"
