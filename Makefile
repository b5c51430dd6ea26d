# simprune: two commands set everything up.
#   make run   installs into .venv, migrates, starts the API and one worker (SQLite + embedded broker, no servers)
#   make test  installs and runs every test
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
HOST    ?= 127.0.0.1
PORT    ?= 8000
DATA    ?= data

.PHONY: install run test lint bench deploy-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU/CUDA wheels this project is tested with
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/simprune db upgrade --data-dir $(DATA)
	$(BIN)/simprune serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

lint: install
	$(BIN)/ruff check simprune app worker tests bench

test: install lint
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/latency.py --quick
	$(BIN)/python bench/accuracy.py

deploy-check: install
	docker-compose --env-file .env.example -f docker-compose.yml config -q
	$(BIN)/hadolint docker/api.Dockerfile docker/worker.Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
