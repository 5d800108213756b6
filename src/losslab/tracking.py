"""MLflow tracking: where runs go, what each run holds, and how every run ends.

The embedded default is the SQLite store ``mlflow.db`` at the project root with artifacts in
``mlartifacts/`` beside it, both as absolute paths so Hydra run directories and DVC workspaces
all write to one store. ``tracking.uri`` or ``$MLFLOW_TRACKING_URI`` point runs elsewhere.

Every run is logged by the process that trains, through MLflow's own client. MLflow is imported
only where a run is started: an untracked run and a config error do without its 1 to 2 s.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from omegaconf import DictConfig

from losslab.cli import INTERRUPTIONS, as_interruption, sigterm_as_exception
from losslab.config import ConfigError, as_plain

if TYPE_CHECKING:
    import mlflow

_CHECKOUT = Path(__file__).resolve().parents[2]
# the checkout of an editable install; an installed package keeps no store in site-packages
PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "conf").is_dir() else Path.cwd()
TRUNCATED = "...[truncated]"
MODEL_TAG = "losslab.model_md5"
_STATISTICS_FROM_ROWS = 2000  # metric values; below it any query plan reads a few pages
_VERSIONED = ("tensorflow", "keras", "mlflow", "hydra-core", "dvc", "numpy", "scikit-learn")


def tracking_uri(cfg: DictConfig) -> str:
    """``tracking.uri``, else ``$MLFLOW_TRACKING_URI``, else SQLite at the project root."""
    return resolve_uri(cfg.tracking.uri)


def resolve_uri(uri: str | None) -> str:
    """The URI as configured (credentials included): mask it before showing it anywhere."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri()


def default_uri() -> str:
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


_CREDENTIALS = re.compile(r"(://[^:/@\s]+:)([^@\s]+)(@)")


def masked_uri(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@host`` in it replaced."""
    return _CREDENTIALS.sub(r"\1***\3", text)


def client_uri(uri: str) -> str:
    """The URI without user and password, which go to MLflow's own variables instead, so that
    MLflow never prints them (it shows the tracking URI in its run links)."""
    parts = urlsplit(uri)
    if parts.password is None or not parts.scheme.startswith("http"):
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = parts.username or ""
    os.environ["MLFLOW_TRACKING_PASSWORD"] = parts.password
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def prepare(cfg: DictConfig) -> str:
    """Point MLflow at the store and make sure the experiment exists; return its id.

    A server that does not answer is reported at once (MLflow's client would retry for
    minutes). For SQLite the store's schema migration and the experiment's creation happen
    under a file lock, so jobs starting together on a fresh store do not race each other, and
    so does keeping the store's query statistics (:func:`_keep_statistics`). A process that
    runs job after job (a sweep's worker) does that once per store.
    """
    import mlflow

    uri, experiment = tracking_uri(cfg), cfg.tracking.experiment
    check_store(uri)
    mlflow.set_tracking_uri(client_uri(uri))
    if not uri.startswith("sqlite:///"):
        return _experiment_id(experiment, None)
    db_path = Path(uri.removeprefix("sqlite:///"))
    if (uri, experiment) not in _PREPARED or not db_path.exists():
        from filelock import FileLock

        with FileLock(f"{db_path}.lock"):
            artifacts = (db_path.parent / "mlartifacts").as_uri()
            _PREPARED[uri, experiment] = _experiment_id(experiment, artifacts)
            _keep_statistics(db_path)
    return _PREPARED[uri, experiment]


_PREPARED: dict[tuple[str, str], str] = {}  # (SQLite store, experiment) -> its id


def _keep_statistics(db_path: Path) -> None:
    """Gather SQLite's query statistics when the metrics table has doubled since last time.

    Without them SQLite reads one run's history of a metric (``losslab-report`` and MLflow's
    charts do) through MLflow's key index, across every run in the store; with them, through
    the run's own index. Gathering reads the whole store (64 ms for 100,000 values).
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        (rows,) = db.execute("SELECT coalesce(max(rowid), 0) FROM metrics").fetchone()
        try:
            gathered = db.execute(
                "SELECT max(CAST(stat AS INTEGER)) FROM sqlite_stat1 WHERE tbl = 'metrics'"
            ).fetchone()[0]
        except sqlite3.OperationalError:  # no statistics yet
            gathered = None
        if rows >= _STATISTICS_FROM_ROWS and (gathered is None or rows >= 2 * gathered):
            db.execute("ANALYZE")
            db.commit()


def check_store(uri: str) -> None:
    """What can be told of a store without MLflow: that a SQLite file's folder exists or can be
    made, and can be written; that a tracking server answers."""
    if uri.startswith("sqlite:///"):
        _check_folder(Path(uri.removeprefix("sqlite:///")).parent)
    if uri.startswith(("http://", "https://")):
        _check_reachable(uri)


def _check_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        reason = None if os.access(folder, os.W_OK) else "not writable"
    except OSError as error:
        reason = error.strerror or type(error).__name__
    if reason:
        raise ConfigError(
            f"tracking.uri: cannot keep the SQLite store in {folder} ({reason}); point "
            "tracking.uri or MLFLOW_TRACKING_URI at a writable folder"
        )


def _check_reachable(uri: str) -> None:
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
    except requests.RequestException as error:
        reason = type(error).__name__
        raise ConfigError(
            f"tracking.uri: the MLflow server at {masked_uri(uri)} does not answer ({reason}); "
            "start it, or unset MLFLOW_TRACKING_URI / tracking.uri to use the local mlflow.db"
        ) from None


def _experiment_id(name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as error:  # a process starting at the same moment created it
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys; lists stay whole (``model.hidden`` = ``[4, 2]``)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _fit(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def _fit_key(key: str) -> str:
    """A key within MLflow's length limit, in the characters MLflow allows; the hash of the
    full key keeps two long keys with the same beginning apart."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH

    if len(key) <= MAX_ENTITY_KEY_LENGTH:
        return key
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return f"{key[: MAX_ENTITY_KEY_LENGTH - 23]}...truncated.{digest}"


def public_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain values, with any password in the tracking URI masked."""
    plain = as_plain(cfg)
    if plain["tracking"]["uri"]:
        plain["tracking"]["uri"] = masked_uri(plain["tracking"]["uri"])
    return plain


def param_values(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as the text of MLflow params, before MLflow's limits."""
    return {
        key: json.dumps(value) if isinstance(value, list | dict) else str(value)
        for key, value in flatten(public_config(cfg)).items()
    }


def config_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as MLflow params, truncated visibly to MLflow's limits."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    return {
        _fit_key(key): _fit(text, MAX_PARAM_VAL_LENGTH) for key, text in param_values(cfg).items()
    }


def run_name(cfg: DictConfig) -> str:
    """ASCII, so that it is easy to type in MLflow's search box."""
    return f"{cfg.dataset.name}-{cfg.loss.name}-{cfg.optimizer.name}-s{cfg.seed}"


@functools.cache
def _git(*args: str) -> str | None:
    """Asked once per process: its runs use the code it started with."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def installed_version(package: str) -> str | None:
    """Read once per process: installed packages do not change under it. TensorFlow is
    ``tensorflow-cpu`` on Linux and Windows, ``tensorflow`` on macOS."""
    for name in (f"{package}-cpu", package) if package == "tensorflow" else (package,):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
    return None


def library_versions() -> dict[str, str]:
    versions = {"version.python": platform.python_version()}
    for package in _VERSIONED:
        if version := installed_version(package):
            versions[f"version.{package}"] = version
    return versions


def run_tags(cfg: DictConfig, entry_point: str, overrides: list[str]) -> dict[str, str]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    tags = {
        "mlflow.runName": run_name(cfg),
        "losslab.entry_point": entry_point,
        "losslab.preset": cfg.preset or "",
        "losslab.overrides": masked_uri(" ".join(overrides)),
        "losslab.dataset": cfg.dataset.name,
        "losslab.loss": cfg.loss.name,
        "losslab.optimizer": cfg.optimizer.name,
        "losslab.tracking_uri": masked_uri(tracking_uri(cfg)),
        "git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git.dirty": "unknown" if status is None else str(bool(status)).lower(),
        **library_versions(),
    }
    return {key: _fit(str(value), 5000) for key, value in tags.items()}


@contextmanager
def run(
    cfg: DictConfig,
    entry_point: str,
    overrides: list[str] = (),
    run_id: str | None = None,
    describe: bool = True,
    extra_tags: dict[str, str] | None = None,
) -> Iterator[mlflow.ActiveRun | None]:
    """Start (or, with ``run_id``, resume) a run and end it as FINISHED, FAILED or KILLED.

    ``describe`` logs the config as params and the run's tags; a later DVC stage resuming the
    train stage's run skips it. Under ``mlflow run`` the run MLflow made ($MLFLOW_RUN_ID) is
    the one filled in. No path leaves the run RUNNING: an exception marks it FAILED with the
    error in the ``losslab.error`` tag, Ctrl-C and SIGTERM mark it KILLED. With
    ``tracking.enabled: false`` no run is started and the log functions below do nothing.
    """
    if not cfg.tracking.enabled:
        with sigterm_as_exception():
            yield None
        return
    import mlflow
    from mlflow.entities import RunStatus

    if run_id is None and os.environ.get("MLFLOW_RUN_ID"):  # started by `mlflow run`
        run_id, entry_point = os.environ["MLFLOW_RUN_ID"], "mlflow-run"
    experiment_id = prepare(cfg)
    tags = {**run_tags(cfg, entry_point, list(overrides)), **(extra_tags or {})} if describe else {}
    with sigterm_as_exception():
        active = mlflow.start_run(
            run_id=run_id,
            experiment_id=None if run_id else experiment_id,
            run_name=tags.get("mlflow.runName"),
            tags={**tags, **holder_tags()},  # with the run's creation: no call of their own
        )
        try:
            if describe:
                _describe(cfg, list(overrides))
            yield active
        except BaseException as caught:
            error = as_interruption(caught)
            if isinstance(error, INTERRUPTIONS):
                _end(RunStatus.KILLED, str(error) or "interrupted")
            else:
                _end(RunStatus.FAILED, _fit(f"{type(error).__name__}: {error}", 5000))
            raise
        if run_id and "losslab.error" in mlflow.get_run(run_id).data.tags:  # an earlier failure
            mlflow.MlflowClient().delete_tag(run_id, "losslab.error")
        _end(RunStatus.FINISHED)


def holder_tags() -> dict[str, str]:
    """Which process holds a run, so that losslab-doctor can tell a dead one from a live one."""
    return {"losslab.pid": str(os.getpid()), "losslab.host": socket.gethostname()}


def _end(status: int, error: str | None = None) -> None:
    import mlflow
    from mlflow.entities import RunStatus

    if error is not None:
        mlflow.set_tag("losslab.error", error)
    mlflow.end_run(RunStatus.to_string(status))


def _describe(cfg: DictConfig, overrides: list[str]) -> None:
    """Params and the resolved config of a new run."""
    import mlflow

    mlflow.log_params(config_params(cfg))
    mlflow.log_dict(public_config(cfg), "config/config.yaml")
    mlflow.log_text(masked_uri("\n".join(overrides)) + "\n", "config/overrides.txt")


def active_run_id() -> str | None:
    """The run this process holds. A process that never imported MLflow holds none, and asking
    must not import MLflow."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    return run.info.run_id if run is not None else None


class EpochMetrics:
    """Buffers per-epoch metrics and sends them with one ``log_batch`` every few seconds.

    One MLflow call per value costs more than a small model's epoch; batched, they cost it
    almost nothing while the UI still follows a long run.
    """

    def __init__(self, flush_every: float = 10.0) -> None:
        self.flush_every = flush_every
        self.pending: list[tuple[str, float, int, int]] = []  # Metric's fields
        self.last_flush = time.monotonic()

    def add(self, epoch: int, logs: dict[str, float]) -> None:
        stamp = int(time.time() * 1000)
        self.pending += [(k, float(v), stamp, epoch) for k, v in logs.items()]
        if time.monotonic() - self.last_flush >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """One ``log_batch`` (MLflow's client splits it within its limits)."""
        import mlflow
        from mlflow.entities import Metric

        if self.pending:
            metrics = [Metric(*row) for row in self.pending]
            mlflow.MlflowClient().log_batch(active_run_id(), metrics=metrics)
        self.pending, self.last_flush = [], time.monotonic()


def epoch_metrics() -> EpochMetrics | None:
    return EpochMetrics() if active_run_id() else None


def tag_model(md5: str) -> None:
    """Tag the active run with its model file's hash, by which :func:`run_of_model` finds it."""
    if active_run_id():
        import mlflow

        mlflow.set_tag(MODEL_TAG, md5)


def run_of_model(cfg: DictConfig, md5: str) -> str | None:
    """The newest run whose model file has this hash: a DVC stage after train adds to it, with
    no run id kept in a file (a run's id changes from run to run; the model's bytes do not)."""
    import mlflow

    found = mlflow.MlflowClient().search_runs(
        [prepare(cfg)],
        filter_string=f"tags.`{MODEL_TAG}` = '{md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0].info.run_id if found else None


def log_artifact(path: Path, folder: str) -> None:
    if active_run_id():
        import mlflow

        mlflow.log_artifact(str(path), folder)


def log_loss_source(path: Path) -> None:
    """A custom loss's source file with the run, and its SHA-256 as the tag
    ``losslab.loss_sha256``: which code defined the loss the run trained with."""
    if active_run_id():
        import mlflow

        mlflow.log_artifact(str(path), "loss")
        mlflow.set_tag("losslab.loss_sha256", hashlib.sha256(path.read_bytes()).hexdigest())


def log_metrics(values: dict[str, float]) -> None:
    """Final values, at step 0."""
    if active_run_id():
        import mlflow

        mlflow.log_metrics(values, step=0)


def final_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Evaluation results named as MLflow metrics: ``train_loss``, ``test_accuracy``, ..."""
    return {f"{split}_{k}": v for split, scores in results.items() for k, v in scores.items()}


def log_final_metrics(results: dict[str, dict[str, float]]) -> None:
    log_metrics(final_metrics(results))


def log_dataset(meta: dict[str, Any], source: Path, x_train: Any, y_train: Any) -> None:
    """The training data as an MLflow dataset input carrying losslab's content hash (``meta``
    is the dataset's metadata), and that hash as a searchable tag: tags.`losslab.data_hash`."""
    if not active_run_id():
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(
            x_train,
            targets=y_train,
            source=str(source.resolve()),
            name=meta["name"],
            digest=meta["sha256"][:32],
        )
    tags = {"losslab.data_hash": meta["sha256"], "losslab.classes": json.dumps(meta.get("classes"))}
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context="training", tags=tags)
            break
        except MlflowException:
            # Jobs registering the same new dataset at once: MLflow's store inserts it without a
            # lock and one insert fails on its unique key. It exists now; linking it succeeds.
            if attempt == 2:
                raise
            time.sleep(0.2)
    mlflow.set_tag("losslab.data_hash", meta["sha256"])


@functools.cache
def _model_requirements() -> list[str]:
    """The installed versions of what the logged model needs to load. Given explicitly:
    inferring them loads the model again and checks every installed package."""
    packages = ("mlflow", "keras", "numpy")
    tensorflow = "tensorflow-cpu" if installed_version("tensorflow-cpu") else "tensorflow"
    return [f"{p}=={metadata.version(p)}" for p in (*packages, tensorflow)]


def log_model(model: Any, example: Any) -> None:
    """The trained Keras model (uncompiled: :func:`losslab.training.layers_only`) in MLflow's
    ``keras`` flavor, with its signature and an input example, as the run's logged model.

    ``mlflow.keras.log_model`` writes the input example before it creates the model's folder
    (mlflow#16183), so the model is saved into a folder made first and logged through MLflow's
    logged-model API.
    """
    if not active_run_id():
        return
    import keras
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model, infer_signature

    example = example[:5]
    signature = infer_signature(example, keras.ops.convert_to_numpy(model(example)))
    run = mlflow.active_run().info
    client = mlflow.MlflowClient()
    logged = mlflow.initialize_logged_model(
        name="model", source_run_id=run.run_id, experiment_id=run.experiment_id
    )
    with tempfile.TemporaryDirectory(prefix="losslab-model-") as folder:
        path = os.path.join(folder, "model")
        os.mkdir(path)
        mlflow.keras.save_model(
            model,
            path,
            mlflow_model=Model(run_id=run.run_id, model_id=logged.model_id),
            signature=signature,
            input_example=example,
            pip_requirements=_model_requirements(),
        )
        client.log_model_artifacts(logged.model_id, path)
    mlflow.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run.run_id, models=[LoggedModelOutput(logged.model_id, step=0)])
