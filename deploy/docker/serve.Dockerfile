# syntax=docker/dockerfile:1
# Shipyard's serve image: FastAPI + uvicorn + ONNX Runtime, no torch, one model package baked
# in (ONNX + JSON, verified against its checksums when it was fetched).
#
# Build it with `shipyard image build NAME@ALIAS` (stages the context: the project, the
# verified package under model/, this file), or by hand from a context that holds them:
#   shipyard image context digits@champion build/serve-context   (prints the build arguments)
#   docker build --build-arg SHIPYARD_MODEL_NAME=digits --build-arg SHIPYARD_MODEL_VERSION=3 \
#     --build-arg SHIPYARD_MODEL_DIGEST=... -t shipyard-serve:digits-3 build/serve-context
# Run: docker run --read-only --tmpfs /tmp -p 127.0.0.1:8000:8000 shipyard-serve:digits-3
# Settings come from SHIPYARD_SERVE_* variables (docs/configuration.md); mount another package
# at /srv/model (read-only) to serve it instead of the baked one.

# The base is a build argument so that machines without a registry build from a local one
# (scripts/base-image.sh); everywhere else the official image is used.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# pip verifies TLS against this bundle (the official slim image ships it; a build that has to
# trust an intercepting proxy mounts the host's bundle here for the build only).
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# Extras beside serve: s3 to serve NAME@ALIAS from a registry whose artifacts are in a bucket.
ARG EXTRAS=serve
ENV PIP_CERT=${PIP_CERT} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/shipyard
WORKDIR /src
# Dependencies first, from the lock, so that a code change reuses this layer.
COPY constraints.txt pyproject.toml README.md ./
COPY src/shipyard/__init__.py src/shipyard/__init__.py
RUN /opt/shipyard/bin/pip install -c constraints.txt ".[${EXTRAS}]" \
    && /opt/shipyard/bin/pip uninstall -y shipyard
COPY src ./src
RUN /opt/shipyard/bin/pip install --no-deps -c constraints.txt ".[${EXTRAS}]" \
    && ! /opt/shipyard/bin/python -c "import torch" 2>/dev/null \
    && /opt/shipyard/bin/python -c "import shipyard.serve.app, onnxruntime, uvicorn"

FROM ${BASE}
# The registry identity of the package under model/ (`shipyard image context` prints them):
# responses, metrics and the prediction log then say digits v3, not a bare folder's pkg-<sha>.
# The digest ties the version to that manifest: a package mounted over it reports its own.
ARG SHIPYARD_MODEL_NAME=""
ARG SHIPYARD_MODEL_VERSION=""
ARG SHIPYARD_MODEL_DIGEST=""
LABEL org.opencontainers.image.title="shipyard-serve" \
      org.opencontainers.image.description="Shipyard model server (ONNX Runtime)" \
      ai.shipyard.model="${SHIPYARD_MODEL_NAME}/${SHIPYARD_MODEL_VERSION}" \
      ai.shipyard.manifest-sha256="${SHIPYARD_MODEL_DIGEST}"
# A fixed non-root user: Kubernetes' runAsNonRoot checks the numeric id.
RUN groupadd --system --gid 10001 shipyard \
    && useradd --system --uid 10001 --gid shipyard --home-dir /var/lib/shipyard --no-create-home shipyard \
    && mkdir -p /var/lib/shipyard \
    && chown shipyard:shipyard /var/lib/shipyard
COPY --from=build /opt/shipyard /opt/shipyard
COPY --chown=root:root model/ /srv/model/
ENV PATH=/opt/shipyard/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SHIPYARD_HOME=/var/lib/shipyard \
    SHIPYARD_SERVE_HOME=/var/lib/shipyard \
    SHIPYARD_SERVE_PACKAGE=/srv/model \
    SHIPYARD_SERVE_MODEL_NAME=${SHIPYARD_MODEL_NAME} \
    SHIPYARD_SERVE_MODEL_VERSION=${SHIPYARD_MODEL_VERSION} \
    SHIPYARD_SERVE_PACKAGE_DIGEST=${SHIPYARD_MODEL_DIGEST} \
    SHIPYARD_SERVE_HOST=0.0.0.0 \
    SHIPYARD_SERVE_PORT=8000
USER 10001:10001
WORKDIR /var/lib/shipyard
EXPOSE 8000
# The state (prediction log, spool) lives in /var/lib/shipyard: a volume in production. With
# --read-only, /tmp must be a tmpfs (several workers keep their Prometheus files there).
VOLUME ["/var/lib/shipyard"]
# No curl in a slim image: Python asks the readiness route (ready = a model loaded and smoke-tested).
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('SHIPYARD_SERVE_PORT', '8000')}/v2/health/ready\", timeout=3)"]
ENTRYPOINT ["shipyard", "serve"]
