"""What holds on every platform: an installed (not editable) package keeps its store in the
working directory, never inside site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import REPO_ROOT


def test_an_installed_package_keeps_its_store_in_the_working_directory(tmp_path):
    site, work = tmp_path / "site-packages", tmp_path / "work"
    shutil.copytree(REPO_ROOT / "src" / "losslab", site / "losslab")
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", "from losslab import tracking; print(tracking.default_uri())"],
        cwd=work,
        env={"PYTHONPATH": str(site), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"sqlite:///{work.resolve() / 'mlflow.db'}"


def test_the_checkout_keeps_its_store_at_its_root(tmp_path):
    from losslab import tracking

    assert tracking.default_uri() == f"sqlite:///{REPO_ROOT / 'mlflow.db'}"
