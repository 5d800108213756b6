"""Sweeps and reports: ``losslab -m`` as one parent MLflow run with a child per job, progress
lines, studies, the Optuna search, a failing job, ``losslab-report`` and ``losslab-loss-shapes``.

Everything runs for real (Hydra, Keras, MLflow) in temp dirs; every subprocess gets a private
SQLite store through ``$MLFLOW_TRACKING_URI``, never the repo's ``mlflow.db``. Report tests
build their runs with the MLflow client, so every expected number is computed here from values
the test chose.
"""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import PRESETS, all_runs, run_env
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from losslab.app import CONF_DIR

BIN = Path(sys.executable).parent
LOSSLAB = str(BIN / "losslab")
LOSSLAB_REPORT = str(BIN / "losslab-report")
LOSSLAB_LOSS_SHAPES = str(BIN / "losslab-loss-shapes")
TINY = ("trainer.epochs=2", "dataset.n_samples=200", "dataset.n_test=100")
REPORT_FILES = ("report.md", "report.csv", "test_metric.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LOSS_FILES = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))


def store_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def run(cmd: list[str], cwd: Path, uri: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=run_env(uri), capture_output=True, text=True, timeout=timeout
    )


def output(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


@dataclass
class Sweep:
    """A finished ``losslab -m`` and its runs, split into the parent and its children."""

    done: subprocess.CompletedProcess
    uri: str
    sweep_dir: Path
    runs: list

    @property
    def parents(self) -> list:
        return [r for r in self.runs if r.data.tags.get("losslab.sweep") == "true"]

    @property
    def parent(self):
        assert len(self.parents) == 1, [r.data.tags for r in self.parents]
        return self.parents[0]

    @property
    def children(self) -> list:
        return [r for r in self.runs if r.data.tags.get("losslab.sweep") != "true"]


def multirun(folder: Path, *overrides: str, uri: str | None = None, timeout: float = 600) -> Sweep:
    """``losslab -m <overrides>`` with its sweep dir in ``folder``, and its store there too
    unless ``uri`` names one (conftest's ``empty_store``, where making it is not under test)."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = uri or store_uri(folder / "mlruns")
    sweep_dir = folder / "sweep"
    cmd = [LOSSLAB, "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    done = run(cmd, folder, uri, timeout)
    return Sweep(done, uri, sweep_dir, all_runs(uri))


def progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.match(r"losslab: sweep \d+/", line)]


def assert_png(path: Path, min_bytes: int = 1) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))


def last_value(client: MlflowClient, run_id: str, name: str) -> float:
    history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
    assert history, f"run {run_id} has no {name} history"
    return history[-1].value


# --------------------------------------------------------------------------------------------
# 1. A 3-job multirun: one parent, three children, progress lines, the report.
# --------------------------------------------------------------------------------------------

THREE_LOSSES = ("mse", "mae", "huber")


@pytest.fixture(scope="module")
def three_loss_sweep(tmp_path_factory: pytest.TempPathFactory, empty_store) -> Sweep:
    folder = tmp_path_factory.mktemp("three_losses")
    overrides = (f"loss={','.join(THREE_LOSSES)}", "dataset=regression", *TINY)
    return multirun(folder, *overrides, uri=empty_store(folder))


@pytest.mark.spawn
@pytest.mark.xdist_group("three_loss_sweep")  # the module fixture, made once
def test_multirun_makes_one_parent_with_three_finished_children(three_loss_sweep: Sweep) -> None:
    sweep = three_loss_sweep
    assert sweep.done.returncode == 0, output(sweep.done)
    assert len(sweep.runs) == 4, [r.data.tags.get("mlflow.runName") for r in sweep.runs]
    parent = sweep.parent
    assert parent.info.status == "FINISHED"
    # named after the sweep's own overrides (not Hydra's), in the order given
    overrides = [f"loss={','.join(THREE_LOSSES)}", "dataset=regression", *TINY]
    assert parent.info.run_name == f"sweep-{' '.join(overrides)}"
    assert parent.data.tags["losslab.children_finished"] == "3/3"
    assert parent.data.tags["losslab.n_jobs"] == "3"
    assert parent.data.tags["losslab.entry_point"] == "multirun"
    assert Path(parent.data.tags["losslab.sweep_dir"]) == sweep.sweep_dir.resolve()
    assert "losslab.error" not in parent.data.tags

    children = sweep.children
    assert len(children) == 3
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["losslab.entry_point"] for c in children} == {"multirun"}
    jobs = {c.data.tags["losslab.job"]: c.data.params["loss.name"] for c in children}
    assert jobs == {str(i): loss for i, loss in enumerate(THREE_LOSSES)}  # Hydra's job order
    for child in children:  # each job ran with the sweep's tiny overrides
        # an ASCII name, easy to type in MLflow's search box
        assert child.info.run_name == f"regression-{child.data.params['loss.name']}-sgd-s0"
        assert child.data.params["trainer.epochs"] == "2"
        assert child.data.params["dataset.name"] == "regression"
        assert child.info.start_time >= parent.info.start_time
        assert child.info.end_time <= parent.info.end_time


@pytest.mark.xdist_group("three_loss_sweep")  # the module fixture, made once
def test_multirun_prints_progress_on_stderr(three_loss_sweep: Sweep) -> None:
    stderr = three_loss_sweep.done.stderr
    lines = progress_lines(stderr)
    assert len(lines) == 3, output(three_loss_sweep.done)
    for n, line in enumerate(lines, start=1):
        assert line.startswith(f"losslab: sweep {n}/3 jobs done"), line
        assert re.search(r"\d+:\d\d(:\d\d)? elapsed, ~\d+:\d\d(:\d\d)? left$", line), line
    assert "failed" not in "\n".join(lines)
    assert "Traceback" not in stderr
    assert f"MLflow parent run {three_loss_sweep.parent.info.run_id}" in stderr
    assert "losslab: sweep" not in three_loss_sweep.done.stdout  # progress is on stderr only


@pytest.mark.xdist_group("three_loss_sweep")  # the module fixture, made once
def test_multirun_publishes_report_to_sweep_dir_and_parent(three_loss_sweep: Sweep) -> None:
    sweep = three_loss_sweep
    report = sweep.sweep_dir / "report"
    for name in REPORT_FILES + ("curves_regression.png",):
        assert (report / name).is_file(), sorted(p.name for p in report.iterdir())
    assert_png(report / "test_metric.png", 1000)
    assert_png(report / "curves_regression.png", 1000)

    with (report / "report.csv").open(newline="") as handle:
        rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {f"regression·{loss}·sgd" for loss in THREE_LOSSES}
    for child in sweep.children:
        row = rows[f"regression·{child.data.params['loss.name']}·sgd"]
        assert row["n"] == "1"
        assert row["metric"] == "test_mse"
        assert float(row["mean"]) == pytest.approx(child.data.metrics["test_mse"], abs=5e-5)
        assert float(row["test_loss"]) == pytest.approx(child.data.metrics["test_loss"], abs=5e-5)
        train_seconds = child.data.metrics["train_seconds"]
        assert float(row["train_s"]) == pytest.approx(train_seconds, abs=0.05)
    markdown = (report / "report.md").read_text(encoding="utf-8")
    assert all(label in markdown for label in rows)

    client = MlflowClient(sweep.uri)
    logged = {a.path for a in client.list_artifacts(sweep.parent.info.run_id, "report")}
    assert "report/report.md" in logged, logged
    assert {f"report/{name}" for name in REPORT_FILES} <= logged


def test_untracked_sweep_touches_no_store(tmp_path: Path) -> None:
    sweep = multirun(
        tmp_path, "tracking.enabled=false", "loss=mse,mae", "dataset=regression", *TINY
    )
    assert sweep.done.returncode == 0, output(sweep.done)
    assert len(progress_lines(sweep.done.stderr)) == 2
    assert not (tmp_path / "mlruns").exists()
    assert sorted(p.name for p in sweep.sweep_dir.glob("*/metrics.json")) == ["metrics.json"] * 2
    # the report, from the jobs' folders
    with (sweep.sweep_dir / "report" / "report.csv").open(newline="") as handle:
        rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"regression·mse·sgd", "regression·mae·sgd"}
    for loss in ("mse", "mae"):
        (job,) = [
            folder
            for folder in sweep.sweep_dir.iterdir()
            if (folder / "metrics.json").is_file()
            and f"loss={loss}" in (folder / ".hydra" / "overrides.yaml").read_text()
        ]
        test_mse = json.loads((job / "metrics.json").read_text())["test"]["mse"]
        assert float(rows[f"regression·{loss}·sgd"]["mean"]) == pytest.approx(test_mse, abs=5e-5)
    assert_png(sweep.sweep_dir / "report" / "curves_regression.png", 1000)


# --------------------------------------------------------------------------------------------
# 2. joblib: two worker processes on a fresh SQLite store, each job logged from its worker.
# --------------------------------------------------------------------------------------------


@pytest.mark.spawn
def test_joblib_sweep_on_fresh_store(tmp_path: Path) -> None:
    db = tmp_path / "mlruns" / "mlflow.db"
    assert not db.exists()
    sweep = multirun(
        tmp_path,
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "loss=mse,mae",
        "dataset=regression",
        *TINY,
    )
    assert store_uri(db.parent) == sweep.uri
    text = output(sweep.done)
    assert sweep.done.returncode == 0, text
    assert "database is locked" not in text.lower()
    assert "Joblib.Parallel(n_jobs=2" in text  # really the joblib launcher
    assert "Traceback" not in sweep.done.stderr, text
    parent = sweep.parent
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["losslab.children_finished"] == "2/2"
    assert "losslab.error" not in parent.data.tags
    children = sweep.children
    assert [c.info.status for c in children] == ["FINISHED"] * 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["losslab.job"] for c in children} == {"0", "1"}
    assert sorted(c.data.params["loss.name"] for c in children) == ["mae", "mse"]
    assert sorted(c.info.run_name for c in children) == [
        "regression-mae-sgd-s0",
        "regression-mse-sgd-s0",
    ]
    assert len(progress_lines(sweep.done.stderr)) == 2
    # each job logged its own child run from its worker (two at most); the sweep's own
    # process, which is none of them, holds the parent run
    workers = {c.data.tags["losslab.pid"] for c in children}
    assert 1 <= len(workers) <= 2, workers
    assert parent.data.tags["losslab.pid"] not in workers
    # the report, drawn by the workers, in the sweep dir and logged into the parent
    logged = {a.path for a in MlflowClient(sweep.uri).list_artifacts(parent.info.run_id, "report")}
    for name in REPORT_FILES + ("curves_regression.png",):
        assert (sweep.sweep_dir / "report" / name).is_file(), name
        assert f"report/{name}" in logged, logged
    assert_png(sweep.sweep_dir / "report" / "curves_regression.png", 1000)


# --------------------------------------------------------------------------------------------
# 3. losslab.report on runs made here, and the losslab-report CLI.
# --------------------------------------------------------------------------------------------

CIRCLES, SUCCESS = "circles_separable", 0.96
# far apart compared with the seed-to-seed spread; one value sits exactly on the threshold
CIRCLE_VALUES = {"hinge": [0.95, 0.96, 0.99], "bce": [0.70, 0.74, 0.72]}
# means 1.0 and 1.0667, stds 0.3 and 0.15: the difference is well within the spread
REGRESSION_VALUES = {"mse": [1.0, 1.3, 0.7], "mae": [1.2, 0.9, 1.1]}
OPTIMIZER = "adam"
EPOCHS = 4


def label(dataset: str, loss: str) -> str:
    return f"{dataset}·{loss}·{OPTIMIZER}"


@dataclass
class Store:
    uri: str
    client: MlflowClient
    experiment_id: str
    circles_parent: str  # the older sweep
    regression_parent: str  # the newer sweep, created first


def _child(
    client: MlflowClient,
    experiment_id: str,
    parent: str,
    dataset: str,
    loss: str,
    seed: int,
    value: float,
    status: str = "FINISHED",
) -> str:
    metric = "accuracy" if dataset == CIRCLES else "mse"
    success = str(SUCCESS) if dataset == CIRCLES else "None"
    tags = {"mlflow.parentRunId": parent, "losslab.entry_point": "multirun"}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    params = {
        "dataset.name": dataset,
        "loss.name": loss,
        "optimizer.name": OPTIMIZER,
        "seed": str(seed),
        "dataset.success_accuracy": success,
        "trainer.epochs": str(EPOCHS),
    }
    stamp = int(time.time() * 1000)
    metrics = [
        Metric(f"test_{metric}", value, stamp, 0),
        Metric("test_loss", value / 2, stamp, 0),
        Metric("train_seconds", 1.0 + seed, stamp, 0),
    ]
    for step in range(EPOCHS):  # validation curves converging to the final value
        remaining = EPOCHS - 1 - step
        metrics.append(Metric("val_loss", value / 2 + 0.1 * remaining, stamp, step))
        metrics.append(Metric(f"val_{metric}", value - 0.05 * remaining, stamp, step))
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag("mlflow.runName", f"{dataset}-{loss}-{OPTIMIZER}-s{seed}")],
    )
    client.set_terminated(run_id, status)
    return run_id


def _parent(client: MlflowClient, experiment_id: str, start_time: int, study: str) -> str:
    tags = {"losslab.sweep": "true", "losslab.study": study, "losslab.entry_point": "multirun"}
    return client.create_run(experiment_id, start_time=start_time, tags=tags).info.run_id


@pytest.fixture
def store(tmp_path: Path, tracking_uri: str) -> Store:
    """Two sweeps: circles (older) and regression (newer, but created first), plus a later
    run that is not a sweep; the circles sweep also holds a FAILED child the report ignores."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(
        "losslab", artifact_location=(tmp_path / "mlruns" / "mlartifacts").as_uri()
    )
    now = int(time.time() * 1000)
    newer = _parent(client, experiment_id, now - 60_000, "regression")
    for loss, values in REGRESSION_VALUES.items():
        for seed, value in enumerate(values):
            _child(client, experiment_id, newer, "regression", loss, seed, value)
    older = _parent(client, experiment_id, now - 3_600_000, "circles")
    for loss, values in CIRCLE_VALUES.items():
        for seed, value in enumerate(values):
            _child(client, experiment_id, older, CIRCLES, loss, seed, value)
    _child(client, experiment_id, older, CIRCLES, "hinge", 9, 0.0, status="FAILED")
    for parent in (newer, older):
        client.set_terminated(parent, "FINISHED")
    lone = client.create_run(experiment_id, start_time=now, tags={"losslab.entry_point": "cli"})
    client.set_terminated(lone.info.run_id, "FINISHED")
    return Store(tracking_uri, client, experiment_id, older, newer)


def configurations(store: Store, parent: str) -> list:
    from losslab import report

    return report.group(report.from_store(store.client, report.child_runs(store.client, parent)))


@pytest.mark.spawn
def test_report_drawn_by_joblib_workers_is_the_report_drawn_serially(
    store: Store, tmp_path: Path, compose_raw
) -> None:
    """A sweep on the joblib launcher hands the figures to its workers (``run_all``): fresh
    processes, which must draw exactly what this process draws by itself."""
    from hydra import compose

    from losslab import report
    from losslab.sweep import _Workers

    found = configurations(store, store.circles_parent)
    found += configurations(store, store.regression_parent)
    # compose_raw holds Hydra initialized on conf/
    cfg = compose(
        "config",
        overrides=["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        return_hydra_config=True,
    )
    workers = _Workers.of(cfg.hydra.launcher)
    assert workers is not None and workers.count == 2
    alone = report.draw(found, tmp_path / "alone")
    shared = report.draw(found, tmp_path / "shared", workers.call_all)
    assert (
        [p.name for p in shared]
        == [p.name for p in alone]
        == [
            f"curves_{CIRCLES}.png",
            "curves_regression.png",
            "test_metric.png",
        ]
    )
    for one, two in zip(alone, shared, strict=True):
        assert_png(two, 1000)
        assert two.read_bytes() == one.read_bytes(), two.name


def test_group_forms_one_configuration_per_params_less_seed(store: Store) -> None:
    found = configurations(store, store.circles_parent)
    assert [c.label for c in found] == [label(CIRCLES, "bce"), label(CIRCLES, "hinge")]
    for c in found:
        assert len(c.runs) == 3  # the FAILED child is left out
        assert sorted(r.params["seed"] for r in c.runs) == ["0", "1", "2"]
        assert "seed" not in c.params
        assert c.metric == "accuracy" and c.goal == "max"
        assert sorted(c.values) == sorted(CIRCLE_VALUES[c.params["loss.name"]])


def test_table_rows_match_numpy(store: Store) -> None:
    from losslab import report

    for parent, values_by_loss, dataset in (
        (store.circles_parent, CIRCLE_VALUES, CIRCLES),
        (store.regression_parent, REGRESSION_VALUES, "regression"),
    ):
        rows = {r["configuration"]: r for r in report.table_rows(configurations(store, parent))}
        assert set(rows) == {label(dataset, loss) for loss in values_by_loss}
        for loss, values in values_by_loss.items():
            row, v = rows[label(dataset, loss)], np.array(values)
            assert row["n"] == "3"
            assert row["dataset"] == dataset
            assert float(row["mean"]) == pytest.approx(v.mean(), abs=5e-5)
            assert float(row["std"]) == pytest.approx(v.std(ddof=1), abs=5e-5)
            assert float(row["min"]) == pytest.approx(v.min(), abs=5e-5)
            assert float(row["max"]) == pytest.approx(v.max(), abs=5e-5)
            assert float(row["test_loss"]) == pytest.approx((v / 2).mean(), abs=5e-5)
            assert float(row["train_s"]) == pytest.approx(np.mean([1.0, 2.0, 3.0]), abs=0.05)
            if dataset == CIRCLES:
                assert row["metric"] == "test_accuracy"
                expected = float(np.mean(v >= SUCCESS))
                assert float(row["success_rate"]) == pytest.approx(expected, abs=0.005)
            else:
                assert row["metric"] == "test_mse"
                assert row["success_rate"] == "–"  # regression defines no success threshold


def test_success_rate_counts_values_at_or_above_threshold(store: Store) -> None:
    rates = {
        c.params["loss.name"]: c.success_rate for c in configurations(store, store.circles_parent)
    }
    for loss, values in CIRCLE_VALUES.items():
        share = sum(value >= SUCCESS for value in values) / len(values)
        assert rates[loss] == pytest.approx(share)
    assert rates["hinge"] == pytest.approx(2 / 3)  # 0.96 counts, 0.95 does not


def _spread(a: list[float], b: list[float]) -> tuple[float, float]:
    diff = abs(np.mean(a) - np.mean(b))
    return diff, math.hypot(np.std(a, ddof=1), np.std(b, ddof=1))


def test_comparisons_judge_difference_against_spread(store: Store) -> None:
    from losslab import report

    # accuracy: higher is better; the difference is many times the spread
    diff, spread = _spread(CIRCLE_VALUES["hinge"], CIRCLE_VALUES["bce"])
    assert diff > 3 * spread  # the case this test means to build
    (sentence,) = report.comparisons(configurations(store, store.circles_parent))
    best, other = label(CIRCLES, "hinge"), label(CIRCLES, "bce")
    assert sentence.startswith(f"{best} vs {other} on {CIRCLES}: accuracy difference {diff:.3g}")
    assert f"exceeds spread {spread:.3g}" in sentence
    assert sentence.endswith(f"→ {best} is better")
    assert "within spread" not in sentence

    # mse: lower is better; the difference is a fraction of the spread
    diff, spread = _spread(REGRESSION_VALUES["mse"], REGRESSION_VALUES["mae"])
    assert diff < spread / 3
    (sentence,) = report.comparisons(configurations(store, store.regression_parent))
    best, other = label("regression", "mse"), label("regression", "mae")
    assert sentence.startswith(f"{best} vs {other} on regression: mse difference {diff:.3g}")
    assert f"within spread {spread:.3g}" in sentence
    assert "not distinguishable" in sentence
    assert "exceeds spread" not in sentence


def report_cli(store_or_uri: Store | str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    uri = store_or_uri if isinstance(store_or_uri, str) else store_or_uri.uri
    return run([LOSSLAB_REPORT, *args], cwd, uri, timeout=300)


def test_report_cli_for_a_parent(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "rep"
    done = report_cli(store, tmp_path, "--parent", store.circles_parent, "--out", str(out))
    assert done.returncode == 0, output(done)
    assert "Traceback" not in done.stderr
    header = "| configuration | n | test metric (mean ± std) | min | max | test loss |"
    assert header in done.stdout
    for loss, values in CIRCLE_VALUES.items():
        v = np.array(values)
        row = f"| {label(CIRCLES, loss)} | 3 | test_accuracy {v.mean():.4f} ± {v.std(ddof=1):.4f} |"
        assert row in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith(f"logged it to run {store.circles_parent}")

    for name in REPORT_FILES + (f"curves_{CIRCLES}.png",):
        assert (out / name).is_file(), sorted(p.name for p in out.iterdir())
    assert_png(out / "test_metric.png", 1000)
    assert_png(out / f"curves_{CIRCLES}.png", 1000)
    assert not (out / "curves_regression.png").exists()  # only this sweep's dataset
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert header in markdown and "exceeds spread" in markdown
    assert markdown in done.stdout  # what was printed is what was written
    with (out / "report.csv").open(newline="") as handle:
        rows = {row["configuration"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {label(CIRCLES, loss) for loss in CIRCLE_VALUES}
    for loss, values in CIRCLE_VALUES.items():
        assert float(rows[label(CIRCLES, loss)]["mean"]) == pytest.approx(np.mean(values), 5e-5)

    logged = {a.path for a in store.client.list_artifacts(store.circles_parent, "report")}
    expected = {f"report/{name}" for name in REPORT_FILES + (f"curves_{CIRCLES}.png",)}
    assert expected <= logged, logged
    assert not store.client.list_artifacts(store.regression_parent, "report")


def test_report_cli_latest_picks_newest_sweep(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "latest"
    done = report_cli(store, tmp_path, "--latest", "--out", str(out))
    assert done.returncode == 0, output(done)
    assert done.stdout.rstrip().endswith(f"logged it to run {store.regression_parent}")
    for loss in REGRESSION_VALUES:
        assert f"| {label('regression', loss)} | 3 | test_mse" in done.stdout
    assert CIRCLES not in done.stdout
    assert (out / "curves_regression.png").is_file()
    logged = {a.path for a in store.client.list_artifacts(store.regression_parent, "report")}
    assert "report/report.md" in logged


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("losslab-report")]


def test_report_cli_unknown_parent_is_one_clear_line(store: Store, tmp_path: Path) -> None:
    done = report_cli(store, tmp_path, "--parent", "nonexistent-id", "--out", str(tmp_path / "r"))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, output(done)
    (line,) = error_lines(done)
    assert "nonexistent-id" in line
    assert not (tmp_path / "r").exists()


def test_report_cli_latest_on_empty_store_is_one_clear_line(tmp_path: Path) -> None:
    uri = store_uri(tmp_path / "empty")  # no database file at all
    done = report_cli(uri, tmp_path, "--latest", "--out", str(tmp_path / "r"))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, output(done)
    (line,) = error_lines(done)
    assert line.startswith("losslab-report: error: ")
    assert "losslab" in line.removeprefix("losslab-report: error: ")  # names the experiment
    assert not (tmp_path / "r").exists()


def test_report_cli_latest_without_any_sweep_is_one_clear_line(
    tmp_path: Path, tracking_uri: str
) -> None:
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(
        "losslab", artifact_location=(tmp_path / "mlruns" / "mlartifacts").as_uri()
    )
    lone = client.create_run(experiment_id, tags={"losslab.entry_point": "cli"})
    client.set_terminated(lone.info.run_id, "FINISHED")
    done = report_cli(tracking_uri, tmp_path, "--latest", "--out", str(tmp_path / "r"))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, output(done)
    (line,) = error_lines(done)
    assert "no sweep" in line
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------
# 4. Studies compose into the expected job lists.
# --------------------------------------------------------------------------------------------


def _hydra_jobs(cfg) -> list[list[str]]:
    """The job list Hydra's basic sweeper itself builds from the same config."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()]
    arguments += list(cfg.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().hydra.config_loader)
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return batch


def _job_values(job: list[str], *keys: str) -> tuple[str, ...]:
    values = dict(item.split("=", 1) for item in job)
    return tuple(values[key] for key in keys)


def test_studies_compose_into_expected_job_counts(compose_raw) -> None:
    from hydra import compose

    from losslab.sweep import count_jobs

    # compose_raw holds Hydra initialized on conf/ (initialize_config_dir, version_base 1.3)
    reference = [preset for preset in PRESETS if not preset.startswith("real_")]
    assert len(reference) == 11
    seeds = range(5)

    cfg = compose("config", overrides=["study=seeds"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.params)
    assert set(params) == {"experiment", "seed"}
    assert params["experiment"].startswith("glob(*")  # glob(*), or glob(*,exclude=real_*)
    assert params["seed"] == "range(0,5)"
    assert list(cfg.hydra.overrides.task) == ["study=seeds"]
    assert count_jobs(cfg.hydra, CONF_DIR) == len(reference) * len(seeds) == 55
    jobs = _hydra_jobs(cfg)
    assert sorted(_job_values(j, "experiment", "seed") for j in jobs) == sorted(
        (preset, str(seed)) for preset in reference for seed in seeds
    )

    cfg = compose("config", overrides=["study=hinge_family"], return_hydra_config=True)
    assert count_jobs(cfg.hydra, CONF_DIR) == 2 * 3 * 5
    assert sorted(_job_values(j, "experiment", "loss", "seed") for j in _hydra_jobs(cfg)) == sorted(
        (e, loss, str(s))
        for e in ("circles_hinge", "separable_hinge")
        for loss in ("bce", "hinge", "squared_hinge")
        for s in seeds
    )

    cfg = compose("config", overrides=["study=regression"], return_hydra_config=True)
    assert count_jobs(cfg.hydra, CONF_DIR) == 3 * 5
    assert sorted(_job_values(j, "experiment", "seed") for j in _hydra_jobs(cfg)) == sorted(
        (e, str(s)) for e in ("reg_mse", "reg_msle", "reg_mae") for s in seeds
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["loss=mse,mae,huber", "dataset=regression"], 3),
        (["study=regression", "seed=0"], 3),  # the command line comes last and wins
        (["study=regression", "hydra.sweeper.params.seed=0"], 3),
        (["study=seeds", "experiment=glob(reg_*)"], 3 * 5),
        (["loss=glob(*,exclude=[bce,cce])", "seed=range(0,2)"], (len(LOSS_FILES) - 2) * 2),
        (["hydra/launcher=joblib", "loss=mse,mae", "seed=0,1"], 4),
        (["experiment=circles_bce", "hparams_search=lr", "hydra.sweeper.n_trials=3"], 3),
        (["seed=interval(0,1)"], None),  # a continuous range has no job count
    ],
)
def test_count_jobs_agrees_with_hydra(compose_raw, overrides: list[str], expected) -> None:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from losslab.sweep import count_jobs

    cfg = GlobalHydra.instance().hydra.compose_config(
        "config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
    )
    assert count_jobs(cfg.hydra, CONF_DIR) == expected
    if expected is not None and "n_trials" not in cfg.hydra.sweeper:
        assert len(_hydra_jobs(cfg)) == expected


def test_regression_study_with_one_seed_runs_three_jobs(tmp_path: Path, empty_store) -> None:
    sweep = multirun(
        tmp_path,
        "study=regression",
        "hydra.sweeper.params.seed=0",
        "trainer.epochs=1",
        "dataset.n_samples=100",
        "dataset.n_test=50",
        uri=empty_store(tmp_path),
    )
    assert sweep.done.returncode == 0, output(sweep.done)
    parent = sweep.parent
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["losslab.study"] == "regression"
    assert parent.data.tags["losslab.n_jobs"] == "3"
    assert parent.data.tags["losslab.children_finished"] == "3/3"
    children = sweep.children
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["losslab.preset"] for c in children} == {"reg_mse", "reg_msle", "reg_mae"}
    assert {c.data.params["seed"] for c in children} == {"0"}
    assert {c.data.params["trainer.epochs"] for c in children} == {"1"}  # beats the preset's 100
    assert progress_lines(sweep.done.stderr)[-1].startswith("losslab: sweep 3/3 jobs done")


# --------------------------------------------------------------------------------------------
# 5. The Optuna learning-rate search.
# --------------------------------------------------------------------------------------------


def test_optuna_search_tags_best_trial_on_parent(tmp_path: Path, empty_store) -> None:
    overrides = ("experiment=circles_bce", "hparams_search=lr", "hydra.sweeper.n_trials=3")
    sweep = multirun(tmp_path, *overrides, *TINY, uri=empty_store(tmp_path))
    assert sweep.done.returncode == 0, output(sweep.done)
    parent = sweep.parent
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["losslab.children_finished"] == "3/3"
    children = sweep.children
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    rates = [float(c.data.params["optimizer.learning_rate"]) for c in children]
    assert len(set(rates)) == 3
    assert all(1e-4 <= rate <= 0.3 for rate in rates)  # the search interval of conf/hparams_search

    client = MlflowClient(sweep.uri)
    final = {c.info.run_id: last_value(client, c.info.run_id, "val_loss") for c in children}
    best_child = min(children, key=lambda c: final[c.info.run_id])
    best = parent.data.tags["losslab.best_trial"]
    found = re.fullmatch(r"optimizer\.learning_rate=(\S+) → (\S+)", best)
    assert found, best
    assert float(found.group(1)) == pytest.approx(
        float(best_child.data.params["optimizer.learning_rate"]), rel=1e-9
    )
    assert float(found.group(2)) == pytest.approx(final[best_child.info.run_id], rel=1e-5)


# --------------------------------------------------------------------------------------------
# 6. A failing job fails alone.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory: pytest.TempPathFactory, empty_store) -> Sweep:
    folder = tmp_path_factory.mktemp("failing")
    overrides = ("loss=mse,hinge", "dataset=regression", *TINY)
    return multirun(folder, *overrides, uri=empty_store(folder))


@pytest.mark.spawn
@pytest.mark.xdist_group("failing_sweep")  # the module fixture, made once
def test_failing_job_fails_alone(failing_sweep: Sweep) -> None:
    sweep = failing_sweep
    assert sweep.done.returncode != 0, output(sweep.done)
    children = sweep.children
    assert [(c.data.params["loss.name"], c.info.status) for c in children] == [("mse", "FINISHED")]
    parent = sweep.parent
    assert children[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == "FAILED"  # never left RUNNING
    assert parent.info.end_time is not None
    errors = [line for line in sweep.done.stderr.splitlines() if line.startswith("losslab: error")]
    assert len(errors) == 1, output(sweep.done)
    assert "hinge" in errors[0] and "regression" in errors[0]
    assert "Traceback" not in sweep.done.stderr, sweep.done.stderr
    last = progress_lines(sweep.done.stderr)[-1]
    assert last.startswith("losslab: sweep 2/2 jobs done (1 failed)"), last
    assert (sweep.sweep_dir / "report" / "report.md").is_file()  # the mse job is reported


@pytest.mark.xdist_group("failing_sweep")  # the module fixture, made once
def test_failed_parent_counts_the_failed_job(failing_sweep: Sweep) -> None:
    tags = failing_sweep.parent.data.tags
    assert tags["losslab.error"] == "1 of 2 job(s) failed", tags["losslab.error"]
    assert tags["losslab.children_finished"] == "1/2"


# --------------------------------------------------------------------------------------------
# 7. losslab-loss-shapes
# --------------------------------------------------------------------------------------------


def test_loss_shapes_writes_a_png(tmp_path: Path, tracking_uri: str) -> None:
    target = tmp_path / "shapes.png"
    done = run([LOSSLAB_LOSS_SHAPES, "--out", str(target)], tmp_path, tracking_uri, timeout=300)
    assert done.returncode == 0, output(done)
    assert_png(target, 10_000)
    assert str(target) in done.stdout
