# simprune worker image: one supervised Celery worker per visible GPU (solo pool, one job at a time each;
# SIMPRUNE_WORKER_GPUS=all, i.e. `simprune worker --gpus all`).
# GPU (default): CUDA runtime base + CUDA torch wheels.
#   docker build -f docker/worker.Dockerfile -t simprune-worker .
# CPU variant (one CPU worker):
#   docker build -f docker/worker.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim-bookworm \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu --build-arg WORKER_GPUS=none \
#       -t simprune-worker:cpu .
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG WORKER_GPUS=all

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SIMPRUNE_DATA_DIR=/data \
    SIMPRUNE_LOG_FORMAT=json \
    SIMPRUNE_WORKER_GPUS=${WORKER_GPUS}

# the CUDA base has no Python; the python:* CPU base already has one
# hadolint ignore=DL3008
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /src
COPY pyproject.toml setup.py README.md alembic.ini ./
COPY simprune ./simprune
COPY app ./app
COPY worker ./worker
COPY alembic ./alembic
# the server extra: FastAPI, uvicorn, SQLAlchemy, Alembic, Celery, Redis, psycopg, boto3, prometheus-client
RUN pip install './[server]' \
    && useradd --system --uid 10001 --home-dir /data --create-home simprune

USER 10001
WORKDIR /data
EXPOSE 9100
CMD ["simprune", "worker", "--loglevel", "INFO"]
