"""Shared fixtures: Hydra-composed configs shrunk for tests, and a private MLflow store."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

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


@pytest.fixture
def tiny_cfg(compose_raw, tracking_uri) -> Callable[..., DictConfig]:
    """A validated config with few epochs and a small dataset, tracked in the temp store."""

    def make(*overrides: str, epochs: int = 3, n_samples: int = 200) -> DictConfig:
        raw = compose_raw(*overrides)
        with open_dict(raw):
            raw.trainer.epochs = epochs
            raw.trainer.verbose = 0
            raw.dataset.n_test = max(1, raw.dataset.n_test * n_samples // raw.dataset.n_samples)
            raw.dataset.n_samples = n_samples
            raw.tracking.uri = tracking_uri
        return validate(raw)

    return make


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
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_RUN_ID", None)
    return env
