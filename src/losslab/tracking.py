"""MLflow tracking: where runs go, what each run holds, and how every run ends.

The embedded default is the SQLite store ``mlflow.db`` at the project root with artifacts in
``mlartifacts/`` beside it, both as absolute paths so Hydra run directories and DVC workspaces
all write to one store. ``tracking.uri`` or ``$MLFLOW_TRACKING_URI`` point runs elsewhere.

MLflow is imported only where a run is started or logged to: it costs 1 to 2 s per process, which
an untracked run and a config error do without, and which a command that starts fresh leaves to
its side process (:class:`SideProcess`) on another core, and a sweep to its one tracker.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from omegaconf import DictConfig

from losslab.cli import INTERRUPTIONS, Terminated, as_interruption, sigterm_as_exception
from losslab.config import ConfigError, as_plain

if TYPE_CHECKING:
    import mlflow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRUNCATED = "...[truncated]"
_MODEL_REQUIREMENTS = ("mlflow", "keras", "tensorflow-cpu", "numpy")  # what a logged model needs
_STATISTICS_FROM_ROWS = 2000  # metric values; below it any query plan reads a few pages
_VERSIONED = ("tensorflow-cpu", "keras", "mlflow", "hydra-core", "dvc", "numpy", "scikit-learn")


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
    so does keeping the store's query statistics (:func:`_keep_statistics`).
    """
    import mlflow

    uri = tracking_uri(cfg)
    check_store(uri)
    mlflow.set_tracking_uri(client_uri(uri))
    if uri.startswith("sqlite:///"):
        from filelock import FileLock

        db_path = Path(uri.removeprefix("sqlite:///"))
        with FileLock(f"{db_path}.lock"):
            artifacts = (db_path.parent / "mlartifacts").as_uri()
            experiment_id = _experiment_id(cfg.tracking.experiment, artifacts)
            _keep_statistics(db_path)
            return experiment_id
    return _experiment_id(cfg.tracking.experiment, None)


def _keep_statistics(db_path: Path) -> None:
    """Gather SQLite's query statistics for the store when its metrics table has doubled since
    they were last gathered.

    MLflow's schema indexes metric values by key first, and by run. Without statistics, SQLite
    reads one run's history of a metric (``Model.log`` does, for each of the run's metrics, and
    so do ``losslab-report`` and MLflow's charts) through the key index, across every run in
    the store: each read slows down as the store grows. With them it uses the run's index.
    Gathering them reads the whole store (64 ms for 100,000 values here); gathering only on
    doubling keeps that under a millisecond per run on average.
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
    return f"{cfg.dataset.name}·{cfg.loss.name}·{cfg.optimizer.name}·s{cfg.seed}"


@functools.cache
def _git(*args: str) -> str | None:
    """Asked once per process: its runs use the code it started with, and a sweep's tracker
    asks for every job."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def installed_version(package: str) -> str | None:
    """Read once per process: installed packages do not change under it, and reading their
    metadata cost a sweep's tracker about 15 ms a job."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str]:
    versions = {"version.python": platform.python_version()}
    for package in _VERSIONED:
        if version := installed_version(package):
            versions[f"version.{package.removesuffix('-cpu')}"] = version
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


def _log_batch(run_id: str, **entities: list) -> None:
    """``log_batch`` within MLflow's per-call limits."""
    from mlflow.tracking import MlflowClient
    from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

    client, limits = MlflowClient(), {"metrics": MAX_METRICS_PER_BATCH}
    for kind, items in entities.items():
        size = limits.get(kind, MAX_PARAMS_TAGS_PER_BATCH)
        for start in range(0, len(items), size):
            client.log_batch(run_id, **{kind: items[start : start + size]})


def _new_background_thread() -> None:
    """The one background thread that sends logging, and what each thread queued on it. A
    forked process gets its own: its parent's thread is not in it, and what was queued there
    would never run."""
    global _SENDER, _QUEUED
    _SENDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="losslab-metrics")
    _QUEUED = threading.local()


_new_background_thread()
os.register_at_fork(after_in_child=_new_background_thread)


def _in_flight() -> list[Future]:
    """What this thread queued on the background thread. Per thread: a sweep's tracking
    process holds one run per thread (:func:`hold_run`), each waiting only for its own."""
    if not hasattr(_QUEUED, "futures"):
        _QUEUED.futures = []
    return _QUEUED.futures


def _log_batch_in_background(run_id: str, **entities: list) -> None:
    """Queue a ``log_batch`` on the one background thread, so sending overlaps with training or
    evaluation; :func:`run` waits for everything queued before it ends the run."""
    _in_flight().append(_SENDER.submit(_log_batch, run_id, **entities))


def wait_for_background() -> None:
    queued = _in_flight()
    while queued:
        queued.pop(0).result()


@contextmanager
def run(
    cfg: DictConfig,
    entry_point: str,
    overrides: list[str] = (),
    run_id: str | None = None,
    describe: bool = True,
    extra_tags: dict[str, str] | None = None,
    beside: bool = False,
) -> Iterator[mlflow.ActiveRun | None]:
    """Start (or, with ``run_id``, resume) a run and end it as FINISHED, FAILED or KILLED.

    ``describe`` logs the config as params and the run's tags; a later DVC stage resuming the
    train stage's run skips it. Under ``mlflow run`` the run MLflow made ($MLFLOW_RUN_ID) is
    the one filled in. No path leaves the run RUNNING: an exception marks it FAILED
    with the error in the ``losslab.error`` tag, Ctrl-C and SIGTERM mark it KILLED. With
    ``tracking.enabled: false`` no run is started and the log functions below do nothing.

    ``beside`` hands the run to a side process (:class:`SideProcess`) and yields None;
    otherwise this process logs and yields the active run.
    """
    if not cfg.tracking.enabled:
        dismiss_ahead()
        with sigterm_as_exception():
            yield None
        return
    if beside:
        with (
            sigterm_as_exception(),
            SideProcess.holding((cfg, entry_point, list(overrides), run_id, describe, extra_tags)),
        ):
            yield None
        return
    import mlflow
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient

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
                _describe(active.info.run_id, cfg, list(overrides))
            yield active
        except BaseException as caught:
            error = as_interruption(caught)
            if isinstance(error, INTERRUPTIONS):
                _end(RunStatus.KILLED, str(error) or "interrupted")
            else:
                _end(RunStatus.FAILED, _fit(f"{type(error).__name__}: {error}", 5000))
            raise
        try:
            wait_for_background()
        except Exception as error:  # the store refused queued metrics: the record is incomplete
            _end(RunStatus.FAILED, _fit(f"{type(error).__name__}: {error}", 5000))
            raise
        if run_id and "losslab.error" in mlflow.get_run(run_id).data.tags:  # an earlier failure
            MlflowClient().delete_tag(run_id, "losslab.error")
        _end(RunStatus.FINISHED)


def holder_tags() -> dict[str, str]:
    """Which process holds a run, so that losslab-doctor can tell a dead one from a live one."""
    return {"losslab.pid": str(os.getpid()), "losslab.host": socket.gethostname()}


def _end(status: int, error: str | None = None) -> None:
    """End the active run with ``status`` once the queued metrics are sent (or have failed)."""
    import mlflow
    from mlflow.entities import RunStatus

    with contextlib.suppress(Exception):
        wait_for_background()
    if error is not None:
        mlflow.set_tag("losslab.error", error)
    mlflow.end_run(RunStatus.to_string(status))


def _describe(run_id: str, cfg: DictConfig, overrides: list[str]) -> None:
    """Params and the resolved config of a new run."""
    import mlflow
    from mlflow.entities import Param

    _log_batch_in_background(run_id, params=[Param(k, v) for k, v in config_params(cfg).items()])
    mlflow.log_dict(public_config(cfg), "config/config.yaml")
    mlflow.log_text(masked_uri("\n".join(overrides)) + "\n", "config/overrides.txt")


class EpochMetrics:
    """Buffers per-epoch metrics and sends them with one ``log_batch`` every few seconds, from
    a background thread (or the side process).

    One MLflow call per value costs more than a small model's epoch; batched and sent beside
    the training, they cost it almost nothing while the UI still follows a long run.
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
        if self.pending:
            _log("metrics", self.pending)
        self.pending, self.last_flush = [], time.monotonic()


def has_run() -> bool:
    """Whether there is a run to log to, held here or by a side process; every log function
    below is a no-op without one."""
    return _SIDE is not None or active_run_id() is not None


def active_run_id() -> str | None:
    """The run this process holds. A process that never imported MLflow holds none, and asking
    must not import MLflow."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    return run.info.run_id if run is not None else None


def run_record() -> dict[str, str | None]:
    """What a DVC stage after train needs to add to the same run (nothing without a run)."""
    if _SIDE is not None:
        return _SIDE.record
    run_id = active_run_id()
    if run_id is None:
        return {"run_id": None, "tracking_uri": None}
    import mlflow

    return {"run_id": run_id, "tracking_uri": masked_uri(mlflow.get_tracking_uri())}


def write_run_record(path: Path) -> None:
    """``run.json``: the run's :func:`run_record`, for the DVC stages after train. The process
    that holds the run writes it, in turn with what it logs: a sweep's job never waits for its
    run's id (its tracker may still be starting), and a command's side process has written it
    by the time the command ends."""
    from losslab.storage import write_json

    if has_run():
        _log("record", str(path))
    else:
        write_json(path, run_record())


def _write_record_here(path: str) -> None:
    from losslab.storage import write_json

    write_json(Path(path), run_record())


def epoch_metrics() -> EpochMetrics | None:
    return EpochMetrics() if has_run() else None


def log_artifact(path: Path, folder: str) -> None:
    _log("artifact", str(path), folder)


def log_metrics(values: dict[str, float]) -> None:
    """Final values (step 0), sent in the background like the per-epoch ones."""
    stamp = int(time.time() * 1000)
    _log("metrics", [(k, float(v), stamp, 0) for k, v in values.items()])


def final_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Evaluation results named as MLflow metrics: ``train_loss``, ``test_accuracy``, ..."""
    return {f"{split}_{k}": v for split, scores in results.items() for k, v in scores.items()}


def log_final_metrics(results: dict[str, dict[str, float]]) -> None:
    log_metrics(final_metrics(results))


def log_dataset(meta: dict[str, Any], source: Path) -> None:
    """The training data written at ``source``, as an MLflow dataset input carrying losslab's
    content hash (``meta`` is the dataset's metadata)."""
    _log("dataset", meta, str(source.resolve()))


def log_model(model: Any, example: Any) -> None:
    """The trained Keras model, with its signature and an input example.

    This process has Keras, so it saves the model for MLflow (without its compile settings: it
    predicts the same, and it loads anywhere without losslab's custom metrics importable) and
    predicts the example; the process that holds the run files them without Keras
    (:class:`_KerasFile`), so a side process never imports TensorFlow.
    """
    if not has_run():
        return
    import keras

    folder = tempfile.mkdtemp(prefix="losslab-model-")
    plain = type(model).from_config(model.get_config())  # the layers alone, never compiled
    plain.set_weights(model.get_weights())
    plain.save(os.path.join(folder, _KerasFile.file))
    example = example[:5]
    prediction = keras.ops.convert_to_numpy(model(example))
    _log("model", folder, example, prediction, keras.backend.backend())


def _log(name: str, *args: Any) -> None:
    """Have the process that holds the run do ``name``: the side process, or this one."""
    if _SIDE is not None:
        _SIDE.send(name, *args)
    elif active_run_id():
        _LOG_HERE[name](*args)


def _log_artifact_here(path: str, folder: str) -> None:
    import mlflow

    mlflow.log_artifact(path, folder)


def _log_metrics_here(values: list[tuple[str, float, int, int]]) -> None:
    from mlflow.entities import Metric

    _log_batch_in_background(active_run_id(), metrics=[Metric(*value) for value in values])


def _log_dataset_here(meta: dict[str, Any], source: str) -> None:
    import mlflow
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    from losslab.storage import read_npz

    arrays = read_npz(Path(source), ("x_train", "y_train"))
    with warnings.catch_warnings():  # a local path matches two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_numpy(
            arrays["x_train"],
            targets=arrays["y_train"],
            source=source,
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
    # and as a searchable tag: tags.`losslab.data_hash`
    _log_batch_in_background(active_run_id(), tags=[RunTag("losslab.data_hash", meta["sha256"])])


@functools.cache
def _model_environment() -> tuple[dict, list[str], Any]:
    """The logged model's conda environment, pip requirements and Python environment: the
    installed versions of what it needs to load, the same for every model a process logs.
    Written directly: ``mlflow.keras`` would check them against every installed package (0.35
    to 0.8 s of CPU per process), a check versions read from the installed packages always
    pass."""
    from mlflow.utils.environment import _mlflow_conda_env, _PythonEnv

    requirements = [f"{p}=={installed_version(p)}" for p in _MODEL_REQUIREMENTS]
    conda_env = _mlflow_conda_env(additional_pip_deps=requirements, install_mlflow=False)
    return conda_env, requirements, _PythonEnv.current()


class _KerasFile:
    """An ``mlflow.keras`` flavor for a model Keras has already saved: the folder
    ``mlflow.keras.save_model`` writes, file for file, without importing Keras (and TensorFlow
    with it, 4 s of CPU that a side process would add after the training). ``Model.log``
    accepts any object with a ``save_model`` as the flavor.

    It also creates the folder before writing the input example into it, which
    ``mlflow.keras.save_model`` does the other way round (mlflow#16183).
    """

    __name__ = "mlflow.keras"
    file = "model.keras"

    @staticmethod
    def save_model(
        path: str,
        mlflow_model: Any,
        saved: str,
        signature: Any,
        input_example: Any,
        keras_backend: str,
        validate_serving_input: bool = False,  # Model.log's own option, given to every flavor
    ) -> None:
        import yaml
        from mlflow import pyfunc
        from mlflow.models.model import MLMODEL_FILE_NAME
        from mlflow.models.utils import _save_example
        from mlflow.utils.environment import (
            _CONDA_ENV_FILE_NAME,
            _PYTHON_ENV_FILE_NAME,
            _REQUIREMENTS_FILE_NAME,
        )
        from mlflow.utils.file_utils import get_total_file_size, write_to

        data = os.path.join(path, "data")
        os.makedirs(data)
        mlflow_model.signature = signature
        _save_example(mlflow_model, input_example, path)
        shutil.copyfile(saved, os.path.join(data, _KerasFile.file))
        write_to(os.path.join(data, "keras_module.txt"), "keras")
        mlflow_model.add_flavor(
            "keras",
            data="data",
            keras_version=installed_version("keras"),
            keras_backend=keras_backend,
            save_exported_model=False,
        )
        pyfunc.add_to_model(
            mlflow_model,
            loader_module="mlflow.keras",
            conda_env=_CONDA_ENV_FILE_NAME,
            python_env=_PYTHON_ENV_FILE_NAME,
        )
        mlflow_model.model_size_bytes = get_total_file_size(path)
        mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))
        conda_env, requirements, python_env = _model_environment()
        with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w") as f:
            yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
        write_to(os.path.join(path, _REQUIREMENTS_FILE_NAME), "\n".join(requirements))
        python_env.to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))


def _log_model_here(folder: str, example: Any, prediction: Any, keras_backend: str) -> None:
    """File the model :func:`log_model` saved in ``folder`` from the background thread (it
    overlaps with evaluation and plotting; :func:`run` waits for it), then remove the folder."""
    import mlflow
    from mlflow.models import Model, infer_signature

    # created here, where the run is active: the background thread has no active run and would
    # file the model under the Default experiment
    run = mlflow.active_run()
    logged = mlflow.initialize_logged_model(
        name="model", source_run_id=run.info.run_id, experiment_id=run.info.experiment_id
    )
    log = functools.partial(
        Model.log,
        artifact_path=None,
        run_id=run.info.run_id,
        model_id=logged.model_id,
        name="model",
        flavor=_KerasFile,
        flavor_name="mlflow.keras",
        saved=os.path.join(folder, _KerasFile.file),
        signature=infer_signature(example, prediction),
        input_example=example,
        keras_backend=keras_backend,
        validate_serving_input=False,  # reloading to predict costs more than a short run
    )

    def log_and_remove() -> None:
        try:
            log()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    _in_flight().append(_SENDER.submit(log_and_remove))


_LOG_HERE = {
    "artifact": _log_artifact_here,
    "metrics": _log_metrics_here,
    "dataset": _log_dataset_here,
    "model": _log_model_here,
    "record": _write_record_here,
}


def fork_with_pipe(target: Any, *args: Any) -> tuple[Any, Any]:
    """This process's end of a pipe, and a forked process running ``target(its end, this
    end, *args)``, which should close this end so that this process's exit reads as the end of
    the pipe; its own end is closed here, for the same reason the other way round."""
    import multiprocessing

    sys.stdout.flush()  # output still buffered would be printed twice
    sys.stderr.flush()
    context = multiprocessing.get_context("fork")
    here, there = context.Pipe()
    process = context.Process(target=target, args=(there, here, *args), name="losslab-tracking")
    process.start()
    there.close()
    return here, process


TRACKER_ENV = "LOSSLAB_TRACKER"
"""How a sweep's job reaches the sweep's tracking process (``losslab.sweep.Tracker``)."""


def listen() -> tuple[Any, str]:
    """A socket for a sweep's jobs to reach its tracking process, and the :data:`TRACKER_ENV`
    value that finds it: an abstract Unix address (nothing on disk to clean up) and a key
    that a connecting process must know."""
    import secrets
    from multiprocessing.connection import Listener

    name, key = f"losslab-{os.getpid()}-{secrets.token_hex(8)}", secrets.token_bytes(16)
    listener = Listener("\0" + name, "AF_UNIX", backlog=16, authkey=key)
    return listener, f"{name}:{key.hex()}"


class SideProcess:
    """A process that holds the run and does all of its MLflow work: a forked one for a command
    that starts fresh (one ``losslab`` run, a DVC stage), the sweep's tracking process for a
    sweep's job.

    Importing MLflow and opening the store cost such a process about 2 s; in a side process
    they run on another core, beside this process's TensorFlow import and training instead of
    after them. The side process never imports TensorFlow (:func:`log_model`), so it has less
    to do than this process and finishes with it. The side process runs :func:`run`
    and the same log functions as this process would, on what :func:`_log` sends it, so the run
    holds the same either way. A store it cannot use is reported before any output is written;
    an error it meets while logging, when the run ends; if this process dies, the side process
    ends the run KILLED.

    A sweep's job does not wait for its run to end: the tracking process ends it once it has
    logged the rest, while the worker goes on to the next job; an error met in logging ends
    that run FAILED, and the sweep's parent run with it.
    """

    def __init__(self, connection: Any, process: Any = None) -> None:
        self.connection, self.process = connection, process
        self._record: dict[str, str | None] | None = None
        self.ended = False

    @classmethod
    def fork(cls) -> SideProcess:
        # forked before TensorFlow starts its threads
        return cls(*fork_with_pipe(_hold))

    @classmethod
    def for_run(cls) -> SideProcess:
        """The sweep's tracking process for a sweep's job (:data:`TRACKER_ENV`), else a new
        side process."""
        address = os.environ.get(TRACKER_ENV)
        if not address:
            return cls.fork()
        from multiprocessing.connection import Client

        name, _, key = address.rpartition(":")
        try:
            return cls(Client("\0" + name, "AF_UNIX", authkey=bytes.fromhex(key)))
        except OSError as error:
            raise RuntimeError(f"the sweep's tracking process is gone ({error})") from None

    @classmethod
    @contextmanager
    def ahead(cls) -> Iterator[None]:
        """Fork the side process before the command has read its config, so that it imports
        MLflow meanwhile; the first :meth:`holding` takes it. Unused (an untracked run, a
        config error), it is stopped: it has touched no store."""
        global _AHEAD
        _AHEAD = cls.fork()
        try:
            yield
        finally:
            dismiss_ahead()

    @classmethod
    @contextmanager
    def holding(cls, run_args: tuple) -> Iterator[None]:
        """A side process holds the run while the body runs; it ends the run as the body ends."""
        global _SIDE, _AHEAD
        side, _AHEAD = _AHEAD or cls.for_run(), None
        try:
            with contextlib.suppress(OSError):  # a side process already gone says so below
                side.connection.send(run_args)
            import losslab.training  # noqa: F401  TensorFlow, while the side process opens the store

            if side.process is not None:  # the store's refusal, before any output is written
                side.wait_until_started()
            _SIDE = side
            yield
        except BaseException as error:
            _SIDE = None
            side.end(as_interruption(error))
            raise
        _SIDE = None
        side.end(None)

    def wait_until_started(self) -> dict[str, str | None]:
        """The run's record (:func:`run_record`) once the side process has started the run;
        its error if it could not. A sweep's job never asks (:func:`write_run_record`)."""
        if self._record is None:
            kind, value = self._receive()
            if kind == "ended":
                self.ended = True
                self._join()
                raise value
            self._record = value
        return self._record

    record = property(wait_until_started)

    def send(self, name: str, *args: Any) -> None:
        """Queue ``name(*args)`` for the side process. The background thread sends it, so a full
        pipe (the side process still importing) never holds up training."""
        _in_flight().append(_SENDER.submit(self.connection.send, (name, args)))

    def end(self, error: BaseException | None) -> None:
        """Tell the side process how the run ended (``error``, or None for success) and, unless
        it is the sweep's, wait until it has ended the run; raise an error it met while
        logging."""
        if self.ended:
            return
        self.ended = True
        queued = _in_flight()
        wait(queued)  # every message sent (or failed) before this one, never beside it
        queued.clear()
        with contextlib.suppress(OSError):  # a side process that died is reported below
            self.connection.send(("end", picklable(error)))
        if self.process is None:  # the sweep's tracker: it reports errors at the sweep's end
            self.connection.close()
            return
        outcome = None
        try:
            while (message := self._receive())[0] != "ended":  # "started", if never read
                continue
            outcome = message[1]
        except RuntimeError as lost:
            outcome = lost
        self._join()
        if error is None and outcome is not None:
            raise outcome

    def _receive(self) -> tuple[str, Any]:
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            self._join()
            exit_code = f" (exit code {self.process.exitcode})" if self.process else ""
            raise RuntimeError(f"the tracking process ended unexpectedly{exit_code}") from None

    def _join(self) -> None:
        if self.process is not None:
            self.process.join()


_SIDE: SideProcess | None = None
_AHEAD: SideProcess | None = None


def dismiss_ahead() -> None:
    """Stop the side process forked ahead if no tracked run has taken it."""
    global _AHEAD
    if _AHEAD is not None:
        _AHEAD.process.kill()
        _AHEAD.process.join()
        _AHEAD = None


def _hold(connection: Any, main_end: Any) -> None:
    """The side process: hold the run of the process that forked it."""
    main_end.close()  # so that the main process's exit reads as the end of the pipe
    hold_run(connection)


def hold_run(connection: Any, tags: dict[str, str] | None = None) -> None:
    """Hold one run: start it with the arguments the connection sends first (and ``tags``), do
    what follows, end it as told (or KILLED if the connection breaks); report how it ended."""
    outcome = None
    try:
        import mlflow  # noqa: F401  before the run's arguments arrive (see SideProcess.ahead)

        *run_args, extra_tags = connection.recv()
        with run(*run_args, extra_tags={**(extra_tags or {}), **(tags or {})}):
            with contextlib.suppress(OSError):  # a sweep's job may be gone, its messages not
                connection.send(("started", run_record()))
            while (message := _next(connection))[0] != "end":
                name, args = message
                _LOG_HERE[name](*args)
            if message[1] is not None:
                raise message[1]  # ends the run as the main process's error would have
    except BaseException as error:  # the main process reports it
        outcome = error
    with contextlib.suppress(OSError):
        connection.send(("ended", picklable(outcome)))


def _next(connection: Any) -> tuple[str, Any]:
    try:
        return connection.recv()
    except (EOFError, OSError):
        raise Terminated("the losslab process ended before its run did") from None


def picklable(error: BaseException | None) -> BaseException | None:
    """``error`` as it can cross to the other process, else a RuntimeError with its text."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
