"""Faults and reproducibility: signals during training, SIGKILL and losslab-doctor, concurrent
jobs on a fresh store, the same results from every entry point, losslab-rerun, and a fresh
clone's data against the committed dvc.lock.

Everything runs for real (DVC, Keras, MLflow, Hydra's joblib launcher) in temp dirs and clones;
every subprocess gets a private SQLite store through ``$MLFLOW_TRACKING_URI``. The rows of
``docs/reliability.md`` name these tests.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import (
    REPO_ROOT,
    Edited,
    Reproduced,
    all_runs,
    file_md5,
    run_command,
    run_env,
    runs_of_model,
    wait_for,
    wait_for_line,
)
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
LOSSLAB = str(BIN / "losslab")
LOSSLAB_STAGE = str(BIN / "losslab-stage")
LOSSLAB_DOCTOR = str(BIN / "losslab-doctor")
LOSSLAB_RERUN = str(BIN / "losslab-rerun")
MLFLOW = str(BIN / "mlflow")
TINY = ("trainer.epochs=2", "dataset.n_samples=200", "dataset.n_test=100", "trainer.verbose=0")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def store(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


def output(done: subprocess.CompletedProcess) -> str:
    stdout, stderr = done.stdout[-4000:], done.stderr[-4000:]
    return f"exit {done.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"


def running(uri: str) -> list:
    return [r for r in all_runs(uri) if r.info.status == "RUNNING"]


def make_experiment(uri: str) -> str:
    """The losslab experiment with its artifacts beside the temp store (as tracking.prepare
    makes it), so runs created by other tools (mlflow run) keep their artifacts there too."""
    client = MlflowClient(tracking_uri=uri)
    artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return client.create_experiment("losslab", artifact_location=artifacts)


def start(cmd: list[str], cwd: Path, uri: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**run_env(uri), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


# --------------------------------------------------------------------------------------------
# 1. SIGINT and SIGTERM during training: the run ends KILLED, outputs keep their content,
#    the next dvc repro recovers.
# --------------------------------------------------------------------------------------------


@pytest.mark.xdist_group("edited_clone")  # conftest's fixture, made once
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_signal_during_training_keeps_outputs_and_repro_recovers(edited_clone: Edited, signum):
    edited = edited_clone
    stopped = edited.interrupted[signum]
    assert stopped.returncode == 130, f"exit {stopped.returncode}\n{stopped.stderr[-3000:]}"
    assert "Traceback" not in stopped.stdout + stopped.stderr, stopped.stderr[-3000:]
    assert "losslab-stage train: interrupted" in stopped.stderr
    killed = stopped.run
    assert killed.info.run_id not in edited.before
    assert killed.info.status == "KILLED"
    assert killed.info.end_time is not None
    assert killed.data.tags["losslab.error"]
    assert stopped.changed == []  # the outputs of the earlier repro keep their bytes
    assert stopped.leftovers == []

    # the next dvc repro recovers: one new run, of the model it trained
    repro, uri = edited.repro, edited.uri
    assert repro.returncode == 0, output(repro)
    assert "Running stage 'train'" in repro.stdout
    interruptions = {i.run.info.run_id for i in edited.interrupted.values()}
    (recovered,) = runs_of_model(uri, file_md5(edited.clone / "model" / "model.keras"))
    assert recovered.info.run_id not in edited.before | interruptions
    assert recovered.info.status == "FINISHED"
    assert recovered.data.params["optimizer.learning_rate"] == str(edited.learning_rate)
    metrics = json.loads((edited.clone / "metrics.json").read_text())
    assert recovered.data.metrics["test_loss"] == pytest.approx(metrics["test"]["loss"])
    assert running(uri) == []
    status = edited.status_after
    assert "Data and pipelines are up to date" in status.stdout, output(status)


def left_in_session(session: int) -> list[int]:
    """The live processes of a session (a zombie that nothing has reaped yet runs nothing)."""
    left = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process.pid)
        except (OSError, psutil.Error):  # gone meanwhile
            continue
    return left


@pytest.mark.parametrize(
    ("signum", "whole_group", "reason"),
    [(signal.SIGINT, True, "Ctrl-C"), (signal.SIGTERM, False, "terminated by signal 15")],
    ids=["Ctrl-C", "SIGTERM"],
)
def test_stopped_joblib_sweep_ends_every_run_and_says_so_once(
    tmp_path, empty_store, signum, whole_group, reason
):
    """Ctrl-C reaches the sweep and its workers; SIGTERM only the sweep's own process, and
    joblib ends the workers with it. Either way the parent run ends KILLED and no job's run is
    left RUNNING: a job whose worker went down before it could end its run is ended KILLED by
    the sweep on its way out."""
    uri, sweep_dir = empty_store(tmp_path), tmp_path / "sweep"
    total = 40
    cmd = [LOSSLAB, "-m", "experiment=reg_mse", f"seed=range(0,{total})", "hydra/launcher=joblib"]
    cmd += [*TINY, f"hydra.sweep.dir={sweep_dir}"]
    with (tmp_path / "out.txt").open("w") as out, (tmp_path / "err.txt").open("w") as err:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=run_env(uri), stdout=out, stderr=err, start_new_session=True
        )
        try:
            done = f"losslab: sweep 1/{total} jobs done"
            wait_for(lambda: done in (tmp_path / "err.txt").read_text(), 180, "a job done", proc)
            # both workers in a job (each holds a RUNNING run besides the parent's): Ctrl-C
            # finds them in the code that ends a job's run, not in loky's loop between jobs
            wait_for(lambda: len(running(uri)) >= 3, 60, "two jobs running", proc)
            workers = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            if whole_group:
                os.killpg(proc.pid, signum)
            else:
                proc.send_signal(signum)
            proc.wait(timeout=60)
        finally:
            stop(proc)
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    said = [line for line in stderr.splitlines() if "interrupted" in line]
    assert said == [f"losslab: interrupted ({reason})"], stderr[-3000:]
    # no worker left behind: nothing the sweep started (its session) runs on
    wait_for(lambda: not left_in_session(proc.pid), 30, "the sweep's workers to exit")

    assert running(uri) == []
    runs = all_runs(uri)
    (parent,) = [r for r in runs if r.data.tags.get("losslab.sweep") == "true"]
    assert parent.info.status == "KILLED"
    assert parent.data.tags["losslab.pid"] == str(proc.pid)  # the sweep's own process
    stopped = re.fullmatch(r"stopped after (\d+) of (\d+) jobs", parent.data.tags["losslab.error"])
    assert stopped, parent.data.tags
    children = [r for r in runs if r is not parent]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert int(stopped.group(2)) == total
    assert 1 <= int(stopped.group(1)) <= len(finished) < total  # a job done is a run finished
    assert {c.info.status for c in children} <= {"FINISHED", "KILLED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    for child in children:  # logged by the workers
        assert int(child.data.tags["losslab.pid"]) in workers, (child.data.tags, workers)
        if child.info.status == "KILLED":
            assert child.data.tags["losslab.error"], child.data.tags
            assert child.info.end_time is not None


# --------------------------------------------------------------------------------------------
# 2. SIGKILL: nothing runs on the way out of the killed process, so its run stays RUNNING;
#    losslab-doctor finds the run whose holder is gone and fails it.
# --------------------------------------------------------------------------------------------


def long_training(tmp_path: Path, uri: str) -> tuple[MlflowClient, subprocess.Popen, str, int]:
    """A ``losslab`` run of 100000 epochs, once its first epoch is done: the store's client,
    the process, the run's id and the pid its ``losslab.pid`` tag names as the run's holder."""
    client = MlflowClient(tracking_uri=uri)
    cmd = [LOSSLAB, "experiment=reg_mse", *TINY, "trainer.epochs=100000", "trainer.verbose=2"]
    proc = start([*cmd, f"hydra.run.dir={tmp_path / 'out'}"], tmp_path, uri)
    try:
        wait_for_line(proc, "Epoch ", timeout=180)
        (run,) = running(uri)
    except BaseException:
        stop(proc)
        raise
    return client, proc, run.info.run_id, int(run.data.tags["losslab.pid"])


def test_sigkill_orphan_is_found_and_failed_by_doctor(tmp_path, empty_store):
    uri = empty_store(tmp_path)
    client, proc, run_id, holder = long_training(tmp_path, uri)
    try:
        assert holder == proc.pid  # the losslab process holds its run itself
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    orphan = client.get_run(run_id)
    assert orphan.info.status == "RUNNING"  # the fault: nobody ended it
    assert orphan.info.run_name == "regression-mse-sgd-s0"  # experiment=reg_mse, seed 0

    dry = run_command([LOSSLAB_DOCTOR, "--dry-run"], tmp_path, uri)
    assert dry.returncode == 0, output(dry)
    line = f"would mark FAILED: run {run_id} (regression-mse-sgd-s0), pid {holder} is gone"
    assert line in dry.stdout, output(dry)
    assert client.get_run(run_id).info.status == "RUNNING"  # a dry run changes nothing

    fixed = run_command([LOSSLAB_DOCTOR], tmp_path, uri)
    assert fixed.returncode == 0, output(fixed)
    assert f"marked FAILED: run {run_id}" in fixed.stdout, output(fixed)
    assert "losslab-doctor: dvc status" in fixed.stdout
    failed = client.get_run(run_id)
    assert failed.info.status == "FAILED"
    assert failed.info.end_time is not None
    assert str(holder) in failed.data.tags["losslab.error"]

    again = run_command([LOSSLAB_DOCTOR], tmp_path, uri)
    assert again.returncode == 0, output(again)
    assert "no run left RUNNING" in again.stdout, output(again)
    assert "marked FAILED" not in again.stdout
    assert running(uri) == []


def test_a_run_whose_holder_is_a_zombie_is_found_by_doctor(tmp_path, empty_store):
    """A killed ``losslab`` process whose parent does not reap it (a container's first process
    may not) stays a zombie: its pid still answers, but nothing holds the run."""
    uri = empty_store(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    holder = subprocess.Popen([sys.executable, "-c", ""])  # a zombie until it is waited for
    try:
        wait_for(
            lambda: psutil.Process(holder.pid).status() == psutil.STATUS_ZOMBIE, 30, "its exit"
        )
        tags = {"losslab.pid": str(holder.pid), "losslab.host": socket.gethostname()}
        run_id = client.create_run(make_experiment(uri), tags=tags).info.run_id
        dry = run_command([LOSSLAB_DOCTOR, "--dry-run"], tmp_path, uri)
    finally:
        holder.wait()
    assert dry.returncode == 0, output(dry)
    assert f"would mark FAILED: run {run_id}" in dry.stdout, output(dry)


# --------------------------------------------------------------------------------------------
# 3. A fresh clone (conftest's reproduced_clone): losslab-doctor reports the missing stage
#    outputs, and dvc repro regenerates the data with exactly the hashes in the committed
#    dvc.lock (the whole dvc.lock: test_pipeline.py::
#    test_dvc_repro_in_a_clone_leaves_git_clean_and_dvc_lock_as_committed).
# --------------------------------------------------------------------------------------------


def committed_md5(clone: Path, path: str) -> str:
    """The md5 of the generate stage's output ``path`` in the committed dvc.lock."""
    lock = subprocess.run(
        ["git", "show", "HEAD:dvc.lock"], cwd=clone, capture_output=True, text=True, check=True
    )
    (md5,) = [
        out["md5"]
        for out in yaml.safe_load(lock.stdout)["stages"]["generate"]["outs"]
        if out["path"] == path
    ]
    return md5


def test_fresh_clone_runs_its_own_code(reproduced_clone: Reproduced):
    clone = reproduced_clone.clone
    assert Path(reproduced_clone.imported_from).is_relative_to(clone / "src")


def test_doctor_reports_missing_stage_outputs(reproduced_clone: Reproduced):
    doctor = reproduced_clone.doctor
    assert doctor.returncode == 0, output(doctor)
    assert "no run left RUNNING" in doctor.stdout
    status = doctor.stdout.split("losslab-doctor: dvc status", 1)[1]
    for missing in ("data/dataset.npz", "data/dataset.json", "model/model.keras"):
        assert missing in status, output(doctor)


def test_fresh_clone_regenerates_the_locked_dataset_npz(reproduced_clone: Reproduced):
    repro = reproduced_clone.repro
    assert repro.returncode == 0, output(repro)
    assert "Running stage 'generate'" in repro.stdout  # really regenerated, not restored
    path, clone = "data/dataset.npz", reproduced_clone.clone
    assert file_md5(clone / path) == committed_md5(clone, path)


def test_fresh_clone_regenerates_the_locked_dataset_json(reproduced_clone: Reproduced):
    assert reproduced_clone.repro.returncode == 0, output(reproduced_clone.repro)
    path, clone = "data/dataset.json", reproduced_clone.clone
    assert file_md5(clone / path) == committed_md5(clone, path)


# --------------------------------------------------------------------------------------------
# 4. Concurrency: 8 jobs on 2 joblib workers, on a store that does not exist yet.
# --------------------------------------------------------------------------------------------


def test_eight_jobs_on_two_workers_on_a_fresh_store(tmp_path):
    uri = store(tmp_path)
    db = Path(uri.removeprefix("sqlite:///"))
    assert not db.exists()
    epochs = 2
    cmd = [
        LOSSLAB,
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "dataset=regression",
        "loss=mse,mae",
        "seed=0,1,2,3",
        *TINY,
        f"trainer.epochs={epochs}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = run_command(cmd, tmp_path, uri, timeout=900)
    assert done.returncode == 0, output(done)
    assert "database is locked" not in (done.stdout + done.stderr).lower()
    runs = all_runs(uri)
    parents = [r for r in runs if r.data.tags.get("losslab.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("losslab.sweep") != "true"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 8
    combos = sorted((c.data.params["loss.name"], c.data.params["seed"]) for c in children)
    assert combos == sorted((loss, str(seed)) for loss in ("mse", "mae") for seed in range(4))
    client = MlflowClient(tracking_uri=uri)
    for child in children:
        run_id = child.info.run_id
        for name in ("loss", "val_loss", "mse", "val_mse"):
            history = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(1, epochs + 1)), (run_id, name)
            assert all(math.isfinite(m.value) for m in history)
        for name in ("train_loss", "train_mse", "test_loss", "test_mse"):
            assert math.isfinite(child.data.metrics[name]), (run_id, name)
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id


# --------------------------------------------------------------------------------------------
# 5. Reproducibility: dvc repro, losslab and mlflow run give identical results.
#    (The same config twice in a row in one process: test_pipeline.py::
#    test_same_config_gives_identical_history_and_metrics.)
# --------------------------------------------------------------------------------------------


def test_dvc_repro_losslab_and_mlflow_run_give_identical_results(
    reproduced_clone: Reproduced, tmp_path, compose_raw
):
    """The reproduced clone's pipeline (the committed params), then ``losslab`` and
    ``mlflow run`` with the same config, each into the same store: the same model, history and
    metrics, byte for byte. The two commands are given ``experiment=circles_bce``, the preset
    that is the default config under a name: the override reaches the app through each of them
    (the runs' preset), and changes nothing the results depend on."""
    clone = reproduced_clone.clone
    assert reproduced_clone.repro.returncode == 0, output(reproduced_clone.repro)
    committed = OmegaConf.to_container(OmegaConf.load(clone / "params.yaml"))
    assert committed == OmegaConf.to_container(compose_raw()), "params.yaml: run `make params`"
    preset = "circles_bce"
    composed = OmegaConf.to_container(compose_raw(f"experiment={preset}"))
    assert {**composed, "preset": committed["preset"]} == committed, f"{preset} changed"
    _, uri = reproduced_clone.copy(tmp_path / "copy")  # the store, with the dvc repro's run

    app_dir = tmp_path / "app"
    by_app = run_command(
        [LOSSLAB, f"experiment={preset}", f"hydra.run.dir={app_dir}"], tmp_path, uri
    )
    assert by_app.returncode == 0, output(by_app)

    mlflow_dir = tmp_path / "mlflow-run"
    by_mlflow = run_command(
        [MLFLOW, "run", ".", "--env-manager", "local", "--experiment-name", "losslab"]
        + ["-P", f"overrides=experiment={preset} hydra.run.dir={mlflow_dir}"],
        REPO_ROOT,
        uri,
    )
    assert by_mlflow.returncode == 0, output(by_mlflow)

    roots = {"dvc": clone, "cli": app_dir, "mlflow-run": mlflow_dir}
    for relative in ("model/model.keras", "model/history.csv", "metrics.json"):
        written = {name: (root / relative).read_bytes() for name, root in roots.items()}
        assert written["cli"] == written["dvc"], relative
        assert written["mlflow-run"] == written["dvc"], relative
    epochs = compose_raw().trainer.epochs
    assert (clone / "model" / "history.csv").read_bytes().count(b"\n") == epochs + 1

    runs = {r.data.tags["losslab.entry_point"]: r for r in all_runs(uri)}
    assert sorted(runs) == sorted(roots)
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    md5 = file_md5(clone / "model" / "model.keras")
    assert {r.data.tags["losslab.model_md5"] for r in runs.values()} == {md5}
    metrics = json.loads((clone / "metrics.json").read_text())
    expected = {f"test_{name}": value for name, value in metrics["test"].items()}
    for entry, run in runs.items():
        finals = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
        assert finals == expected, entry
    for entry in ("cli", "mlflow-run"):
        assert runs[entry].data.tags["losslab.preset"] == preset, entry
        assert runs[entry].data.params["preset"] == preset, entry
        assert runs[entry].data.params["loss.name"] == "bce", entry
    assert runs["dvc"].data.params["preset"] == "None"


# --------------------------------------------------------------------------------------------
# 6. losslab-rerun: re-create a run from its MLflow record, compare metric by metric, and
#    report differences in versions or data before running.
# --------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    uri: str
    run_id: str


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, empty_store) -> Recorded:
    """One finished run; verbose training, so a rerun prints its epochs."""
    root = tmp_path_factory.mktemp("rerun")
    uri = empty_store(root)
    cmd = [LOSSLAB, "experiment=reg_mse", *TINY, "trainer.verbose=2", f"hydra.run.dir={root}/out"]
    done = run_command(cmd, root, uri)
    assert done.returncode == 0, output(done)
    (finished,) = all_runs(uri)
    assert finished.info.status == "FINISHED"
    return Recorded(uri, finished.info.run_id)


def rerun(recorded: Recorded, run_id: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_command([LOSSLAB_RERUN, run_id], cwd, recorded.uri)


def compared(stdout: str) -> dict[str, str]:
    """The metric rows of a rerun's report: name → verdict."""
    rows = re.findall(r"^  (\w+)\s+\S+ → \S+\s+(same|differs by \S+)$", stdout, re.MULTILINE)
    return dict(rows)


def final_metric_names(run) -> list[str]:
    metrics = run.data.metrics
    return sorted(k for k in metrics if k.startswith(("train_", "test_")) and k != "train_seconds")


def new_run_of(recorded: Recorded, run_id: str):
    again = [r for r in all_runs(recorded.uri) if r.data.tags.get("losslab.rerun_of") == run_id]
    assert len(again) == 1
    return again[0]


def before_training(stdout: str, line: str) -> None:
    assert line in stdout, stdout
    assert stdout.index(line) < stdout.index("Epoch 1/"), stdout
    assert stdout.index(line) < stdout.index("losslab-rerun: new run"), stdout


@pytest.mark.xdist_group("rerun")  # the module fixture, made once
def test_rerun_reproduces_every_metric(recorded, tmp_path):
    original = MlflowClient(tracking_uri=recorded.uri).get_run(recorded.run_id)
    done = rerun(recorded, recorded.run_id, tmp_path)
    assert done.returncode == 0, output(done)
    names = final_metric_names(original)
    assert len(names) >= 4  # train/test loss and MSE at least
    assert compared(done.stdout) == dict.fromkeys(names, "same"), done.stdout
    assert f"{len(names)} of {len(names)} metrics identical" in done.stdout
    assert "differs" not in done.stdout
    again = new_run_of(recorded, recorded.run_id)
    assert again.info.status == "FINISHED"
    assert again.data.tags["losslab.entry_point"] == "rerun"
    # the same config; only the store is the one the rerun was pointed at
    assert again.data.params.pop("tracking.uri") == recorded.uri
    assert original.data.params.pop("tracking.uri") == "None"
    assert again.data.params == original.data.params


@pytest.mark.xdist_group("rerun")
def test_rerun_reports_a_version_difference_before_running(recorded, tmp_path):
    client = MlflowClient(tracking_uri=recorded.uri)
    source = client.get_run(recorded.run_id)
    # a copy of the finished run with an older Keras recorded, so the original stays intact
    copy = client.create_run(
        source.info.experiment_id, tags={**source.data.tags, "version.keras": "0.0.0"}
    )
    copy_id = copy.info.run_id
    local = client.download_artifacts(recorded.run_id, "config/config.yaml", str(tmp_path))
    client.log_artifact(copy_id, local, "config")
    stamp = int(time.time() * 1000)
    client.log_batch(
        copy_id,
        metrics=[Metric(k, v, stamp, 0) for k, v in source.data.metrics.items()],
    )
    client.log_inputs(copy_id, datasets=list(source.inputs.dataset_inputs))
    client.set_terminated(copy_id, "FINISHED")

    done = rerun(recorded, copy_id, tmp_path)
    installed = metadata.version("keras")
    line = f"losslab-rerun: version differs: version.keras: recorded 0.0.0, installed {installed}"
    before_training(done.stdout, line)
    assert "data differs" not in done.stdout
    assert done.returncode == 0, output(done)  # the metrics still match
    assert set(compared(done.stdout).values()) == {"same"}


@pytest.mark.xdist_group("rerun")
def test_rerun_reports_a_data_difference_before_running(recorded, tmp_path):
    client = MlflowClient(tracking_uri=recorded.uri)
    source = client.get_run(recorded.run_id)
    (data_input,) = source.inputs.dataset_inputs
    real_hash = {t.key: t.value for t in data_input.tags}["losslab.data_hash"]
    # a run recorded with other data, as if the generator had changed since
    crafted = client.create_run(source.info.experiment_id, tags=dict(source.data.tags))
    crafted_id = crafted.info.run_id
    local = client.download_artifacts(recorded.run_id, "config/config.yaml", str(tmp_path))
    client.log_artifact(crafted_id, local, "config")
    stamp = int(time.time() * 1000)
    client.log_batch(
        crafted_id,
        metrics=[Metric(k, v, stamp, 0) for k, v in source.data.metrics.items()],
    )
    other = "0" * 64
    dataset = Dataset(data_input.dataset.name, other[:32], "local", "/elsewhere/dataset.npz")
    client.log_inputs(crafted_id, [DatasetInput(dataset, [InputTag("losslab.data_hash", other)])])
    client.set_terminated(crafted_id, "FINISHED")

    done = rerun(recorded, crafted_id, tmp_path)
    line = f"losslab-rerun: data differs: recorded {other[:12]}, now {real_hash[:12]}"
    before_training(done.stdout, line)
    assert "version differs" not in done.stdout
    assert done.returncode == 0, output(done)
    assert set(compared(done.stdout).values()) == {"same"}


@pytest.mark.xdist_group("rerun")
def test_rerun_reports_metric_differences_with_exit_1(recorded, tmp_path):
    client = MlflowClient(tracking_uri=recorded.uri)
    source = client.get_run(recorded.run_id)
    altered = client.create_run(source.info.experiment_id, tags=dict(source.data.tags))
    altered_id = altered.info.run_id
    local = client.download_artifacts(recorded.run_id, "config/config.yaml", str(tmp_path))
    client.log_artifact(altered_id, local, "config")
    stamp = int(time.time() * 1000)
    metrics = dict(source.data.metrics)
    metrics["test_loss"] += 1.0  # a record that the re-created run cannot match
    client.log_batch(altered_id, metrics=[Metric(k, v, stamp, 0) for k, v in metrics.items()])
    client.set_terminated(altered_id, "FINISHED")

    done = rerun(recorded, altered_id, tmp_path)
    assert done.returncode == 1, output(done)
    verdicts = compared(done.stdout)
    assert verdicts.pop("test_loss") == "differs by -1"
    assert set(verdicts.values()) == {"same"}
    n = len(verdicts) + 1
    assert f"{n - 1} of {n} metrics identical" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
