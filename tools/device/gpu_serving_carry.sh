#!/usr/bin/env bash
# Fetch here what tools/device/gpu_serving.sh needs on the lent GPU machine, into git-ignored folders that the
# call carries (about 55 MB, within the 64 MiB a call may carry):
#   .whl/               cp312 wheels of the service's packages the device image lacks (FastAPI, uvicorn with uvloop and
#                       httptools, pydantic, redis, faiss-cpu, ...) and py-spy
#   .carry/debs/        Debian bookworm's redis-server, wrk and the libraries they need (glibc >= 2.34)
#   .carry/gowalla_hq/  var/serving/binary (the Gowalla hq bundle of BENCHMARKS.md #20) without cold_start.npz, if
#                       that bundle was trained here (the gowalla peer is optional)
#   .gpu-kit/           ../shared/tools/faiss-gpu-device
# Run from the repo root after `bash scripts/setup.sh` (and the #20 training command, for var/serving/binary).
set -euo pipefail
for ignored in /.whl/ /.carry/ /.gpu-kit/; do
  grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
mkdir -p .whl .carry/debs .gpu-kit
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .whl \
  fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 httptools==0.9.0 anyio==4.16.0 annotated-doc==0.0.7 \
  opentelemetry-api==1.45.2 prometheus-client==0.26.0 typing-extensions==4.16.0 py-spy==0.4.3 uvloop==0.23.0 \
  faiss-cpu==1.15.1 pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4 \
  redis==8.2.0 annotated-types==0.8.0 typing-inspection==0.4.5
(cd .carry/debs && apt-get download redis-server redis-tools wrk libjemalloc2 liblzf1 libluajit-5.1-2 libatomic1 \
  libssl3 libsystemd0 libcap2 libgcrypt20 liblzma5 libzstd1 liblz4-1 libgpg-error0)
cp ../shared/tools/faiss-gpu-device/* .gpu-kit/
if [ ! -d .carry/gowalla_hq ] && [ -d var/serving/binary ]; then  # optional: the gowalla peer
  .venv/bin/python -m benchmarks.gpu_catalogue --strip-cold-start var/serving/binary --root .carry/gowalla_hq
fi
du -sh .whl .carry/* .gpu-kit
