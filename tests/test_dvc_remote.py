"""The DVC remote: push data and models from one clone, pull them into a fresh one, and find
nothing to rerun there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import Reproduced, clone_repo, file_md5, own_code, run_env

DVC = str(Path(sys.executable).parent / "dvc")
OUTPUTS = ("data/dataset.npz", "data/dataset.json", "model/model.keras", "plots/dataset.png")


def sh(cmd: list[str], cwd: Path, uri: str) -> subprocess.CompletedProcess:
    env = {**run_env(uri), **own_code(cwd)}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def test_push_from_one_clone_pull_into_another(
    reproduced_clone: Reproduced, tmp_path: Path
) -> None:
    """A copy of the reproduced clone pushes what dvc repro made; a fresh clone of the same
    commit pulls it (its dvc.lock is the committed one: the pushed outputs are the ones it
    names) and has nothing to rerun."""
    remote = tmp_path / "remote"
    first, uri = reproduced_clone.copy(tmp_path / "first")
    assert sh([DVC, "remote", "default"], first, uri).stdout.strip() == "local"
    sh([DVC, "remote", "modify", "--local", "local", "url", str(remote)], first, uri)
    pushed = sh([DVC, "push"], first, uri)
    assert "pushed" in pushed.stdout and any(remote.rglob("*"))

    second = clone_repo(tmp_path / "second")
    sh([DVC, "remote", "modify", "--local", "local", "url", str(remote)], second, uri)
    assert not (second / "model" / "model.keras").exists()
    sh([DVC, "pull"], second, uri)
    for output in OUTPUTS:
        assert file_md5(second / output) == file_md5(first / output), output
    again = sh([DVC, "repro"], second, uri)
    assert "Running stage" not in again.stdout + again.stderr
    assert "Data and pipelines are up to date" in again.stdout
