# Images of the recommender, built from one Dockerfile with BuildKit (Docker >= 20.10: `DOCKER_BUILDKIT=1 docker
# build`, or buildx):
#
#   docker build -t binrec-api .                        # default target: the service (faiss-cpu, no torch)
#   docker build -t binrec-api-numpy --build-arg FAISS= .  # the service without FAISS (numpy search backend)
#   docker build -t binrec-trainer --target trainer .   # trainer + indexer (CPU torch)
#   docker build -t binrec-load --target load .         # locust alone (the `load` extra)
#   docker build -t binrec-api-gpu --target api-gpu .   # the service on NVIDIA GPUs (CUDA torch, Triton, faiss-gpu)
#
# Everything the build reads from outside is named here, so that a build behind a proxy or an air gap changes
# arguments, not this file (docs/deployment.md, "Building the images"):
#
#   --build-arg PYTHON_IMAGE=...     a Python 3.11 image with `python -m venv` and ca-certificates
#   --build-arg CUDA_IMAGE=...       the GPU target's base (CUDA runtime libraries)
#   --build-arg PIP_INDEX_URL=...    the package index (a mirror)
#   --build-arg TORCH_INDEX_URL=...  where the trainer's CPU torch comes from ("" : PIP_INDEX_URL)
#   wheelhouse/                      wheels the index cannot serve, offered to every pip install (--find-links)
#   --secret id=ca_bundle,src=FILE   the CA bundle pip (and apt) trust, e.g. one holding a proxy's CA: mounted
#                                    into the RUN steps that download, never written to a layer
#
# No `# syntax=` line: it would pull a frontend image; BuildKit's built-in frontend reads every instruction here
# (so no heredocs). Builder stages install dependencies into /opt/venv and the project into /opt/project; the
# runtime stages copy only those two, so compilers, pip caches and sources stay out of the images. Dependencies are
# installed from pyproject.toml alone, before any code is copied: editing code rebuilds one small wheel and one
# small layer, not torch's.

ARG PYTHON_IMAGE=python:3.11-slim
# Ubuntu 24.04 ships Python 3.12; the CUDA runtime libraries come with the image, the toolkit does not.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04
ARG PIP_INDEX_URL=https://pypi.org/simple

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore


# --- requirements: dependency lists read from pyproject.toml (no code needed) ---------------------
FROM base AS requirements
WORKDIR /src
COPY pyproject.toml docker/requirements.py ./
RUN python requirements.py pyproject.toml /requirements


# --- pip: an empty venv and where its installs read from -----------------------------------------
FROM base AS pip
ARG PIP_INDEX_URL
# Each RUN that downloads mounts the wheelhouse at /wheelhouse and the ca_bundle secret, when given, over the
# image's CA bundle, which pip is told to trust: without the secret the image's own bundle is used.
ENV PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_FIND_LINKS=/wheelhouse \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH
# The project itself goes to /opt/project (see `project` below), which this .pth puts on the venv's path: the
# dependencies and the code are then two layers, and a code change leaves the large one as it was.
RUN python -m venv /opt/venv \
    && python -c "import pathlib, sysconfig as s; pathlib.Path(s.get_path('purelib'), 'project.pth').write_text('/opt/project')"


# --- wheel: the project itself, built once for every target --------------------------------------
FROM pip AS wheel
WORKDIR /src
# README.m[d]: the readme is package metadata, but the build must not fail without it.
COPY pyproject.toml README.m[d] ./
COPY index/ index/
COPY service/ service/
COPY trainer/ trainer/
RUN --mount=type=secret,id=ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .


# --- builders: the venv with the dependencies of each target --------------------------------------
FROM pip AS builder-api
# FAISS is one search backend, not a dependency of the service: `--build-arg FAISS=` (empty) leaves it out, and
# the service then searches with the numpy backend (RECSYS_RETRIEVAL_BACKEND auto or numpy).
ARG FAISS=cpu
# One list per layer: COPY is cached by content, so a change to the `train` extra alone leaves this
# layer (and torch below) cached.
COPY --from=requirements /requirements/api.txt /requirements/faiss-cpu.txt /requirements/
RUN --mount=type=secret,id=ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=cache,target=/root/.cache/pip \
    pip install -r /requirements/api.txt ${FAISS:+-r "/requirements/faiss-$FAISS.txt"}

FROM builder-api AS builder-trainer
# From PyPI, torch for Linux pulls the CUDA build (several GB of nvidia-* wheels); the CPU wheel
# index keeps the image small. TORCH_INDEX_URL="" takes PIP_INDEX_URL and the wheelhouse instead, where a
# CPU wheel (torch-2.13.0+cpu: a local version, preferred over PyPI's 2.13.0) can be put.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=cache,target=/root/.cache/pip \
    pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
# The `train` extra asks for torch>=2.4, which the CPU build above already satisfies.
COPY --from=requirements /requirements/train.txt /requirements/
RUN --mount=type=secret,id=ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=cache,target=/root/.cache/pip \
    pip install -r /requirements/train.txt

# Locust alone: the load test reads the bundle's files itself and imports none of the project, so this venv does
# not start from the api's.
FROM pip AS builder-load
COPY --from=requirements /requirements/load.txt /requirements/
RUN --mount=type=secret,id=ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=cache,target=/root/.cache/pip \
    pip install -r /requirements/load.txt

# The project without its dependencies (they are all in the venvs above), console scripts in /opt/project/bin.
FROM pip AS project
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps --target /opt/project /wheels/*.whl

# Each image holds only the part it runs: the service never imports the trainer and the trainer never the
# service (index is the floor both stand on), so each image drops the other's package and console scripts.
FROM project AS project-api
RUN rm -r /opt/project/trainer /opt/project/bin/recsys-train /opt/project/bin/recsys-generate

FROM project AS project-trainer
RUN rm -r /opt/project/service /opt/project/bin/recsys-serve


# --- runtime: shared by the CPU targets -----------------------------------------------------------
FROM base AS runtime
ARG APP_UID=10001
# /bundles is owned by the app user so that a fresh named volume mounted there is writable by it.
RUN groupadd --system --gid "${APP_UID}" recsys \
    && useradd --system --uid "${APP_UID}" --gid recsys --create-home --home-dir /home/recsys \
        --shell /usr/sbin/nologin recsys \
    && install -d -o recsys -g recsys /bundles
ENV PATH=/opt/venv/bin:/opt/project/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    RECSYS_BUNDLE_ROOT=/bundles
WORKDIR /home/recsys
# Numeric, so that orchestrators can check runAsNonRoot; COPY below still writes root-owned files.
USER ${APP_UID}:${APP_UID}


# --- trainer: recsys-train (and recsys-index) with CPU torch ---------------------------------------
FROM runtime AS trainer
COPY --from=builder-trainer /opt/venv /opt/venv
COPY --from=project-trainer /opt/project /opt/project
ENTRYPOINT ["recsys-train"]
CMD ["--dataset", "synthetic", "--method", "ste", "--bundle-root", "/bundles"]


# --- load: locust with the project's load test mounted (compose's `load` profile) -------------------
# The locustfile reads the bundle's files itself and imports none of the project: the image holds locust only.
FROM runtime AS load
COPY --from=builder-load /opt/venv /opt/venv
ENTRYPOINT ["locust"]


# --- api-gpu: recsys-serve on NVIDIA GPUs (Triton kernel, faiss-gpu) -----------------------------------
FROM ${CUDA_IMAGE} AS gpu-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# Triton builds a small C launcher for its kernels at run time: it needs gcc and Python's headers. apt reads the
# ca_bundle secret where it is given (the CUDA repository is https); ca-certificates is installed, so the bundle
# it writes is not shadowed by the secret.
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca_bundle \
    if [ -f /run/secrets/ca_bundle ]; then set -- -o Acquire::https::CAInfo=/run/secrets/ca_bundle; fi \
    && apt-get "$@" update \
    && apt-get "$@" install -y --no-install-recommends \
        ca-certificates python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS builder-api-gpu
ARG PIP_INDEX_URL
ENV PIP_INDEX_URL=${PIP_INDEX_URL} \
    PIP_FIND_LINKS=/wheelhouse \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
# torch from the index is the CUDA build here, on purpose; it is the largest layer, so it goes first.
ARG TORCH_VERSION=2.13.0
RUN --mount=type=secret,id=ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=cache,target=/root/.cache/pip \
    pip install "torch==${TORCH_VERSION}"
COPY --from=requirements /requirements/api-gpu.txt /requirements/
RUN --mount=type=secret,id=ca_bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,source=wheelhouse,target=/wheelhouse \
    --mount=type=cache,target=/root/.cache/pip \
    pip install -r /requirements/api-gpu.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --no-deps /wheels/*.whl \
    && rm -r "$(python -c 'import index, pathlib; print(pathlib.Path(index.__file__).parent.parent)')/trainer" \
        /opt/venv/bin/recsys-train

FROM gpu-base AS api-gpu
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" recsys \
    && useradd --system --uid "${APP_UID}" --gid recsys --create-home --home-dir /home/recsys \
        --shell /usr/sbin/nologin recsys \
    && install -d -o recsys -g recsys /bundles
COPY --from=builder-api-gpu /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    RECSYS_BUNDLE_ROOT=/bundles \
    RECSYS_DEVICE=gpu \
    RECSYS_HOST=0.0.0.0 \
    RECSYS_PORT=8000
WORKDIR /home/recsys
USER ${APP_UID}:${APP_UID}
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RECSYS_PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["recsys-serve"]


# --- api (default, so last): recsys-serve on 0.0.0.0:8000 ------------------------------------------
FROM runtime AS api
COPY --from=builder-api /opt/venv /opt/venv
COPY --from=project-api /opt/project /opt/project
ENV RECSYS_HOST=0.0.0.0 \
    RECSYS_PORT=8000
EXPOSE 8000
# No curl in slim images: the standard library does the probe; any error or non-2xx exits 1.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RECSYS_PORT', '8000') + '/healthz', timeout=2)"]
ENTRYPOINT ["recsys-serve"]
