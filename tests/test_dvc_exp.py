"""``dvc exp run -S ...`` in a clone: DVC composes params.yaml from conf/ with Hydra, then runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import clone_repo, run_env
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

DVC = str(Path(sys.executable).parent / "dvc")


@dataclass
class Workspace:
    clone: Path
    uri: str

    def dvc(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DVC, *args],
            cwd=self.clone,
            env=run_env(self.uri),
            capture_output=True,
            text=True,
            timeout=900,
        )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("dvc_exp")
    clone = clone_repo(root / "clone")
    for key, value in (("user.name", "losslab tests"), ("user.email", "tests@losslab.invalid")):
        subprocess.run(["git", "config", key, value], cwd=clone, check=True)
    return Workspace(clone, f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def exp_run(workspace: Workspace, *overrides: str) -> str:
    """Run one experiment with ``-S`` overrides; return its name."""
    args = [arg for override in overrides for arg in ("-S", override)]
    done = workspace.dvc("exp", "run", *args)
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    found = re.search(r"Ran experiment\(s\): (\S+)", text)
    assert found, text
    return found.group(1)


def experiments(workspace: Workspace) -> Iterator[dict]:
    """Every experiment revision ``dvc exp show --json`` lists, with its name and data."""
    done = workspace.dvc("exp", "show", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    for baseline in json.loads(done.stdout):
        for group in baseline.get("experiments") or []:
            yield from group["revs"]


def shown(workspace: Workspace, name: str) -> tuple[dict, dict]:
    """The params and metrics ``dvc exp show`` records for experiment ``name``."""
    matches = [rev for rev in experiments(workspace) if rev["name"] == name]
    assert len(matches) == 1, [rev["name"] for rev in experiments(workspace)]
    data = matches[0]["data"]
    return data["params"]["params.yaml"]["data"], data["metrics"]["metrics.json"]["data"]


def test_exp_run_composes_a_loss_override(workspace: Workspace, compose_raw) -> None:
    overrides = ("loss=squared_hinge", "trainer.epochs=2", "trainer.verbose=0")
    name = exp_run(workspace, *overrides)

    written = OmegaConf.to_container(OmegaConf.load(workspace.clone / "params.yaml"))
    assert written == OmegaConf.to_container(compose_raw(*overrides))

    params, metrics = shown(workspace, name)
    assert params["loss"]["name"] == "squared_hinge"
    assert params["trainer"]["epochs"] == 2
    assert params["dataset"]["name"] == "circles_noisy"
    applied = json.loads((workspace.clone / "metrics.json").read_text())
    assert metrics == applied
    for split in ("train", "test"):
        assert set(metrics[split]) == {"loss", "accuracy"}

    client = MlflowClient(tracking_uri=workspace.uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    runs = client.search_runs(ids, run_view_type=ViewType.ALL)
    losses = [r.data.tags["losslab.loss"] for r in runs if r.info.status == "FINISHED"]
    assert "squared_hinge" in losses
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []


def test_exp_run_composes_a_preset(workspace: Workspace) -> None:
    name = exp_run(workspace, "experiment=blobs_kld", "trainer.epochs=2", "trainer.verbose=0")
    params, metrics = shown(workspace, name)
    assert params["preset"] == "blobs_kld"
    assert params["dataset"]["name"] == "blobs"
    assert params["loss"]["name"] == "kld"
    assert params["trainer"]["epochs"] == 2
    assert set(metrics) == {"train", "test"}
    workspace_params = OmegaConf.load(workspace.clone / "params.yaml")
    assert workspace_params.dataset.name == "blobs"
