# The two set-up commands: `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray
PIP := $(BIN)/python -m pip --disable-pip-version-check
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-all lint lock params ui server postgresql

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

## run: install, then run the default experiment through the DVC pipeline; the stages after a
## stage that ran run too, even where their inputs are unchanged (a fresh clone's train gives the
## committed model again), so that the run's MLflow record holds the evaluation and the plots
run: $(STAMP)
	dvc repro --force-downstream
	@echo
	dvc metrics show
	@echo
	@echo "metrics: metrics.json   (dvc metrics show)"
	@echo "plots:   plots/          (learning_curves.png, dataset.png, decision_boundary.png, reliability.png)"
	@echo "runs:    mlflow.db        (make ui, then http://127.0.0.1:5000)"

TEST_WORKERS ?= 2

# the tests marked `spawn` run a second time with multiprocessing's start method forced to
# spawn (macOS's and Windows's default) in every Python process, through tests/spawn/sitecustomize.py
SPAWN := LOSSLAB_START_METHOD=spawn PYTHONPATH="$(CURDIR)/tests/spawn$${PYTHONPATH:+:$$PYTHONPATH}"

# loadgroup: the tests of one xdist_group (those sharing a module's fixture) run on one worker,
# so that the fixture is made once
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=20

## test: every test but the few long ones marked `slow`, on TEST_WORKERS processes (7 to 15
## minutes on 2 cores, by the day), then the tests marked `spawn` once more under spawn
test: $(RAY_STAMP) postgresql
	$(PYTEST)
	$(SPAWN) $(PYTEST) -m "spawn and not slow"

## test-all: every test, the slow ones included
test-all: $(RAY_STAMP) postgresql
	$(PYTEST) -m "slow or not slow"
	$(SPAWN) $(PYTEST) -m spawn

## postgresql: PostgreSQL's server from Debian's packages, for the tests of MLflow on it; as
## root with apt only, and only when it is missing (else those tests skip, saying why; with CI
## set in the environment, as .ci/run sets it, they fail instead)
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else echo "PostgreSQL's server is not installed: its tests will skip (fail where CI is set)"; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests && $(BIN)/ruff format --check src tests

# one resolution for Linux x86-64, macOS arm64 and Windows x86-64 at once (markers in the
# files pick what differs); LOCK_ARGS=--upgrade moves every pin to the newest that fits
LOCK_COMPILE = uv pip compile pyproject.toml --universal --python-version 3.11 --no-header

## lock: re-resolve requirements.lock and requirements-ray.lock after a change to
## pyproject.toml, keeping the pins that still fit (uv: .venv/bin/uv, or any uv on PATH).
## The whole set with the ray extra is resolved first and the base set within it, so that
## the base set's pins (joblib, for one: hydra-ray-launcher needs cloudpickle<3) fit Ray too.
lock:
	grep -shv '^-r' requirements.lock requirements-ray.lock > ray.lock.tmp || :
	$(LOCK_COMPILE) --quiet $(LOCK_ARGS) --extra dev --extra postgres --extra ray --no-annotate -o ray.lock.tmp
	$(LOCK_COMPILE) --quiet $(LOCK_ARGS) --extra dev --extra postgres --annotation-style line -c ray.lock.tmp -o requirements.lock
	{ printf '%s\n' \
		'# The pinned set that `make` installs: the dependencies, the dev extra (pytest, ruff, uv)' \
		'# and the postgres extra, for Python 3.11 on Linux x86-64, macOS arm64 and Windows x86-64' \
		'# alike: markers pick what differs (tensorflow-cpu on Linux and Windows, tensorflow on' \
		'# macOS). tests/test_lock.py checks that it installs on each of the three.' \
		'# Regenerate it with `make lock`, which resolves the set with the ray extra into' \
		'# ray.lock.tmp (see requirements-ray.lock), then this set within it:' \
		'#   $(LOCK_COMPILE) --extra dev --extra postgres --annotation-style line -c ray.lock.tmp -o requirements.lock' \
		; sed -e 's/, -c ray\.lock\.tmp//' -e 's/-c ray\.lock\.tmp, //' requirements.lock; } > base.lock.tmp
	mv base.lock.tmp requirements.lock
	sed 's/ *#.*//' requirements.lock | grep . > base-pins.tmp
	{ printf '%s\n' \
		'# The `ray` extra on top of the base set: Ray sweeps (hydra/launcher=ray), for Python 3.11' \
		'# on Linux x86-64, macOS arm64 and Windows x86-64 (tests/test_lock.py checks each).' \
		'# hydra-ray-launcher needs cloudpickle<3, which is why the base set pins joblib 1.5.3.' \
		'# Regenerate it with `make lock`: the pins below are those of this resolution that' \
		'# requirements.lock does not have:' \
		'#   $(LOCK_COMPILE) --extra dev --extra postgres --extra ray --no-annotate -o ray.lock.tmp' \
		'-r requirements.lock'; grep -vxF -f base-pins.tmp ray.lock.tmp || :; } > requirements-ray.lock
	rm -f ray.lock.tmp base-pins.tmp

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
