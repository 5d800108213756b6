"""``dvc exp run -S ...`` in a clone: DVC composes params.yaml from conf/ with Hydra, then runs;
the same overrides run again give the same metrics and the same outputs, byte for byte."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import all_runs, clone_repo, own_code, run_env
from omegaconf import OmegaConf

pytestmark = pytest.mark.xdist_group("dvc_exp")  # one worker makes the experiments, once

DVC = str(Path(sys.executable).parent / "dvc")
# a preset with a loss override on top of it (the override wins), and few epochs
OVERRIDES = ("experiment=blobs_kld", "loss=cce", "trainer.epochs=2", "trainer.verbose=0")


@dataclass
class Experiments:
    """Two experiments with the same overrides in a clone: the second forced (-f), so that its
    stages run again rather than being restored from DVC's run cache."""

    clone: Path
    uri: str
    first: subprocess.CompletedProcess
    again: subprocess.CompletedProcess
    params_after_first: dict  # params.yaml as the first experiment composed it
    shown: subprocess.CompletedProcess  # dvc exp show --json, after both


def exp_name(done: subprocess.CompletedProcess) -> str:
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-4000:]
    found = re.search(r"Ran experiment\(s\): (\S+)", text)
    assert found, text[-4000:]
    return found.group(1)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory, empty_store) -> Experiments:
    root = tmp_path_factory.mktemp("dvc_exp")
    clone, uri = clone_repo(root / "clone"), empty_store(root)
    for key, value in (("user.name", "losslab tests"), ("user.email", "tests@losslab.invalid")):
        subprocess.run(["git", "config", key, value], cwd=clone, check=True)

    def dvc(*args: str) -> subprocess.CompletedProcess:
        env = {**run_env(uri), **own_code(clone)}
        return subprocess.run(
            [DVC, *args], cwd=clone, env=env, capture_output=True, text=True, timeout=900
        )

    settings = [arg for override in OVERRIDES for arg in ("-S", override)]
    first = dvc("exp", "run", *settings)
    params = OmegaConf.to_container(OmegaConf.load(clone / "params.yaml"))
    again = dvc("exp", "run", "-f", *settings)
    return Experiments(clone, uri, first, again, params, dvc("exp", "show", "--json"))


def shown(experiments: Experiments, name: str) -> dict:
    """What ``dvc exp show`` records for experiment ``name``: params, metrics, deps, outs."""
    assert experiments.shown.returncode == 0, experiments.shown.stderr[-3000:]
    revs = [
        rev
        for baseline in json.loads(experiments.shown.stdout)
        for group in baseline.get("experiments") or []
        for rev in group["revs"]
    ]
    matches = [rev for rev in revs if rev["name"] == name]
    assert len(matches) == 1, [rev["name"] for rev in revs]
    return matches[0]["data"]


def test_exp_run_composes_a_preset_and_a_loss_override(experiments: Experiments, compose_raw):
    name = exp_name(experiments.first)
    assert experiments.params_after_first == OmegaConf.to_container(compose_raw(*OVERRIDES))
    data = shown(experiments, name)
    params = data["params"]["params.yaml"]["data"]
    assert params["preset"] == "blobs_kld"
    assert params["dataset"]["name"] == "blobs"
    assert params["loss"]["name"] == "cce"  # the override, not the preset's kld
    assert params["trainer"]["epochs"] == 2
    metrics = data["metrics"]["metrics.json"]["data"]
    for split in ("train", "test"):  # a softmax head: the test split's calibration too
        assert set(metrics[split]) == {"loss", "accuracy"} | ({"ece"} if split == "test" else set())
    for stage in ("generate", "train", "evaluate", "plot"):  # a new dataset: every stage
        assert f"Running stage '{stage}'" in experiments.first.stdout


def test_exp_run_with_the_same_params_gives_the_same_metrics_and_outputs(
    experiments: Experiments,
) -> None:
    first, again = exp_name(experiments.first), exp_name(experiments.again)
    assert first != again
    for stage in ("generate", "train", "evaluate", "plot"):  # run again, not restored
        assert f"Running stage '{stage}'" in experiments.again.stdout
    before, after = shown(experiments, first), shown(experiments, again)
    assert after["params"] == before["params"]
    assert after["metrics"] == before["metrics"]
    outs = {path: out["hash"] for path, out in before["outs"].items()}
    assert set(outs) == {"data/dataset.npz", "data/dataset.json", "model/model.keras", "plots"}
    assert {path: out["hash"] for path, out in after["outs"].items()} == outs
    applied = json.loads((experiments.clone / "metrics.json").read_text())
    assert after["metrics"]["metrics.json"]["data"] == applied


def test_exp_runs_log_one_mlflow_run_each(experiments: Experiments) -> None:
    """Each experiment is a dvc repro: one run, found by its model's hash. The same model twice
    gives two runs with the same hash; the stages after train add to the newest."""
    for done in (experiments.first, experiments.again):
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    runs = all_runs(experiments.uri)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    ours = [r for r in runs if r.data.tags.get("losslab.loss") == "cce"]
    assert len(ours) == 2, [(r.data.tags.get("losslab.loss"), r.info.status) for r in runs]
    assert {r.info.status for r in ours} == {"FINISHED"}
    assert len({r.data.tags["losslab.model_md5"] for r in ours}) == 1
    applied = json.loads((experiments.clone / "metrics.json").read_text())
    for run in ours:
        assert run.data.metrics["test_accuracy"] == pytest.approx(applied["test"]["accuracy"])
