#!/usr/bin/env bash
# Install everything the project needs on a fresh Debian/Ubuntu machine with Python >= 3.11:
# Debian's redis-server, wrk, docker-compose, docker.io and debootstrap (and python3-venv if missing), then a virtualenv
# with the project and its extras.
# Idempotent: a second run only reinstalls when pyproject.toml changed.
#
#   PYTHON      interpreter to build the venv from (default python3)
#   VENV        where the venv goes (default .venv)
#   TORCH_SPEC  how to install torch first (default torch==2.13.0; a plain `torch` pulls a CUDA build)
#   EXTRAS      project extras to install (default dev: cpu FAISS, training, locust, test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS:-dev}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server (Debian package)"
  apt_install redis-server
fi
if ! command -v wrk >/dev/null 2>&1; then
  # The serving benchmark's low-overhead load generator (benchmarks/serving.py --generator wrk).
  echo "setup: installing wrk (Debian package, for the serving benchmark)"
  apt_install wrk || echo "setup: wrk not installable here; benchmarks/serving.py --generator wrk will say so" >&2
fi
if ! command -v docker-compose >/dev/null 2>&1; then
  # Validates the compose files (`docker-compose config -q`) and runs the stack in the stack test.
  echo "setup: installing docker-compose (Debian package, to validate the compose files)"
  apt_install docker-compose || echo "setup: docker-compose not installable here; the compose checks will be skipped" >&2
fi
if ! command -v dockerd >/dev/null 2>&1; then
  # A Docker engine for the test that builds the images and runs the compose stack (pytest -m docker): Debian's
  # docker.io, whose client builds with BuildKit (secrets, cache mounts) without the buildx plugin.
  echo "setup: installing docker.io (Debian package, for the compose stack test)"
  apt_install docker.io || echo "setup: docker.io not installable here; the compose stack test will be skipped" >&2
fi
if ! command -v debootstrap >/dev/null 2>&1; then
  # The stack test makes its base images from Debian's packages, since no registry is reached.
  echo "setup: installing debootstrap (Debian package, for the compose stack test's base images)"
  apt_install debootstrap || echo "setup: debootstrap not installable here; the compose stack test will fail" >&2
fi
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "setup: installing python3-venv"
  apt_install python3-venv
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: Python >= 3.11 is required, $PYTHON is $("$PYTHON" -V 2>&1)" >&2
  exit 1
}

stamp="$VENV/.binrec-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $EXTRAS $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup: creating $VENV and installing the project (first run takes a few minutes)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
echo "$want" >"$stamp"
