# A Python 3.11 image from Debian's packages (bookworm's python3 is 3.11), for builds that reach no registry:
# what the project's Dockerfile asks of PYTHON_IMAGE (python, `python -m venv`, ca-certificates), as in
# python:3.11-slim. DEBIAN_IMAGE: a bookworm image, e.g. one made by debootstrap and `docker import`.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ENV LANG=C.UTF-8
CMD ["python"]
