"""MLflow tracking: what a run holds, how every run ends, and where runs go.

Everything runs against the real MLflow (SQLite stores in temp dirs, a real ``mlflow server``
and a real ``mlflow run``); no run is ever written to the repo's ``mlflow.db``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from conftest import (
    REPO_ROOT,
    all_runs,
    made_once,
    mlflow_server,
    run_command,
    run_env,
    shrink,
    wait_for,
    wait_for_line,
)
from mlflow.entities import LoggedModelStatus, Param, ViewType
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from losslab import app, cli, tracking
from losslab.config import as_plain, validate

BIN = Path(sys.executable).parent
SRC = REPO_ROOT / "src"
LOSSLAB = str(BIN / "losslab")
EPOCHS = 4
PER_EPOCH = ("loss", "val_loss", "accuracy", "val_accuracy")
ARTIFACTS = {
    "config/config.yaml",
    "config/overrides.txt",
    "history/history.csv",
    "evaluation/metrics.json",
    "data/dataset.json",
    "plots/learning_curves.png",
    "plots/decision_boundary.png",
    "plots/dataset.png",
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def small_cfg(
    compose_raw, *overrides: str, uri: str, epochs: int = 3, n_samples: int = 200
) -> DictConfig:
    """``tiny_cfg`` for any store (the fixture always points at its own temp store)."""
    return shrink(compose_raw(*overrides), uri, epochs, n_samples)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_history(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows] for key in rows[0]}


def logged_model_files(client: MlflowClient, model_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_logged_model_artifacts(model_id, path):
        found |= logged_model_files(client, model_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.fixture(autouse=True)
def _restore_mlflow_tracking_uri(monkeypatch):
    """Runs here point MLflow's process-wide tracking URI at temp stores; put it back after."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)


# --------------------------------------------------------------------------------------------
# 1, 2. One short app run, shared by the tests of its contents and of its model.
# --------------------------------------------------------------------------------------------


@dataclass
class AppRun:
    cfg: DictConfig
    uri: str
    out: Path
    overrides: list[str]
    run: Any  # mlflow.entities.Run
    pid: int  # of the losslab process
    model_files: set[str]  # the logged model's, as the run left them


@pytest.fixture(scope="module")
def app_run(compose_raw, tmp_path_factory, worker_id) -> AppRun:
    """One ``losslab`` command on a fresh store, as a user runs it: it logs its run itself.
    Made once for all of the session's workers; its tests only read it."""
    overrides = [
        "experiment=circles_hinge",
        f"trainer.epochs={EPOCHS}",
        "trainer.verbose=0",
        "dataset.n_samples=200",
        "dataset.n_test=100",
    ]
    with made_once(tmp_path_factory, worker_id, "app_run") as (root, made):
        uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        if not made.exists():
            proc = subprocess.Popen(
                [LOSSLAB, *overrides, f"hydra.run.dir={root / 'out'}"],
                cwd=root,
                env=run_env(uri),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _, stderr = proc.communicate(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
            outcome = {"returncode": proc.returncode, "stderr": stderr[-3000:], "pid": proc.pid}
            if proc.returncode == 0:
                # before any test loads it: loading models:/ from a local store adds a file
                (run,) = all_runs(uri)
                (output,) = run.outputs.model_outputs
                files = logged_model_files(MlflowClient(uri), output.model_id)
                outcome["model_files"] = sorted(files)
            made.write_text(json.dumps(outcome))
        outcome = json.loads(made.read_text())
    assert outcome["returncode"] == 0, outcome["stderr"]
    runs = all_runs(uri)
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    cfg = validate(compose_raw(*overrides))
    model_files = set(outcome["model_files"])
    return AppRun(cfg, uri, root / "out", overrides, runs[0], outcome["pid"], model_files)


@pytest.mark.spawn
def test_app_run_params_equal_the_flattened_config(app_run):
    params = app_run.run.data.params
    assert params == tracking.config_params(app_run.cfg)
    for key in (
        "dataset.name",
        "dataset.n_samples",
        "dataset.noise",
        "model.hidden",
        "model.activation",
        "loss.name",
        "optimizer.name",
        "optimizer.learning_rate",
        "trainer.epochs",
        "trainer.batch_size",
        "seed",
        "preset",
        "tracking.experiment",
    ):
        assert key in params, f"param {key} missing"
    assert params["model.hidden"] == "[50]"
    assert params["loss.name"] == "hinge"
    assert params["trainer.epochs"] == str(EPOCHS)
    assert float(params["optimizer.learning_rate"]) == app_run.cfg.optimizer.learning_rate


@pytest.mark.spawn
def test_app_run_metric_histories_follow_the_epochs(app_run):
    client = MlflowClient(tracking_uri=app_run.uri)
    history_csv = read_history(app_run.out / "model" / "history.csv")
    for key in PER_EPOCH:
        history = sorted(
            client.get_metric_history(app_run.run.info.run_id, key), key=lambda m: m.step
        )
        assert len(history) == EPOCHS, key
        assert [m.step for m in history] == list(range(1, EPOCHS + 1)), key
        assert [m.value for m in history] == pytest.approx(history_csv[key], rel=1e-6), key
        assert all(math.isfinite(m.value) for m in history)


@pytest.mark.spawn
def test_app_run_final_metrics_equal_metrics_json(app_run):
    written = json.loads((app_run.out / "metrics.json").read_text())
    expected = {f"{split}_{k}": v for split, scores in written.items() for k, v in scores.items()}
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(expected)
    logged = app_run.run.data.metrics
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.mark.spawn
def test_app_run_tags(app_run):
    tags = app_run.run.data.tags
    name = "circles_noisy-hinge-sgd-s0"  # dataset-loss-optimizer-seed, ASCII to type in a search
    assert tags["mlflow.runName"] == name
    assert app_run.run.info.run_name == name
    assert name == tracking.run_name(app_run.cfg)
    assert tags["losslab.entry_point"] == "cli"
    assert tags["losslab.preset"] == "circles_hinge"
    assert tags["losslab.overrides"] == " ".join(app_run.overrides)
    assert tags["losslab.tracking_uri"] == app_run.uri
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git.commit"]), tags["git.commit"]
    known = subprocess.run(
        ["git", "cat-file", "-e", f"{tags['git.commit']}^{{commit}}"], cwd=REPO_ROOT
    )
    assert known.returncode == 0, "git.commit is not a commit of this repository"
    assert tags["git.dirty"] in ("true", "false")
    assert tags["losslab.pid"] == str(app_run.pid)  # the losslab process holds its own run
    try:
        tensorflow = metadata.version("tensorflow-cpu")
    except metadata.PackageNotFoundError:  # macOS: tensorflow
        tensorflow = metadata.version("tensorflow")
    assert tags["version.tensorflow"] == tensorflow
    for tag, package in (
        ("version.keras", "keras"),
        ("version.mlflow", "mlflow"),
        ("version.hydra-core", "hydra-core"),
        ("version.dvc", "dvc"),
    ):
        assert tags[tag] == metadata.version(package), tag


@pytest.mark.spawn
def test_app_run_dataset_input_carries_the_data_hash(app_run):
    meta = json.loads((app_run.out / "data" / "dataset.json").read_text())
    inputs = app_run.run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset_tags = {tag.key: tag.value for tag in inputs[0].tags}
    assert dataset_tags["losslab.data_hash"] == meta["sha256"]
    assert dataset_tags["mlflow.data.context"] == "training"
    assert inputs[0].dataset.name == app_run.cfg.dataset.name
    assert inputs[0].dataset.digest == meta["sha256"][:32]


@pytest.mark.spawn
def test_app_run_artifacts_and_status(app_run, tmp_path):
    client = MlflowClient(tracking_uri=app_run.uri)
    run = client.get_run(app_run.run.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.end_time is not None
    assert "losslab.error" not in run.data.tags
    run_id = run.info.run_id
    assert artifact_paths(client, run_id) >= ARTIFACTS

    local = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    assert yaml.safe_load((local / "config" / "config.yaml").read_text()) == as_plain(app_run.cfg)
    assert (local / "config" / "overrides.txt").read_text().split() == app_run.overrides
    for logged, written in (
        ("evaluation/metrics.json", "metrics.json"),
        ("history/history.csv", "model/history.csv"),
        ("data/dataset.json", "data/dataset.json"),
        ("plots/learning_curves.png", "plots/learning_curves.png"),
    ):
        assert sha256(local / logged) == sha256(app_run.out / written), logged


def _model_uri(app_run: AppRun) -> str:
    outputs = app_run.run.outputs.model_outputs
    assert len(outputs) == 1
    return f"models:/{outputs[0].model_id}"


def _reference_predictions(app_run: AppRun) -> tuple[np.ndarray, np.ndarray]:
    import keras

    import losslab.metrics  # noqa: F401  registers sign_accuracy for the saved, compiled model

    x_test = np.load(app_run.out / "data" / "dataset.npz")["x_test"]
    model = keras.models.load_model(app_run.out / "model" / "model.keras")
    return x_test, model.predict(x_test, verbose=0)


@pytest.mark.spawn
def test_logged_model_predicts_like_the_saved_model(app_run):
    mlflow.set_tracking_uri(app_run.uri)
    uri = _model_uri(app_run)
    x_test, expected = _reference_predictions(app_run)

    by_pyfunc = np.asarray(mlflow.pyfunc.load_model(uri).predict(x_test))
    by_keras = mlflow.keras.load_model(uri).predict(x_test, verbose=0)
    assert by_pyfunc.shape == expected.shape == by_keras.shape
    assert np.allclose(by_pyfunc, expected, rtol=1e-5, atol=1e-6)
    assert np.allclose(by_keras, expected, rtol=1e-5, atol=1e-6)

    info = mlflow.models.get_model_info(uri)
    assert info.signature is not None
    assert info.saved_input_example_info is not None
    assert info.run_id == app_run.run.info.run_id
    logged = MlflowClient(app_run.uri).get_logged_model(uri.split("/")[-1])
    assert logged.status == "READY"
    assert logged.experiment_id == app_run.run.info.experiment_id  # not the Default experiment


CHILD_PREDICT = textwrap.dedent(
    """
    import json, sys
    sys.modules["losslab"] = None  # any import of losslab now fails
    import mlflow
    import numpy as np

    tracking_uri, model_uri, data, target = sys.argv[1:]
    mlflow.set_tracking_uri(tracking_uri)
    x_test = np.load(data)["x_test"]
    np.save(target, np.asarray(mlflow.pyfunc.load_model(model_uri).predict(x_test)))
    print(json.dumps(sorted(m for m in sys.modules if m.startswith("losslab."))))
    """
)


@pytest.mark.spawn
def test_logged_model_loads_without_losslab(app_run, tmp_path):
    uri = _model_uri(app_run)
    _, expected = _reference_predictions(app_run)
    target = tmp_path / "pred.npy"
    args = [app_run.uri, uri, str(app_run.out / "data" / "dataset.npz"), str(target)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD_PREDICT, *args],
        cwd=tmp_path,
        env=run_env(app_run.uri),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert np.allclose(np.load(target), expected, rtol=1e-5, atol=1e-6)


def expected_model_requirements() -> list[str]:
    """What the logged model needs, pinned at the installed versions."""
    try:
        metadata.version("tensorflow-cpu")
        tensorflow = "tensorflow-cpu"
    except metadata.PackageNotFoundError:  # macOS
        tensorflow = "tensorflow"
    return [f"{p}=={metadata.version(p)}" for p in ("mlflow", "keras", "numpy", tensorflow)]


@pytest.mark.spawn
def test_logged_model_is_a_ready_keras_model_of_the_run(app_run, tmp_path):
    """The model goes through MLflow's public logged-model API (mlflow.keras.log_model cannot
    take an input example on 3.17, mlflow#16183): it must still be what log_model makes."""
    from mlflow.models import Model

    run_id = app_run.run.info.run_id
    (output,) = app_run.run.outputs.model_outputs
    client = MlflowClient(app_run.uri)
    logged = client.get_logged_model(output.model_id)
    assert logged.status == LoggedModelStatus.READY
    assert logged.name == "model"
    assert logged.source_run_id == run_id
    assert logged.experiment_id == app_run.run.info.experiment_id  # not the Default experiment

    mlflow.set_tracking_uri(app_run.uri)
    local = Path(
        mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}", dst_path=str(tmp_path))
    )
    stored = app_run.model_files
    assert {"MLmodel", "data/model.keras", "input_example.json", "requirements.txt"} <= stored
    # what mlflow.keras.save_model writes; loading from models:/ adds registered_model_meta
    assert "registered_model_meta" not in stored
    downloaded = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert downloaded - {"registered_model_meta"} == stored
    described = Model.load(str(local / "MLmodel"))
    assert described.run_id == run_id and described.model_id == logged.model_id
    assert set(described.flavors) == {"keras", "python_function"}
    assert described.flavors["python_function"]["loader_module"] == "mlflow.keras"
    assert described.flavors["keras"]["keras_version"] == metadata.version("keras")

    x_test, expected = _reference_predictions(app_run)
    signature = described.signature.to_dict()
    assert json.loads(signature["inputs"])[0]["tensor-spec"]["shape"] == [-1, x_test.shape[1]]
    assert json.loads(signature["outputs"])[0]["tensor-spec"]["shape"] == [-1, expected.shape[1]]
    example = described.load_input_example(str(local))
    assert np.allclose(example, x_test[:5])  # the first rows of the test split

    requirements = (local / "requirements.txt").read_text().split()
    assert tracking._model_requirements() == expected_model_requirements()
    assert sorted(requirements) == sorted(expected_model_requirements())

    for uri in (f"runs:/{run_id}/model", f"models:/{logged.model_id}"):
        predicted = np.asarray(mlflow.pyfunc.load_model(uri).predict(x_test))
        assert np.allclose(predicted, expected, rtol=1e-5, atol=1e-6), uri


# --------------------------------------------------------------------------------------------
# 3. Param flattening and MLflow's limits
# --------------------------------------------------------------------------------------------


def test_flatten_nested_mappings_to_dotted_keys():
    tree = {"a": 1, "b": {"c": "x", "d": {"e": [1, 2], "f": None}}, "g": {}}
    assert tracking.flatten(tree) == {"a": 1, "b.c": "x", "b.d.e": [1, 2], "b.d.f": None}
    assert tracking.flatten({"x": {"y": 1}}, "p") == {"p.x.y": 1}
    assert tracking.flatten(3, "k") == {"k": 3}


def with_extra(cfg: DictConfig, extra: dict) -> DictConfig:
    """A validated config plus free-form entries that validate itself would refuse."""
    return OmegaConf.merge(OmegaConf.create(as_plain(cfg)), extra)


def test_config_params_are_strings_with_lists_as_json(tiny_cfg):
    cfg = tiny_cfg()
    params = tracking.config_params(with_extra(cfg, {"extra": {"grid": [4, 2], "n": None}}))
    assert all(isinstance(value, str) for value in params.values())
    assert params["model.hidden"] == json.dumps(list(cfg.model.hidden))
    assert params["seed"] == "0"
    assert params["dataset.standardize"] == "False"
    assert params["model.output_activation"] == "None"
    assert params["trainer.validation"] == "test"  # the enum's value, not Validation.test
    assert params["extra.grid"] == "[4, 2]"
    assert params["extra.n"] == "None"


def test_config_params_hide_a_tracking_password(compose_raw):
    cfg = validate(compose_raw("tracking.uri=postgresql://u:secret@host/db"))
    params = tracking.config_params(cfg)
    assert "secret" not in params["tracking.uri"]
    assert params["tracking.uri"].endswith("@host/db")


def test_config_params_truncate_long_values_and_keys_visibly(tiny_cfg):
    cfg = tiny_cfg()
    long_key = "k" * 300
    extra = {"value": "v" * 7000, "short": "s", long_key: 1, "n": {long_key: 2}}
    params = tracking.config_params(with_extra(cfg, extra))
    assert params["short"] == "s"
    assert params["value"].endswith(tracking.TRUNCATED)
    assert params["value"].startswith("v" * 100)
    assert len(params["value"]) <= 6000
    assert len(params) == len(tracking.config_params(cfg)) + 4
    long_keys = [key for key in params if key.startswith(("kkk", "n.kkk"))]
    assert len(long_keys) == 2
    assert all(len(key) <= 250 for key in long_keys)
    assert all("...truncated." in key for key in long_keys)
    assert len(set(long_keys)) == 2


@pytest.mark.spawn
def test_config_params_with_long_keys_can_be_logged(tracking_uri, tiny_cfg):
    cfg = tiny_cfg()
    params = tracking.config_params(with_extra(cfg, {"n": {"k" * 300: 1}}))
    assert any(len(key) == 250 for key in params)
    with tracking.run(cfg, "cli") as active:  # the run itself logs fine
        run_id = active.info.run_id
        # the run's own params are logged by now; logging the same values again is allowed
        MlflowClient().log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    assert MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.params == params


@pytest.mark.spawn
@pytest.mark.parametrize("field", ["preset", "dataset.name"])
def test_run_with_a_7000_char_param_finishes(compose_raw, tracking_uri, field):
    raw = compose_raw("experiment=reg_mse")
    with open_dict(raw):
        OmegaConf.update(raw, field, "x" * 7000)
        raw.tracking.uri = tracking_uri
    cfg = validate(raw)  # validate accepts it
    with tracking.run(cfg, "cli") as active:
        run_id = active.info.run_id
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    value = run.data.params[field]
    assert value.endswith(tracking.TRUNCATED)
    assert value.startswith("x" * 1000)
    assert len(value) <= 6000
    assert all(len(tag) <= 8000 for tag in run.data.tags.values())


@pytest.mark.spawn
def test_epoch_metrics_buffer_until_flush_and_split_large_batches(tiny_cfg, tracking_uri):
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH

    client = MlflowClient(tracking_uri=tracking_uri)
    assert tracking.epoch_metrics() is None  # no active run: nothing to buffer for
    with tracking.run(tiny_cfg(), "cli") as active:
        run_id = active.info.run_id
        buffered = tracking.epoch_metrics()
        assert buffered is not None
        buffered.flush_every = 3600
        for epoch in range(1, 601):  # 1200 values: more than one log_batch may carry
            buffered.add(epoch, {"loss": 1.0 / epoch, "val_loss": 2.0 / epoch})
        assert len(buffered.pending) == 1200 > MAX_METRICS_PER_BATCH
        assert client.get_metric_history(run_id, "loss") == []
        buffered.flush()  # sent before it returns, in batches MLflow accepts
        assert buffered.pending == []
        assert len(client.get_metric_history(run_id, "loss")) == 600
        at_once = tracking.EpochMetrics(flush_every=0)
        at_once.add(1, {"other": 0.5})  # due at once: sent by add itself
        assert [m.value for m in client.get_metric_history(run_id, "other")] == [0.5]
    for key, scale in (("loss", 1.0), ("val_loss", 2.0)):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, 601))
        assert [m.value for m in history] == pytest.approx([scale / e for e in range(1, 601)])


def _metric_history_plan(uri: str, run_id: str) -> str:
    """SQLite's plan for the query MLflow's store makes to read one run's history of a metric."""

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        if "FROM metrics" in statement:
            statements.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", keep)  # every engine: MLflow's store's too
    try:
        MlflowClient(uri).get_metric_history(run_id, "loss")
    finally:
        event.remove(Engine, "before_cursor_execute", keep)
    (statement, parameters), db = statements[-1], uri.removeprefix("sqlite:///")
    with sqlite3.connect(db) as connection:
        return " | ".join(
            row[-1] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
        )


def test_a_runs_metric_history_is_read_through_its_own_index_as_the_store_grows(
    tiny_cfg, tracking_uri, monkeypatch
):
    """The next process to open a store that has doubled gathers its statistics (a process
    opens a store once: a sweep's worker runs job after job on it)."""
    from mlflow.entities import Metric

    cfg, client = tiny_cfg(), MlflowClient(tracking_uri)
    experiment_id = tracking.prepare(cfg)
    run_ids = []
    for _ in range(30):  # 6,000 values of one key, 200 per run
        run_id = client.create_run(experiment_id).info.run_id
        metrics = [Metric("loss", 1.0 / step, 0, step) for step in range(1, 201)]
        client.log_batch(run_id, metrics=metrics)
        run_ids.append(run_id)
    # without statistics SQLite takes the index that starts with the key: every run's values
    assert "index_metrics_run_uuid_key_step" not in _metric_history_plan(tracking_uri, run_ids[0])
    tracking.prepare(cfg)  # the same process: nothing more
    assert "index_metrics_run_uuid_key_step" not in _metric_history_plan(tracking_uri, run_ids[0])
    monkeypatch.setattr(tracking, "_PREPARED", {})  # as in the next process
    tracking.prepare(cfg)
    assert "(run_uuid=? AND key=?)" in _metric_history_plan(tracking_uri, run_ids[0])


# --------------------------------------------------------------------------------------------
# 4. Lifecycle: every way a run ends
# --------------------------------------------------------------------------------------------


@pytest.mark.spawn
def test_exception_marks_run_failed_and_propagates(tiny_cfg, tracking_uri):
    with (
        pytest.raises(RuntimeError, match="boom in step"),
        tracking.run(tiny_cfg(), "cli") as active,
    ):
        run_id = active.info.run_id
        raise RuntimeError("boom in step")
    assert mlflow.active_run() is None
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.info.end_time is not None
    assert "RuntimeError" in run.data.tags["losslab.error"]
    assert "boom in step" in run.data.tags["losslab.error"]


@pytest.mark.spawn
def test_keyboard_interrupt_marks_run_killed(tiny_cfg, tracking_uri):
    with pytest.raises(KeyboardInterrupt), tracking.run(tiny_cfg(), "cli") as active:
        run_id = active.info.run_id
        raise KeyboardInterrupt
    assert mlflow.active_run() is None
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["losslab.error"]


@pytest.mark.spawn
def test_resumed_run_that_succeeds_clears_an_earlier_error(tiny_cfg, tracking_uri):
    cfg = tiny_cfg()
    client = MlflowClient(tracking_uri=tracking_uri)
    with pytest.raises(ValueError), tracking.run(cfg, "dvc") as active:
        run_id = active.info.run_id
        raise ValueError("stage failed")
    assert "stage failed" in client.get_run(run_id).data.tags["losslab.error"]
    params_before = client.get_run(run_id).data.params

    with tracking.run(cfg, "dvc", run_id=run_id, describe=False) as resumed:
        assert resumed.info.run_id == run_id
        mlflow.log_metric("resumed", 1.0)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "losslab.error" not in run.data.tags
    assert run.data.metrics["resumed"] == 1.0
    assert run.data.params == params_before
    assert len(all_runs(tracking_uri)) == 1


@pytest.mark.spawn
def test_diverging_loss_fails_the_run_with_the_reason(tiny_cfg, tracking_uri, tmp_path):
    from losslab.training import TrainingDiverged

    cfg = tiny_cfg("experiment=reg_mse", "optimizer.learning_rate=1e6", epochs=5)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        app.run(cfg, tmp_path / "out")
    assert mlflow.active_run() is None
    (run,) = all_runs(tracking_uri)
    assert run.info.status == "FAILED"
    error = run.data.tags["losslab.error"]
    assert error.startswith("TrainingDiverged:")
    assert "non-finite" in error and "optimizer.learning_rate" in error
    # the epochs seen before the failure were flushed, not lost with the buffer
    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(run.info.run_id, "loss")
    assert history and history[0].step == 1


@pytest.mark.spawn
def test_sigterm_to_losslab_marks_run_killed(tiny_cfg, tracking_uri, tmp_path):
    tracking.prepare(tiny_cfg())  # the store exists, so polling it cannot race its creation
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_experiment_by_name("losslab").experiment_id
    cmd = [
        LOSSLAB,
        "experiment=reg_mse",
        "trainer.epochs=100000",
        "trainer.verbose=2",  # a line per epoch: "Epoch 2/100000" once the first one is done
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=run_env(tracking_uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        running = wait_for(
            lambda: client.search_runs(
                [experiment_id], filter_string="attributes.status = 'RUNNING'"
            ),
            timeout=60,
            what="a RUNNING run",
            proc=proc,
        )
        run_id = running[0].info.run_id
        assert running[0].data.tags["losslab.pid"] == str(proc.pid)  # no other process holds it
        wait_for_line(proc, "Epoch 2/", timeout=120)  # stop it mid-training
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted" in stderr
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "signal" in run.data.tags["losslab.error"]
    assert [r.info.status for r in all_runs(tracking_uri)] == ["KILLED"]


@pytest.mark.spawn
def test_an_error_a_sigterm_turned_into_still_ends_the_run_killed(
    tiny_cfg, tracking_uri, monkeypatch, capsys
):
    """TensorFlow tracing a graph can swallow what the SIGTERM handler raises and fail later
    with an error of its own; the command still ends as interrupted and its run KILLED."""
    monkeypatch.setattr(cli, "_TERMINATED_BY", None)  # put back after: pytest was not stopped
    swallowed = []

    def swallowing_library() -> None:
        try:
            signal.raise_signal(signal.SIGTERM)  # its handler runs before this returns
        except BaseException as error:
            swallowed.append(error)
        raise TypeError("Failed to convert elements of (None,) to Tensor")

    with (
        pytest.raises(SystemExit) as stopped,
        cli.reported_errors("losslab"),
        tracking.run(tiny_cfg(), "cli"),
    ):
        run_id = tracking.active_run_id()
        swallowing_library()
    assert [type(error) for error in swallowed] == [cli.Terminated]
    assert stopped.value.code == cli.EXIT_INTERRUPTED
    assert "losslab: interrupted (terminated by signal 15)" in capsys.readouterr().err
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["losslab.error"] == "terminated by signal 15"


@pytest.fixture
def python_ctrl_c():
    """SIGINT handled as Python handles it by default (raising KeyboardInterrupt), whatever the
    test process had, and losslab's record of it cleared; both put back after."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cli, "_CTRL_C", False, raising=False)
            yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.spawn
def test_a_ctrl_c_a_library_swallowed_is_raised_again(tiny_cfg, tracking_uri, python_ctrl_c):
    """Keras's callbacks swallow every exception, KeyboardInterrupt included; the training
    loop's raise_if_terminated after each epoch raises it again (a swallowed Ctrl-C left the
    train stage hanging in TensorFlow's next call). The run ends KILLED."""
    swallowed = []
    with pytest.raises(KeyboardInterrupt), tracking.run(tiny_cfg(), "cli"):
        run_id = tracking.active_run_id()
        try:
            signal.raise_signal(signal.SIGINT)  # its handler runs before this returns
        except KeyboardInterrupt as error:  # as Keras's pythonify_logs does with anything
            swallowed.append(error)
        cli.raise_if_terminated()
    assert len(swallowed) == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "KILLED"


# --------------------------------------------------------------------------------------------
# 5. Several runs: one process after another, concurrent jobs on a fresh store
# --------------------------------------------------------------------------------------------

CHILD_TWO_RUNS = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path


    class MlflowImports:  # counts imports of mlflow: finders are asked only while it is not loaded
        count = 0

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            cls.count += name == "mlflow"
            return None


    sys.meta_path.insert(0, MlflowImports)

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    opened = []
    init = SqlAlchemyStore.__init__


    def counted_init(self, db_uri, *args, **kwargs):
        opened.append(db_uri)
        init(self, db_uri, *args, **kwargs)


    SqlAlchemyStore.__init__ = counted_init

    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from losslab import app
    from losslab.app import CONF_DIR

    uri, out = sys.argv[1], Path(sys.argv[2])
    small = ["experiment=reg_mse", "trainer.epochs=2", "trainer.verbose=0"]
    small += ["dataset.n_samples=100", "dataset.n_test=50"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        configs = [compose("config", overrides=[*small, f"seed={seed}"]) for seed in (0, 1)]
    for seed, cfg in enumerate(configs):
        with open_dict(cfg):
            cfg.tracking.uri = uri
        app.run(cfg, out / f"seed{seed}")
    print(json.dumps({"mlflow_imports": MlflowImports.count, "opened": opened}))
    """
)


def test_one_process_imports_mlflow_once_and_opens_the_store_once(tracking_uri, tmp_path):
    """Two runs one after another in one process (a sweep's worker runs many): the second one
    reuses MLflow as imported and the store as opened by the first."""
    done = run_command(
        [sys.executable, "-c", CHILD_TWO_RUNS, tracking_uri, str(tmp_path / "out")],
        tmp_path,
        tracking_uri,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    assert counts["mlflow_imports"] == 1
    db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    ours = [
        uri
        for uri in counts["opened"]
        if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).resolve() == db
    ]
    assert len(ours) == 1, counts["opened"]
    runs = all_runs(tracking_uri)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    for run in runs:
        assert run.data.tags["losslab.pid"] == runs[0].data.tags["losslab.pid"]  # one process
        assert len(run.outputs.model_outputs) == 1


CHILD_TRACK = textwrap.dedent(
    """
    import sys
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    import mlflow
    from losslab import tracking
    from losslab.app import CONF_DIR
    from losslab.config import validate

    uri, index = sys.argv[1], int(sys.argv[2])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        raw = compose(config_name="config", overrides=[f"seed={index}"])
    with open_dict(raw):
        raw.tracking.uri = uri
    cfg = validate(raw)
    print("ready", flush=True)
    sys.stdin.readline()  # start all jobs together, after their imports: the test says when
    tracking.prepare(cfg)
    with tracking.run(cfg, "multirun"):
        for step in range(1, 4):
            mlflow.log_metric("loss", 1.0 / step, step=step)
    print("done", index)
    """
)


def test_concurrent_jobs_on_a_fresh_store(tmp_path):
    db = tmp_path / "fresh" / "mlflow.db"
    uri = f"sqlite:///{db}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_TRACK, uri, str(index)],
            cwd=tmp_path,
            env=run_env(uri),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(4)
    ]
    try:
        for proc in procs:
            wait_for_line(proc, "ready", timeout=120)
        assert not db.exists()  # every job is ready: the store is made by all of them at once
        for proc in procs:  # the go: each job reads this line and goes on
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outputs = [proc.communicate(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for index, (proc, (stdout, stderr)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, stderr[-3000:]
        assert f"done {index}" in stdout.splitlines()
    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments(view_type=ViewType.ALL)
    assert sorted(e.name for e in experiments) == ["Default", "losslab"]
    runs = all_runs(uri)
    assert len(runs) == 4
    losslab_id = client.get_experiment_by_name("losslab").experiment_id
    assert {r.info.experiment_id for r in runs} == {losslab_id}
    assert [r.info.status for r in runs] == ["FINISHED"] * 4
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 3


# --------------------------------------------------------------------------------------------
# 6. Store location
# --------------------------------------------------------------------------------------------


SMALL_UNTRACKED = [
    "experiment=reg_mse",
    "tracking.enabled=false",
    "trainer.epochs=3",
    "trainer.verbose=0",
    "dataset.n_samples=200",
    "dataset.n_test=100",
]


def test_untracked_run_never_imports_mlflow(tmp_path):
    """MLflow costs 1 to 2 s to import: a run with tracking off must not pay for it."""
    script = textwrap.dedent(
        f"""
        import sys
        from hydra import compose, initialize_config_dir
        from losslab.app import CONF_DIR, run

        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides={SMALL_UNTRACKED!r})
        run(cfg, {str(tmp_path)!r})
        print(sorted(name for name in sys.modules if name.split(".")[0] == "mlflow"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "[]", done.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["test"]["loss"] >= 0


def test_default_store_is_mlflow_db_at_the_repo_root(compose_raw, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = validate(compose_raw())
    assert cfg.tracking.uri is None
    expected = "sqlite:///" + str((REPO_ROOT / "mlflow.db").resolve())
    assert tracking.tracking_uri(cfg) == expected
    assert tracking.default_uri() == expected
    assert Path(expected.removeprefix("sqlite:///")).is_absolute()


def test_env_var_then_config_choose_the_store(compose_raw, monkeypatch, tmp_path):
    from_env = f"sqlite:///{tmp_path / 'env.db'}"
    from_cfg = f"sqlite:///{tmp_path / 'cfg.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", from_env)
    assert tracking.tracking_uri(validate(compose_raw())) == from_env
    assert tracking.tracking_uri(validate(compose_raw(f"tracking.uri={from_cfg}"))) == from_cfg


def test_masked_uri_hides_the_password():
    masked = tracking.masked_uri("postgresql://u:secret@host/db")
    assert "secret" not in masked
    assert masked.startswith("postgresql://u:") and masked.endswith("@host/db")
    assert tracking.masked_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"
    assert tracking.masked_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert "pw" not in tracking.masked_uri("https://user:pw@example.com:8443/path")


# --------------------------------------------------------------------------------------------
# 7. A real tracking server
# --------------------------------------------------------------------------------------------


@pytest.fixture
def tracking_server(tmp_path):
    with mlflow_server(tmp_path) as url:
        yield url


@pytest.mark.slow
@pytest.mark.spawn
def test_app_run_against_a_tracking_server(tracking_server, compose_raw, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    cfg = small_cfg(compose_raw, "experiment=blobs_kld", uri=tracking_server, epochs=2)
    results = app.run(cfg, tmp_path / "out")

    client = MlflowClient(tracking_uri=tracking_server)
    (run,) = all_runs(tracking_server)
    assert run.info.status == "FINISHED"
    assert run.data.tags["losslab.tracking_uri"] == tracking_server
    assert run.data.metrics["test_accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
    assert run.data.params == tracking.config_params(cfg)
    assert artifact_paths(client, run.info.run_id) >= ARTIFACTS
    (output,) = run.outputs.model_outputs
    model_files = {a.path for a in client.list_logged_model_artifacts(output.model_id)}
    assert {"MLmodel", "input_example.json"} <= model_files
    mlflow.set_tracking_uri(tracking_server)
    x_test = np.load(tmp_path / "out" / "data" / "dataset.npz")["x_test"]
    predictions = mlflow.pyfunc.load_model(f"models:/{output.model_id}").predict(x_test)
    assert np.asarray(predictions).shape == (len(x_test), 3)


# --------------------------------------------------------------------------------------------
# 8. `mlflow run` on the MLproject: test_faults.py::
#    test_dvc_repro_losslab_and_mlflow_run_give_identical_results (its run's entry point,
#    preset, params and metrics, beside those of dvc repro and losslab).
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# 9. What the design leaves out
# --------------------------------------------------------------------------------------------

# Each pattern names something the tracking code once used and must not use again: forked
# processes (unsafe once TensorFlow's and MLflow's threads run, and absent on macOS and Windows),
# a Unix socket in the abstract namespace (Linux only), the idle scheduling class, fork hooks,
# and MLflow's private names (which change between MLflow's releases without notice).
FORBIDDEN = {
    "fork context": re.compile(
        r"""get_context\(\s*["']fork(?:server)?["']|set_start_method\(\s*["']fork"""
        r"""|\bos\.fork(?:pty)?\("""
    ),
    "abstract socket": re.compile(
        r"""\bAF_UNIX\b|\b(?:bind|connect|Listener|Client)\(\s*(?:address\s*=\s*)?"""
        r"""b?["']\\(?:0|x00)"""
    ),
    "SCHED_IDLE": re.compile(r"\bSCHED_IDLE\b|\bsched_setscheduler\b"),
    "register_at_fork": re.compile(r"\bregister_at_fork\b"),
    "private MLflow attribute": re.compile(r"\bmlflow(?:\.[A-Za-z]\w*)*\._[A-Za-z0-9]\w*"),
}
FROM_MLFLOW_IMPORT = re.compile(
    r"^[ \t]*from[ \t]+(mlflow(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.MULTILINE
)
PRIVATE = re.compile(r"^_(?!_)")  # _name, but not __version__


def forbidden_uses(text: str) -> list[str]:
    found = [
        f"{what}: {match.group(0)!r}"
        for what, pattern in FORBIDDEN.items()
        for match in pattern.finditer(text)
    ]
    for match in FROM_MLFLOW_IMPORT.finditer(text):
        module, names = match.group(1), match.group(2).strip("()")
        pieces = re.sub(r"#[^\n]*", "", names).split(",")
        imported = [piece.split()[0] for piece in pieces if piece.strip()]  # "x as y": x
        private = [name for name in (*module.split("."), *imported) if PRIVATE.match(name)]
        if private:
            found.append(f"private MLflow import: {match.group(0)!r}")
    return found


def test_src_has_no_fork_abstract_socket_sched_idle_or_private_mlflow_use():
    bad = [
        'context = multiprocessing.get_context("fork")',
        "ctx = mp.get_context('forkserver')",
        "pid = os.fork()",
        r'server.bind("\0losslab-tracker")',
        r"sock.connect(b'\x00losslab')",
        "socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)",
        "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))",
        "os.register_at_fork(after_in_child=reset)",
        "from mlflow.tracking._tracking_service.utils import get_tracking_uri",
        "from mlflow.utils.validation import _validate_run_id",
        "from mlflow.models import (\n    Model,\n    _private_helper,  # a note\n)",
        "mlflow.tracking._tracking_service.utils._tracking_uri = None",
        "store = mlflow.tracking._get_store()",
    ]
    for line in bad:
        assert forbidden_uses(line), f"not recognized: {line!r}"
    good = [
        "import mlflow",
        "from mlflow.entities import Metric, Param, RunStatus",
        "from mlflow.models import (\n    Model,\n    infer_signature,\n)",
        "version = mlflow.__version__",
        "mlflow.keras.save_model(model, path)",
        'context = multiprocessing.get_context("spawn")',
        'fields = line.split("\\0")',
    ]
    for line in good:
        assert not forbidden_uses(line), f"wrongly flagged: {line!r}"

    files = [p for p in SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert SRC / "losslab" / "tracking.py" in files
    found = {
        str(path.relative_to(SRC)): uses
        for path in files
        if (uses := forbidden_uses(path.read_text(errors="replace")))
    }
    assert found == {}
