"""End-to-end: the DVC pipeline in a clone, the Hydra app, determinism, and bad stage inputs.

Everything runs for real (DVC, Keras, MLflow) in temp dirs; every MLflow run goes to a private
SQLite store, never to the repo's ``mlflow.db``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    REPO_ROOT,
    Edited,
    Reproduced,
    all_runs,
    file_md5,
    run_command,
    run_env,
    runs_of_model,
    set_params,
)
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
LOSSLAB = str(BIN / "losslab")
LOSSLAB_STAGE = str(BIN / "losslab-stage")
STAGES = ("generate", "train", "evaluate", "plot")
HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "grad_norm", "val_loss", "val_accuracy"]
PLOTS = ("learning_curves.png", "dataset.png", "decision_boundary.png")
EPOCHS = 3


def run(cmd: list[str], cwd: Path, uri: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=run_env(uri), capture_output=True, text=True, timeout=timeout
    )


def output(done: subprocess.CompletedProcess) -> str:
    return done.stdout + done.stderr


def read_history(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


# --------------------------------------------------------------------------------------------
# The DVC pipeline: in a clone of HEAD with its committed params (conftest's reproduced_clone,
# made once for the session), then in a copy of that clone after a change of one param.
# --------------------------------------------------------------------------------------------


def test_dvc_repro_writes_every_output(reproduced_clone: Reproduced) -> None:
    repro = reproduced_clone.repro
    assert repro.returncode == 0, output(repro)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in output(repro)
    clone = reproduced_clone.clone
    for relative in (
        "data/dataset.npz",
        "data/dataset.json",
        "model/model.keras",
        "model/history.csv",
        "model/train.json",
        "metrics.json",
        *(f"plots/{name}" for name in PLOTS),
    ):
        path = clone / relative
        assert path.is_file() and path.stat().st_size > 0, f"{relative} missing or empty"
    # the training time is a measure of this run, for MLflow: neither git's nor DVC's
    assert "train.json" not in (clone / "dvc.lock").read_text()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "model/train.json"], cwd=clone, capture_output=True
    )
    assert ignored.returncode == 0, "model/train.json is not ignored by git"

    epochs = OmegaConf.load(clone / "params.yaml").trainer.epochs
    columns, rows = read_history(clone / "model" / "history.csv")
    assert columns == HISTORY_COLUMNS
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    assert all(math.isfinite(float(row[c])) for row in rows for c in columns)

    metrics = json.loads((clone / "metrics.json").read_text())
    assert set(metrics) == {"train", "test"}
    for split in ("train", "test"):
        assert set(metrics[split]) == {"loss", "accuracy"} | ({"ece"} if split == "test" else set())
        assert math.isfinite(metrics[split]["loss"])
        assert 0.0 <= metrics[split]["accuracy"] <= 1.0


@pytest.mark.xdist_group("edited_clone")  # conftest's fixture, made once
def test_dvc_repro_in_a_clone_leaves_git_clean_and_dvc_lock_as_committed(
    reproduced_clone: Reproduced, edited_clone: Edited
) -> None:
    """Every output DVC hashes has the same bytes in every clone: after the first dvc repro
    (every stage run, as make run runs them) git sees nothing changed (dvc.lock, metrics.json
    and history.csv included) and dvc status finds the pipeline up to date (in a copy of the
    clone). Equal to the committed dvc.lock, two clones' dvc.lock files are equal to each
    other."""
    clone = reproduced_clone.clone
    assert reproduced_clone.repro.returncode == 0, output(reproduced_clone.repro)
    status = subprocess.run(
        ["git", "--no-optional-locks", "status", "--porcelain"],
        cwd=clone,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == "", status.stdout
    committed = subprocess.run(
        ["git", "show", "HEAD:dvc.lock"], cwd=clone, capture_output=True, check=True
    ).stdout
    assert (clone / "dvc.lock").read_bytes() == committed
    shown = edited_clone.status
    assert shown.returncode == 0, output(shown)
    assert "Data and pipelines are up to date" in shown.stdout, output(shown)


@pytest.mark.xdist_group("edited_clone")
def test_dvc_repro_is_a_noop_then_reruns_only_downstream_of_a_changed_param(
    edited_clone: Edited,
) -> None:
    edited = edited_clone
    text = output(edited.noop)
    assert edited.noop.returncode == 0, text
    assert "Running stage" not in text
    assert "Data and pipelines are up to date" in text
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change" in text
    assert edited.lock_after_noop == edited.lock_before

    text = output(edited.repro)  # after a new learning rate
    assert edited.repro.returncode == 0, text
    assert "Running stage 'generate'" not in text
    assert "Stage 'generate' didn't change" in text
    for stage in ("train", "evaluate", "plot"):
        assert f"Running stage '{stage}'" in text
    assert (edited.clone / "dvc.lock").read_bytes() != edited.lock_before

    shown = run_command([DVC, "metrics", "show", "--json"], edited.clone, edited.uri)
    assert shown.returncode == 0, output(shown)
    by_file = json.loads(shown.stdout)
    dvc_metrics = next(iter(by_file.values()))["data"]["metrics.json"]["data"]
    assert dvc_metrics == json.loads((edited.clone / "metrics.json").read_text())
    assert set(dvc_metrics) == {"train", "test"}


def test_dataset_hash_and_bytes_are_reproducible(
    reproduced_clone: Reproduced, tmp_path: Path
) -> None:
    from losslab import steps
    from losslab.config import load_params
    from losslab.datasets import make_dataset

    assert reproduced_clone.repro.returncode == 0, output(reproduced_clone.repro)
    clone = reproduced_clone.clone
    cfg = load_params(clone / "params.yaml")
    meta = json.loads((clone / "data" / "dataset.json").read_text())
    assert meta["sha256"] == make_dataset(cfg.dataset).content_hash()

    first, second = steps.Layout(tmp_path / "a"), steps.Layout(tmp_path / "b")
    steps.generate(cfg, first)
    steps.generate(cfg, second)
    assert first.data.read_bytes() == second.data.read_bytes()
    assert first.data.read_bytes() == (clone / "data" / "dataset.npz").read_bytes()
    assert first.data_meta.read_bytes() == second.data_meta.read_bytes()


def assert_run_of_the_pipeline(run, uri: str, clone: Path) -> None:
    """The run the stages of one dvc repro logged to: the train stage's, tagged with the hash
    of the model it wrote, holding its per-epoch history, the evaluation and the plots."""
    assert run.info.status == "FINISHED"
    assert run.data.tags["losslab.entry_point"] == "dvc"
    assert run.data.tags["losslab.model_md5"] == file_md5(clone / "model" / "model.keras")
    client = MlflowClient(tracking_uri=uri)
    run_id = run.info.run_id
    loss_history = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    _, rows = read_history(clone / "model" / "history.csv")
    assert [m.step for m in loss_history] == [int(row["epoch"]) for row in rows]
    assert [m.value for m in loss_history] == pytest.approx(
        [float(row["loss"]) for row in rows], rel=1e-6
    )
    artifacts = {Path(a.path).name for a in client.list_artifacts(run_id, "plots")}
    assert set(PLOTS) <= artifacts
    metrics = json.loads((clone / "metrics.json").read_text())
    for split in ("train", "test"):
        for name in ("loss", "accuracy"):
            logged = run.data.metrics[f"{split}_{name}"]
            assert logged == pytest.approx(metrics[split][name], rel=1e-6), (split, name)


@pytest.mark.xdist_group("edited_clone")
def test_dvc_repro_makes_exactly_one_mlflow_run(
    reproduced_clone: Reproduced, edited_clone: Edited
) -> None:
    """One run per dvc repro, found by the model's hash: the stages after train add to it."""
    assert reproduced_clone.repro.returncode == 0, output(reproduced_clone.repro)
    (first,) = all_runs(reproduced_clone.uri)
    assert_run_of_the_pipeline(first, reproduced_clone.uri, reproduced_clone.clone)
    md5 = file_md5(reproduced_clone.clone / "model" / "model.keras")
    assert [r.info.run_id for r in runs_of_model(reproduced_clone.uri, md5)] == [first.info.run_id]

    # the copied store: the first repro's run, the interrupted trainings', the second repro's
    edited = edited_clone
    assert edited.repro.returncode == 0, output(edited.repro)
    assert edited.before == {first.info.run_id}
    stopped = {i.run.info.run_id for i in edited.interrupted.values()}
    (new,) = [r for r in all_runs(edited.uri) if r.info.run_id not in edited.before | stopped]
    assert_run_of_the_pipeline(new, edited.uri, edited.clone)
    assert new.data.tags["losslab.model_md5"] != md5


# --------------------------------------------------------------------------------------------
# The Hydra app.
# --------------------------------------------------------------------------------------------


def test_losslab_app_runs_a_preset(tmp_path: Path, tracking_uri: str) -> None:
    out = tmp_path / "out"
    done = run(
        [
            LOSSLAB,
            "experiment=circles_hinge",
            "trainer.epochs=2",
            "dataset.n_samples=200",
            "dataset.n_test=100",
            "trainer.verbose=0",
            f"hydra.run.dir={out}",
        ],
        tmp_path,
        tracking_uri,
    )
    assert done.returncode == 0, output(done)
    assert str(out) in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    test_lines = [line for line in done.stdout.splitlines() if line.strip().startswith("test:")]
    assert len(test_lines) == 1, done.stdout
    assert f"accuracy={metrics['test']['accuracy']:.4f}" in test_lines[0]

    assert (out / "model" / "model.keras").is_file()
    for name in PLOTS:
        assert (out / "plots" / name).is_file(), name
    composed = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert composed.preset == "circles_hinge"
    assert composed.loss.name == "hinge"
    assert composed.trainer.epochs == 2

    runs = all_runs(tracking_uri)
    assert [(r.info.status, r.data.tags["losslab.entry_point"]) for r in runs] == [
        ("FINISHED", "cli")
    ]


def test_losslab_multirun_sweeps_two_losses(tmp_path: Path, tracking_uri: str) -> None:
    sweep = tmp_path / "multi"
    done = run(
        [
            LOSSLAB,
            "-m",
            "loss=mse,mae",
            "dataset=regression",
            "trainer.epochs=2",
            "dataset.n_samples=200",
            "dataset.n_test=100",
            "trainer.verbose=0",
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        tracking_uri,
    )
    assert done.returncode == 0, output(done)
    jobs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [job.name for job in jobs] == ["0", "1"]
    everything = all_runs(tracking_uri)
    parents = [r for r in everything if r.data.tags.get("losslab.sweep") == "true"]
    runs = [r for r in everything if r not in parents]
    assert len(parents) == 1 and len(runs) == 2
    assert {r.info.status for r in everything} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    assert {r.data.tags["losslab.loss"] for r in runs} == {"mse", "mae"}
    assert {r.data.tags["losslab.entry_point"] for r in runs} == {"multirun"}


# --------------------------------------------------------------------------------------------
# Determinism and the hinge accuracy, in process.
# --------------------------------------------------------------------------------------------


def test_same_config_gives_identical_history_and_metrics(tiny_cfg, tmp_path: Path) -> None:
    from losslab.app import run as run_app
    from losslab.steps import Layout

    cfg = tiny_cfg("experiment=separable_hinge", epochs=3)
    first, second, reseeded = (Layout(tmp_path / name) for name in ("a", "b", "c"))
    run_app(cfg, first.root)
    run_app(cfg, second.root)
    assert first.history.read_bytes() == second.history.read_bytes()
    assert json.loads(first.metrics.read_text()) == json.loads(second.metrics.read_text())

    run_app(tiny_cfg("experiment=separable_hinge", "seed=1", epochs=3), reseeded.root)
    assert reseeded.history.read_bytes() != first.history.read_bytes()


def test_hinge_accuracy_is_sign_agreement(tiny_cfg, tmp_path: Path) -> None:
    import keras

    import losslab.metrics  # noqa: F401  (registers sign_accuracy for load_model)
    from losslab.app import run as run_app
    from losslab.steps import Layout

    layout = Layout(tmp_path / "out")
    run_app(tiny_cfg("experiment=circles_hinge", epochs=20, n_samples=400), layout.root)
    metrics = json.loads(layout.metrics.read_text())
    model = keras.models.load_model(layout.model)
    with np.load(layout.data) as arrays:
        splits = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test")}
    for split, (x, y) in splits.items():
        outputs = model.predict(x, verbose=0).reshape(-1)
        agreement = float(np.mean(np.sign(outputs) == np.sign(2.0 * y - 1.0)))
        assert metrics[split]["accuracy"] == pytest.approx(agreement, abs=1e-6), split


# --------------------------------------------------------------------------------------------
# Bad stage inputs: one line on stderr, exit 2, and no MLflow run left RUNNING.
# --------------------------------------------------------------------------------------------


def error_lines(done: subprocess.CompletedProcess, step: str) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith(f"losslab-stage {step}:")]


def assert_no_run_running(uri: str) -> list:
    runs = all_runs(uri)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    return runs


@pytest.fixture
def stage_dir(tmp_path: Path, tracking_uri: str) -> Path:
    """A folder with a small params.yaml, its generated data, a model file and a finished run
    tagged with that file's hash in the temp store, as after a successful train stage."""
    from losslab import steps, tracking
    from losslab.config import load_params

    root = tmp_path / "stage"
    root.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", root / "params.yaml")
    set_params(root / "params.yaml", **{"dataset.n_samples": 200, "dataset.n_test": 100})
    cfg = load_params(root / "params.yaml")
    layout = steps.Layout(root)
    steps.generate(cfg, layout)
    layout.model.parent.mkdir(parents=True, exist_ok=True)
    layout.model.write_bytes(b"placeholder, not read before the data")
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(cfg.tracking.experiment)
    )
    tags = {tracking.MODEL_TAG: file_md5(layout.model)}
    created = client.create_run(experiment_id, tags=tags)
    client.set_terminated(created.info.run_id, "FINISHED")
    return root


def test_unknown_loss_is_one_line_without_traceback(tmp_path: Path, tracking_uri: str) -> None:
    params = OmegaConf.load(REPO_ROOT / "params.yaml")
    params.loss = {"name": "nope"}
    OmegaConf.save(params, tmp_path / "params.yaml")
    done = run([LOSSLAB_STAGE, "train"], tmp_path, tracking_uri)
    assert done.returncode == 2, output(done)
    assert "Traceback" not in output(done)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "'nope'" in lines[0]
    from losslab.losses import LOSSES

    assert all(name in lines[0] for name in LOSSES), lines[0]
    assert assert_no_run_running(tracking_uri) == []
    assert not (tmp_path / "model").exists()


def test_truncated_dataset_is_named(stage_dir: Path, tracking_uri: str) -> None:
    npz = stage_dir / "data" / "dataset.npz"
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    done = run([LOSSLAB_STAGE, "evaluate"], stage_dir, tracking_uri)
    assert done.returncode == 2, output(done)
    assert "Traceback" not in output(done)
    lines = error_lines(done, "evaluate")
    assert len(lines) == 1, done.stderr
    assert "data/dataset.npz" in lines[0]
    runs = assert_no_run_running(tracking_uri)
    assert [r.info.status for r in runs] == ["FAILED"]  # the train stage's run, found by the tag
    assert not (stage_dir / "metrics.json").exists()


def test_garbage_model_is_named(stage_dir: Path, tracking_uri: str) -> None:
    model = stage_dir / "model" / "model.keras"
    model.write_bytes(np.random.default_rng(0).bytes(4096))
    done = run([LOSSLAB_STAGE, "evaluate"], stage_dir, tracking_uri)
    assert done.returncode == 2, output(done)
    assert "Traceback" not in output(done)
    lines = error_lines(done, "evaluate")
    assert len(lines) == 1, done.stderr
    assert "model/model.keras" in lines[0]
    assert_no_run_running(tracking_uri)
    # not the train stage's model: its hash finds no run, and evaluate's own run failed
    (failed,) = runs_of_model(tracking_uri, file_md5(model))
    assert failed.info.status == "FAILED"
    assert "model/model.keras" in failed.data.tags["losslab.error"]
    assert not (stage_dir / "metrics.json").exists()
