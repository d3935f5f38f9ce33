# syntax=docker/dockerfile:1
# Shipyard's train image: the whole CLI (prepare, train, export, register, sweep) with
# PyTorch. CPU wheels by default; CUDA by build argument, e.g.
#   docker build -f deploy/docker/train.Dockerfile -t shipyard-train:cu128 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# (PyTorch's CUDA wheels carry their CUDA libraries: the host needs only the NVIDIA driver and
# the container toolkit: docker run --gpus all ...).
# Run: docker run --rm -v "$PWD/.shipyard:/var/lib/shipyard" shipyard-train pipeline task=tabular
# Point it at real infrastructure by URL (tracking.uri=http://mlflow:5000, paths.snapshots=s3://...).

ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# Where torch comes from: PyTorch's CPU index by default (the PyPI wheel is the CUDA build,
# several GB); empty: the index pip is configured with.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# pip's own settings pass through as build arguments: PIP_EXTRA_INDEX_URL (space-separated
# indexes, e.g. a local mirror mounted for the build) and PIP_FIND_LINKS.
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
# Extras to install: train (training, tracking, export) plus e.g. monitor, wandb, s3.
ARG EXTRAS=train
ENV PIP_CERT=${PIP_CERT} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/shipyard
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY src/shipyard/__init__.py src/shipyard/__init__.py
# Dependencies from the lock first (torch from its index), so a code change reuses this layer.
RUN /opt/shipyard/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        -c constraints.txt ".[${EXTRAS}]" \
    && /opt/shipyard/bin/pip uninstall -y shipyard
COPY src ./src
RUN /opt/shipyard/bin/pip install --no-deps -c constraints.txt ".[${EXTRAS}]" \
    && /opt/shipyard/bin/python -c "import shipyard.train.run, torch, lightning, mlflow"

FROM ${BASE}
LABEL org.opencontainers.image.title="shipyard-train" \
      org.opencontainers.image.description="Shipyard training, tracking and export (PyTorch)"
RUN groupadd --system --gid 10001 shipyard \
    && useradd --system --uid 10001 --gid shipyard --home-dir /var/lib/shipyard --no-create-home shipyard \
    && mkdir -p /var/lib/shipyard /work \
    && chown shipyard:shipyard /var/lib/shipyard /work
COPY --from=build /opt/shipyard /opt/shipyard
ENV PATH=/opt/shipyard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SHIPYARD_HOME=/var/lib/shipyard \
    HF_HUB_OFFLINE=1
USER 10001:10001
# Data to prepare (CSV, image folders) is mounted here; state lives in SHIPYARD_HOME.
WORKDIR /work
VOLUME ["/var/lib/shipyard"]
ENTRYPOINT ["shipyard"]
CMD ["--help"]
