# The two set-up commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-all lint params ui

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

## run: install, then run the default experiment through the DVC pipeline
run: $(STAMP)
	dvc repro
	@echo
	dvc metrics show
	@echo
	@echo "metrics: metrics.json   (dvc metrics show)"
	@echo "plots:   plots/          (learning_curves.png, dataset.png, decision_boundary.png)"
	@echo "runs:    mlflow.db        (make ui, then http://127.0.0.1:5000)"

TEST_WORKERS ?= 2

## test: the fast test set, on TEST_WORKERS processes (about 3 minutes on 2 cores)
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

## test-all: every test, the slow end-to-end ones included (about 7 minutes on 2 cores)
test-all: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "slow or not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests && $(BIN)/ruff format --check src tests

## params: rewrite params.yaml from conf/ (the default composition)
params: $(STAMP)
	$(BIN)/losslab --cfg job > params.yaml

## ui: the MLflow UI on 127.0.0.1:5000 over the embedded store
ui: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000
