"""Shared fixtures and helpers: Hydra-composed configs shrunk for tests, a private MLflow store,
a clone of the repo, a real MLflow server on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from losslab.app import CONF_DIR
from losslab.config import validate

REPO_ROOT = CONF_DIR.parent
# the 11 reference presets; real_* carry the studies over to bundled real datasets
PRESETS = sorted(
    path.stem
    for path in (CONF_DIR / "experiment").glob("*.yaml")
    if not path.stem.startswith("real_")
)


@pytest.fixture(scope="session")
def compose_raw() -> Iterator[Callable[..., DictConfig]]:
    """Compose ``conf/`` with Hydra, as the app does, for the given overrides."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite store in the test's temp dir, also exported for subprocesses."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri


def shrink(raw: DictConfig, uri: str, epochs: int = 3, n_samples: int = 200) -> DictConfig:
    """``raw`` (a synthetic dataset's config) with few epochs and samples, tracked at ``uri``,
    validated."""
    with open_dict(raw):
        raw.trainer.epochs = epochs
        raw.trainer.verbose = 0
        raw.dataset.n_test = max(1, raw.dataset.n_test * n_samples // raw.dataset.n_samples)
        raw.dataset.n_samples = n_samples
        raw.tracking.uri = uri
    return validate(raw)


@pytest.fixture
def tiny_cfg(compose_raw, tracking_uri) -> Callable[..., DictConfig]:
    """A validated config with few epochs and a small dataset, tracked in the temp store."""

    def make(*overrides: str, epochs: int = 3, n_samples: int = 200) -> DictConfig:
        return shrink(compose_raw(*overrides), tracking_uri, epochs, n_samples)

    return make


def all_runs(uri: str) -> list:
    """Every run in the store, deleted ones too; a store never created holds none (and stays
    absent), and so does a server that does not answer."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    if uri.startswith("http"):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
        except OSError:
            return []
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return []
    return client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000)


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_run() -> Iterator[None]:
    """Every test must end its MLflow runs; a run left active would leak into the next test."""
    import mlflow

    yield
    leaked = mlflow.active_run()
    while mlflow.active_run():
        mlflow.end_run()
    assert leaked is None, f"test left MLflow run {leaked.info.run_id} active"


def run_env(tracking: str) -> dict[str, str]:
    """Environment for losslab subprocesses: the venv's scripts first, the temp store."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_RUN_ID", None)
    return env


def run_command(
    cmd: list[str], cwd: Path, uri: str, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    """``cmd`` run to its end in ``cwd`` against the store ``uri``, its output captured."""
    return subprocess.run(
        cmd, cwd=cwd, env={**run_env(uri), **env}, capture_output=True, text=True, timeout=timeout
    )


def clone_repo(target: Path) -> Path:
    """A clone of the repo's committed HEAD, as CI and a new user get it."""
    subprocess.run(
        ["git", "clone", "--quiet", str(REPO_ROOT), str(target)], check=True, capture_output=True
    )
    return target


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 storing under ``root``; yields its URL and stops it
    (with its workers) on the way out."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server"]
    command += ["--backend-store-uri", f"sqlite:///{root / 'srv.db'}"]
    command += ["--default-artifact-root", str(root / "art"), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    with serving(command, f"http://127.0.0.1:{port}", root) as url:
        yield url


@contextmanager
def serving(command: list[str], url: str, root: Path, env: dict | None = None) -> Iterator[str]:
    """Run ``command`` (a server, started in ``root``) until it answers ``url``/health; yield the
    URL and stop it with everything it started (its process group) on the way out."""
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers share its process group, ended together below
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (root / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 90 s"
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def set_params(path: Path, **changes: object) -> None:
    """Set dotted keys in a params file, e.g. ``**{"trainer.epochs": 2}``."""
    params = OmegaConf.load(path)
    for key, value in changes.items():
        OmegaConf.update(params, key, value, merge=False)
    OmegaConf.save(params, path)


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``condition`` until it returns something true; fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            _, stderr = proc.communicate()
            pytest.fail(f"process exited with {proc.returncode} waiting for {what}:\n{stderr}")
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
