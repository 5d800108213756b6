"""MLflow tracking: what a run holds, how every run ends, and where runs go.

Everything runs against the real MLflow (SQLite stores in temp dirs, a real ``mlflow server``
and a real ``mlflow run``); no run is ever written to the repo's ``mlflow.db``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT, all_runs, mlflow_server, run_command, run_env, shrink, wait_for
from mlflow.entities import Param, RunStatus, ViewType
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from losslab import app, cli, tracking
from losslab.config import as_plain, validate

BIN = Path(sys.executable).parent
LOSSLAB = str(BIN / "losslab")
MLFLOW = str(BIN / "mlflow")
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


@pytest.fixture(scope="module")
def app_run(compose_raw, tmp_path_factory) -> AppRun:
    """One ``losslab`` command, as a user runs it: its side process does the MLflow work."""
    root = tmp_path_factory.mktemp("app_run")
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    overrides = [
        "experiment=circles_hinge",
        f"trainer.epochs={EPOCHS}",
        "trainer.verbose=0",
        "dataset.n_samples=200",
        "dataset.n_test=100",
    ]
    done = run_command([LOSSLAB, *overrides, f"hydra.run.dir={root / 'out'}"], root, uri)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = all_runs(uri)
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    return AppRun(validate(compose_raw(*overrides)), uri, root / "out", overrides, runs[0])


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


def test_app_run_final_metrics_equal_metrics_json(app_run):
    written = json.loads((app_run.out / "metrics.json").read_text())
    expected = {f"{split}_{k}": v for split, scores in written.items() for k, v in scores.items()}
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(expected)
    logged = app_run.run.data.metrics
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_app_run_tags(app_run):
    tags = app_run.run.data.tags
    assert tags["mlflow.runName"] == "circles_noisy·hinge·sgd·s0"
    assert app_run.run.info.run_name == "circles_noisy·hinge·sgd·s0"
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
    for tag, package in (
        ("version.tensorflow", "tensorflow-cpu"),
        ("version.keras", "keras"),
        ("version.mlflow", "mlflow"),
        ("version.hydra-core", "hydra-core"),
        ("version.dvc", "dvc"),
    ):
        assert tags[tag] == metadata.version(package), tag


def test_app_run_dataset_input_carries_the_data_hash(app_run):
    meta = json.loads((app_run.out / "data" / "dataset.json").read_text())
    inputs = app_run.run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset_tags = {tag.key: tag.value for tag in inputs[0].tags}
    assert dataset_tags["losslab.data_hash"] == meta["sha256"]
    assert dataset_tags["mlflow.data.context"] == "training"
    assert inputs[0].dataset.name == app_run.cfg.dataset.name
    assert inputs[0].dataset.digest == meta["sha256"][:32]


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


def test_logged_model_folder_is_the_one_mlflow_keras_writes(app_run, tmp_path):
    """The process that holds a run files the model without importing Keras
    (``tracking._KerasFile``): its folder must be what ``mlflow.keras.save_model`` writes."""
    import keras

    mlflow.set_tracking_uri(app_run.uri)
    ours = Path(
        mlflow.artifacts.download_artifacts(_model_uri(app_run), dst_path=str(tmp_path / "ours"))
    )
    model = keras.models.load_model(ours / "data" / "model.keras")
    example = np.load(app_run.out / "data" / "dataset.npz")["x_test"][:5]
    theirs = tmp_path / "theirs"
    theirs.mkdir()  # mlflow.keras writes the input example before it creates the folder
    mlflow.keras.save_model(
        model,
        str(theirs),
        signature=mlflow.models.infer_signature(example, model.predict(example, verbose=0)),
        input_example=example,
        pip_requirements=(ours / "requirements.txt").read_text().splitlines(),
    )

    def files(folder: Path) -> set[str]:
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}

    assert files(ours) - {"registered_model_meta"} == files(theirs)  # that one is Model.log's
    for name in files(theirs) - {"MLmodel", "data/model.keras"}:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name
    described, expected = (yaml.safe_load((d / "MLmodel").read_text()) for d in (ours, theirs))
    for key in ("flavors", "signature", "saved_input_example_info"):
        assert described[key] == expected[key], key
    assert abs(described["model_size_bytes"] - expected["model_size_bytes"]) < 1000


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


def test_config_params_with_long_keys_can_be_logged(tracking_uri, tiny_cfg):
    cfg = tiny_cfg()
    params = tracking.config_params(with_extra(cfg, {"n": {"k" * 300: 1}}))
    assert any(len(key) == 250 for key in params)
    with tracking.run(cfg, "cli") as active:  # the run itself logs fine
        run_id = active.info.run_id
        tracking.wait_for_background()  # the run's own params first: the same keys, raced
        MlflowClient().log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    assert MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.params == params


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


def test_epoch_metrics_buffer_until_flush_and_split_large_batches(tiny_cfg, tracking_uri):
    client = MlflowClient(tracking_uri=tracking_uri)
    with tracking.run(tiny_cfg(), "cli") as active:
        run_id = active.info.run_id
        buffered = tracking.EpochMetrics(flush_every=3600)
        for epoch in range(1, 601):  # 1200 values: more than one log_batch may carry
            buffered.add(epoch, {"loss": 1.0 / epoch, "val_loss": 2.0 / epoch})
        assert client.get_metric_history(run_id, "loss") == []
        buffered.flush()
        at_once = tracking.EpochMetrics(flush_every=0)
        at_once.add(1, {"other": 0.5})
        tracking.wait_for_background()  # flushes are sent from a background thread
        assert len(client.get_metric_history(run_id, "other")) == 1
    for key, scale in (("loss", 1.0), ("val_loss", 2.0)):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, 601))
        assert [m.value for m in history] == pytest.approx([scale / e for e in range(1, 601)])


def _metric_history_plan(uri: str, run_id: str) -> str:
    """SQLite's plan for the query MLflow's store makes to read one run's history of a metric."""
    import sqlite3

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
    tiny_cfg, tracking_uri
):
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
    tracking.prepare(cfg)
    assert "(run_uuid=? AND key=?)" in _metric_history_plan(tracking_uri, run_ids[0])


# --------------------------------------------------------------------------------------------
# 4. Lifecycle: every way a run ends
# --------------------------------------------------------------------------------------------


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


def test_keyboard_interrupt_marks_run_killed(tiny_cfg, tracking_uri):
    with pytest.raises(KeyboardInterrupt), tracking.run(tiny_cfg(), "cli") as active:
        run_id = active.info.run_id
        raise KeyboardInterrupt
    assert mlflow.active_run() is None
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["losslab.error"]


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


def test_sigterm_to_losslab_marks_run_killed(tiny_cfg, tracking_uri, tmp_path):
    tracking.prepare(tiny_cfg())  # the store exists, so polling it cannot race its creation
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_experiment_by_name("losslab").experiment_id
    cmd = [
        LOSSLAB,
        "experiment=reg_mse",
        "trainer.epochs=100000",
        "trainer.verbose=0",
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
        # the dataset input is logged right before training starts: stop it mid-training
        wait_for(
            lambda: client.get_run(run_id).inputs.dataset_inputs,
            timeout=60,
            what="training to start",
            proc=proc,
        )
        time.sleep(1)
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


@pytest.mark.parametrize("beside", [False, True], ids=["here", "side-process"])
def test_an_error_a_sigterm_turned_into_still_ends_the_run_killed(
    tiny_cfg, tracking_uri, monkeypatch, capsys, beside
):
    """TensorFlow tracing a graph can swallow what the SIGTERM handler raises and fail later
    with an error of its own; the command still ends as interrupted and its run KILLED."""
    monkeypatch.setattr(cli, "_TERMINATED_BY", None)  # put back after: pytest was not stopped

    def swallowing_library() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises here
        except BaseException:
            pass
        raise TypeError("Failed to convert elements of (None,) to Tensor")

    with (
        pytest.raises(SystemExit) as stopped,
        cli.reported_errors("losslab"),
        tracking.run(tiny_cfg(), "cli", beside=beside),
    ):
        run_id = tracking.run_record()["run_id"]
        swallowing_library()
    assert stopped.value.code == cli.EXIT_INTERRUPTED
    assert "losslab: interrupted (terminated by signal 15)" in capsys.readouterr().err
    run = MlflowClient(tracking_uri).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["losslab.error"] == "terminated by signal 15"


CHILD_SIDE_DIES = textwrap.dedent(
    """
    import os, signal, sys
    from hydra import compose, initialize_config_dir
    from losslab import tracking
    from losslab.app import CONF_DIR
    from losslab.config import validate

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose("config", overrides=["experiment=reg_mse"]))
    try:
        with tracking.run(cfg, "cli", beside=True):
            side = tracking._SIDE.process
            print("run", tracking.run_record()["run_id"], "held by", side.pid, flush=True)
            os.kill(side.pid, signal.SIGKILL)
            side.join()
            tracking.log_metrics({"after": 1.0})  # queued for a process that is gone
    except RuntimeError as error:
        print("raised:", error)
    """
)


def test_a_side_process_that_dies_fails_the_command_and_leaves_the_run_to_the_doctor(
    tracking_uri, tmp_path
):
    done = run_command([sys.executable, "-c", CHILD_SIDE_DIES], tmp_path, tracking_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    started, raised = done.stdout.strip().splitlines()[-2:]
    _, run_id, _, _, side = started.split()
    lost = f"the tracking process ended unexpectedly (exit code {-signal.SIGKILL})"
    assert raised == f"raised: {lost}"
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    assert run.info.status == "RUNNING"  # nobody could end it: losslab-doctor's case
    assert run.data.tags["losslab.pid"] == side
    assert "after" not in run.data.metrics


CHILD_TWO_RUNS = textwrap.dedent(
    """
    import sys
    from hydra import compose, initialize_config_dir
    from losslab import tracking
    from losslab.app import CONF_DIR
    from losslab.config import validate

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose("config", overrides=["experiment=reg_mse"]))
    for value in (1.0, 2.0):  # the first run leaves this process's background thread running
        with tracking.run(cfg, "cli", beside=True):
            tracking.log_metrics({"value": value})
            print("run", tracking.run_record()["run_id"], flush=True)
    """
)


def test_one_process_hands_one_run_after_another_to_side_processes(tracking_uri, tmp_path):
    """Each side process is forked from a process whose background thread already sends (the
    second one's copy of that thread would not exist, and its own logging would never run)."""
    done = run_command([sys.executable, "-c", CHILD_TWO_RUNS], tmp_path, tracking_uri, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    run_ids = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("run ")]
    client = MlflowClient(tracking_uri=tracking_uri)
    runs = [client.get_run(run_id) for run_id in run_ids]
    assert [(r.info.status, r.data.metrics["value"]) for r in runs] == [
        ("FINISHED", 1.0),
        ("FINISHED", 2.0),
    ]


CHILD_AHEAD = textwrap.dedent(
    """
    import sys
    from hydra import compose, initialize_config_dir
    from losslab import tracking
    from losslab.app import CONF_DIR
    from losslab.config import validate

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = validate(compose("config", overrides=["experiment=reg_mse", *sys.argv[1:]]))
    with tracking.SideProcess.ahead():
        ahead = tracking._AHEAD.process
        with tracking.run(cfg, "cli", beside=True):
            holder = tracking._SIDE.process.pid if tracking._SIDE else None
            print("ahead", ahead.pid, "holder", holder, "run", tracking.run_record()["run_id"])
            print("left waiting:", tracking._AHEAD is not None, ahead.exitcode)
    """
)


def test_the_side_process_forked_ahead_holds_the_run_or_is_stopped_unused(tracking_uri, tmp_path):
    tracked = run_command([sys.executable, "-c", CHILD_AHEAD], tmp_path, tracking_uri)
    assert tracked.returncode == 0, tracked.stderr[-3000:]
    started, left = tracked.stdout.strip().splitlines()[-2:]
    _, ahead, _, holder, _, run_id = started.split()
    assert holder == ahead  # the run took the process forked before the config was read
    assert left == "left waiting: False None"  # still holding the run
    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["losslab.pid"] == ahead

    untracked = run_command(
        [sys.executable, "-c", CHILD_AHEAD, "tracking.enabled=false"], tmp_path, tracking_uri
    )
    assert untracked.returncode == 0, untracked.stderr[-3000:]
    started, left = untracked.stdout.strip().splitlines()[-2:]
    assert started.split()[3:] == ["None", "run", "None"]
    assert left == f"left waiting: False {-signal.SIGKILL}"  # stopped as the run began untracked
    assert [r.info.run_id for r in all_runs(tracking_uri)] == [run_id]  # no run of its own


# --------------------------------------------------------------------------------------------
# 5. Concurrent jobs on a fresh store
# --------------------------------------------------------------------------------------------

CHILD_TRACK = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict
    import mlflow
    from losslab import tracking
    from losslab.app import CONF_DIR
    from losslab.config import validate

    uri, go, index = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        raw = compose(config_name="config", overrides=[f"seed={index}"])
    with open_dict(raw):
        raw.tracking.uri = uri
    cfg = validate(raw)
    while not go.exists():  # start all jobs together, after their imports
        time.sleep(0.01)
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
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_TRACK, uri, str(go), str(index)],
            cwd=tmp_path,
            env=run_env(uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(4)
    ]
    try:
        time.sleep(2)
        assert not db.exists()
        go.touch()
        outputs = [proc.communicate(timeout=180) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
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
# 8. `mlflow run` on the MLproject
# --------------------------------------------------------------------------------------------


def test_mlflow_run_of_the_project(tiny_cfg, tracking_uri, tmp_path):
    # Made here, the experiment keeps its artifacts in the temp store rather than in the repo.
    tracking.prepare(tiny_cfg())
    overrides = (
        "experiment=blobs_kld trainer.epochs=2 trainer.verbose=0 dataset.n_samples=200 "
        f"dataset.n_test=100 hydra.run.dir={tmp_path / 'mr'}"
    )
    done = subprocess.run(
        [MLFLOW, "run", ".", "--env-manager", "local", "--experiment-name", "losslab"]
        + ["-P", f"overrides={overrides}"],
        cwd=REPO_ROOT,
        env=run_env(tracking_uri),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    (run,) = all_runs(tracking_uri)
    assert run.info.status == RunStatus.to_string(RunStatus.FINISHED)
    assert run.data.tags["losslab.entry_point"] == "mlflow-run"
    assert run.data.tags["losslab.preset"] == "blobs_kld"
    assert run.data.params["loss.name"] == "kld"
    assert run.data.params["trainer.epochs"] == "2"
    assert run.data.params["dataset.n_samples"] == "200"
    written = json.loads((tmp_path / "mr" / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(written["test"]["accuracy"])
