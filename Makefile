# The two set-up commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
PIP := $(BIN)/python -m pip --disable-pip-version-check
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-all lint params ui server postgresql

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet -r requirements.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	$(PIP) check
	touch $@

# the `ray` extra (hydra/launcher=ray) on top of the base set: about 300 MB more
$(RAY_STAMP): $(STAMP) requirements-ray.lock
	$(PIP) install --quiet -r requirements-ray.lock
	$(PIP) check
	touch $@

## run: install, then run the default experiment through the DVC pipeline
run: $(STAMP)
	dvc repro
	@echo
	dvc metrics show
	@echo
	@echo "metrics: metrics.json, model/train.json   (dvc metrics show)"
	@echo "plots:   plots/          (learning_curves.png, dataset.png, decision_boundary.png)"
	@echo "runs:    mlflow.db        (make ui, then http://127.0.0.1:5000)"

TEST_WORKERS ?= 2

## test: the fast test set, on TEST_WORKERS processes (6 to 9 minutes on 2 cores)
test: $(RAY_STAMP) postgresql
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

## test-all: every test, the slow end-to-end ones included (about 12 minutes on 2 cores)
test-all: $(RAY_STAMP) postgresql
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "slow or not slow"

## postgresql: PostgreSQL's server from Debian's packages, for the tests of MLflow on it; as
## root with apt only, and only when it is missing (else those tests skip, saying why)
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else echo "PostgreSQL's server is not installed: its tests will skip"; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests && $(BIN)/ruff format --check src tests

## params: rewrite params.yaml from conf/ (the default composition)
params: $(STAMP)
	$(BIN)/losslab --cfg job > params.yaml

## ui: the MLflow UI on 127.0.0.1:5000 over the embedded store
ui: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000

SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
SERVER_WORKERS ?= 2
SERVER_ARGS ?=
# handed over in the environment, so that neither make's output nor the process list shows
# a password in it
export BACKEND_STORE_URI ?= sqlite:///$(CURDIR)/mlflow.db
ARTIFACTS_DESTINATION ?= $(CURDIR)/mlartifacts

## server: a shared MLflow tracking server on SERVER_HOST:SERVER_PORT; runs go to
## BACKEND_STORE_URI (SQLite, or postgresql://user:password@host:port/db), artifacts to
## ARTIFACTS_DESTINATION (a folder, or s3://bucket/path), served through the server;
## SERVER_ARGS adds `mlflow server` options (--allowed-hosts, --app-name basic-auth, ...)
server: $(STAMP)
	MLFLOW_BACKEND_STORE_URI="$$BACKEND_STORE_URI" MLFLOW_DISABLE_TELEMETRY=true \
		exec $(BIN)/mlflow server --artifacts-destination "$(ARTIFACTS_DESTINATION)" \
		--host $(SERVER_HOST) --port $(SERVER_PORT) --workers $(SERVER_WORKERS) $(SERVER_ARGS)
