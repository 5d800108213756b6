"""The DVC remote: push data and models from one clone, pull them into a fresh one, and find
nothing to rerun there."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clone_repo, run_env
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

DVC = str(Path(sys.executable).parent / "dvc")
OUTPUTS = ("data/dataset.npz", "data/dataset.json", "model/model.keras", "model/run.json")


def sh(cmd: list[str], cwd: Path, uri: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        cmd, cwd=cwd, env=run_env(uri), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_push_from_one_clone_pull_into_another(tmp_path: Path, tracking_uri: str) -> None:
    remote = tmp_path / "remote"
    first = clone_repo(tmp_path / "first")
    assert sh([DVC, "remote", "default"], first, tracking_uri).stdout.strip() == "local"
    params = OmegaConf.load(first / "params.yaml")
    params.trainer.epochs, params.trainer.verbose = 2, 0
    params.dataset.n_samples, params.dataset.n_test = 200, 100
    OmegaConf.save(params, first / "params.yaml")
    sh([DVC, "remote", "modify", "--local", "local", "url", str(remote)], first, tracking_uri)
    sh([DVC, "repro"], first, tracking_uri)
    pushed = sh([DVC, "push"], first, tracking_uri)
    assert "pushed" in pushed.stdout and any(remote.rglob("*"))
    for key, value in (("user.name", "losslab tests"), ("user.email", "tests@losslab.invalid")):
        sh(["git", "config", key, value], first, tracking_uri)
    sh(["git", "commit", "-qam", "tiny experiment"], first, tracking_uri)

    second = clone_repo(tmp_path / "second")  # a clone of the first clone's commit
    subprocess.run(["git", "pull", "-q", str(first)], cwd=second, check=True)
    sh([DVC, "remote", "modify", "--local", "local", "url", str(remote)], second, tracking_uri)
    assert not (second / "model" / "model.keras").exists()
    sh([DVC, "pull"], second, tracking_uri)
    for output in OUTPUTS:
        assert md5(second / output) == md5(first / output), output
    again = sh([DVC, "repro"], second, tracking_uri)
    assert "Running stage" not in again.stdout + again.stderr
    assert "Data and pipelines are up to date" in again.stdout
