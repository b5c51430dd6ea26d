# simprune: two commands set everything up.
#   make run   installs into .venv, migrates, starts the API and one worker (SQLite + embedded broker, no servers)
#   make test  installs and runs every test
#   make check-lib  the library alone: a fresh venv, `pip install .` without extras, prune works, serve explains
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
HOST    ?= 127.0.0.1
PORT    ?= 8000
DATA    ?= data

.PHONY: install run test lint check-lib bench gpu-check deploy-check clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU/CUDA wheels this project is tested with
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	# the engine plus the server extra (API, worker, database) and the test tools
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/simprune db upgrade --data-dir $(DATA)
	$(BIN)/simprune serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

lint: install
	$(BIN)/ruff check simprune app worker alembic tests bench setup.py

test: install lint
	$(BIN)/pytest -q --durations=15

check-lib:
	PY=$(PY) bash tests/lib_only_check.sh

bench: install
	$(BIN)/python bench/latency.py --quick
	$(BIN)/python bench/accuracy.py

# the GPU check (engine on CUDA, AMP fine-tuning, latency in deployment modes, the service with a CUDA worker,
# a real out-of-memory retry): one summary line per step, under 5 minutes on one GPU. On the offline GPU
# machine run `python3 bench/gpu_check.py` after installing .gpu/whl (../shared/gpu/README.md). CPU rehearsal:
# `make gpu-check GPU_CHECK_ARGS="--device cpu --quick"`.
GPU_CHECK_ARGS ?=
gpu-check: install
	$(BIN)/python bench/gpu_check.py $(GPU_CHECK_ARGS)

deploy-check: install
	docker-compose --env-file .env.example -f docker-compose.yml config -q
	$(BIN)/hadolint docker/api.Dockerfile docker/worker.Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
