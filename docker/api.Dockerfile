# simprune API image: FastAPI on uvicorn (`simprune serve --no-worker`). CPU-only torch: the API only loads
# uploaded checkpoints to validate and count them; pruning runs in the worker image.
#   docker build -f docker/api.Dockerfile -t simprune-api .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SIMPRUNE_DATA_DIR=/data

RUN python3 -m venv /opt/venv \
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
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["simprune", "serve", "--host", "0.0.0.0", "--port", "8000", "--no-worker"]
