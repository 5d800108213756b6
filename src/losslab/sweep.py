"""A Hydra callback that turns a multirun into one parent MLflow run with a child run per job.

``on_multirun_start`` creates the store, the experiment and the parent run before any job
starts (parallel jobs opening a fresh SQLite store race its schema migration otherwise). Each
job logs its own child run from the process that runs it: a joblib worker, which loky keeps for
the whole sweep (so MLflow is imported and the store opened once per worker), or a Ray worker.
``on_job_end`` reports progress, and ``on_multirun_end`` writes the report from the jobs' folders,
tracked or not, then ends the parent run with the sweep's outcome and the report logged into it.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from losslab.cli import clock

PARENT_RUN_ENV = "LOSSLAB_PARENT_RUN_ID"
_PROGRESS = ".losslab-progress"  # a file per job done: {num}.ok (holding its folder), {num}.failed
_REPORT = "report"
GRACE_S = 10.0  # how long a stopped sweep's job runs may take to end before they end KILLED


def count_jobs(hydra_cfg: DictConfig, conf_dir: Path) -> int | None:
    """How many jobs a basic sweep will launch (None for sweepers that decide as they go)."""
    sweeper = hydra_cfg.sweeper
    if "n_trials" in sweeper:
        return int(sweeper.n_trials)
    arguments = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments += list(hydra_cfg.overrides.task)
    sizes: dict[str, int] = {}
    for override in OverridesParser.create().parse_overrides(arguments):
        key = override.get_key_element()
        if not override.is_sweep_override():
            sizes[key] = 1
        elif isinstance(override.value(), Glob):
            options = [p.stem for p in (conf_dir / key).glob("*.yaml")]
            sizes[key] = len(override.value().filter(options))
        elif override.is_discrete_sweep():
            sizes[key] = len(list(override.sweep_string_iterator()))
        else:
            return None
    return math.prod(sizes.values())


def start_parent_run(config: DictConfig, name: str, tags: dict[str, str]) -> str:
    """Create the store and experiment if need be, and the sweep's parent run; its id."""
    import mlflow

    from losslab import tracking

    experiment_id = tracking.prepare(config)
    tags = {**tags, **tracking.holder_tags()}
    client = mlflow.MlflowClient()
    return client.create_run(experiment_id, tags=tags, run_name=name).info.run_id


def _warm_up() -> None:
    """In a worker: import what jobs use."""
    import mlflow  # noqa: F401
    import sklearn.datasets  # noqa: F401  (the generators)

    import losslab.plots  # noqa: F401  (Matplotlib)
    import losslab.training  # noqa: F401  (TensorFlow and Keras)


def end_parent_run(parent: str, total: int | None, sweep_dir: Path, interrupted: bool) -> None:
    """End the parent run: FINISHED when every job's run finished, else FAILED (jobs failed)
    or KILLED (the sweep was stopped); log the sweep's report into it either way."""
    import mlflow

    from losslab import report

    client = mlflow.MlflowClient()
    if interrupted:
        _end_stopped_jobs(client, report.child_runs(client, parent))
    children = report.child_runs(client, parent)
    finished = sum(run.info.status == "FINISHED" for run in children)
    outcomes = [p.suffix for p in (sweep_dir / _PROGRESS).iterdir()]
    accounted, failed = len(outcomes), outcomes.count(".failed")
    client.set_tag(parent, "losslab.children_finished", f"{finished}/{total or accounted}")
    if (sweep_dir / _REPORT).is_dir():
        client.log_artifacts(parent, str(sweep_dir / _REPORT), _REPORT)
    if best := _best_trial(sweep_dir):
        client.set_tag(parent, "losslab.best_trial", best)
    if not interrupted and not failed and finished == (total or len(children)):
        status = "FINISHED"
    elif total is None or accounted >= total:
        status = "FAILED"
        client.set_tag(parent, "losslab.error", f"{failed} of {accounted} job(s) failed")
    else:
        status = "KILLED"
        client.set_tag(parent, "losslab.error", f"stopped after {accounted} of {total} jobs")
    client.set_terminated(parent, status)


def _end_stopped_jobs(client: Any, children: list) -> None:
    """End KILLED the runs of a stopped sweep that are still RUNNING once their processes had
    time to end them: joblib kills its workers when the sweep stops, and a Ray worker may go
    down with it."""
    import psutil

    from losslab.doctor import process_gone

    running = [run for run in children if run.info.status == "RUNNING"]
    pids = {int(run.data.tags["losslab.pid"]) for run in running if process_gone(run) is False}
    psutil.wait_procs([p for p in psutil.process_iter() if p.pid in pids], timeout=GRACE_S)
    for run in running:
        if client.get_run(run.info.run_id).info.status == "RUNNING":
            client.set_tag(run.info.run_id, "losslab.error", "stopped with the sweep")
            client.set_terminated(run.info.run_id, "KILLED")


def _best_trial(sweep_dir: Path) -> str | None:
    """Optuna's best parameters and value, as the optuna sweeper wrote them."""
    results = sweep_dir / "optimization_results.yaml"
    if not results.is_file():
        return None
    best = OmegaConf.load(results)
    params = " ".join(f"{k}={v}" for k, v in best.best_params.items())
    return f"{params} → {best.best_value}"


class _Workers:
    """The joblib launcher's worker processes: ``Parallel`` with the launcher's settings
    reuses the same loky workers, before, during and after the launch."""

    def __init__(self, launcher: DictConfig) -> None:
        from joblib import effective_n_jobs

        settings = {k: v for k, v in OmegaConf.to_container(launcher).items() if k != "_target_"}
        self.settings = {**settings, "backend": "loky"}  # as the launcher sets it
        self.count = effective_n_jobs(settings["n_jobs"])

    @staticmethod
    def of(launcher: DictConfig) -> _Workers | None:
        if str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
            return _Workers(launcher)
        return None

    def call_all(self, calls: list) -> None:
        """Have the workers call each of ``calls``."""
        from joblib import Parallel, delayed

        Parallel(**self.settings)(delayed(call)() for call in calls)

    def warm_up(self) -> None:
        """Start the workers now and have each import what jobs use while this process creates
        the parent run and Hydra composes every job's config: 6 to 11 s here that would
        otherwise delay the first jobs. The jobs queue behind it on the same workers."""
        pool = ThreadPoolExecutor(1)
        pool.submit(self.call_all, [_warm_up] * self.count)
        pool.shutdown(wait=False)


class SweepTracker(Callback):
    """Parent/child MLflow runs and progress (jobs done/total, time left) for ``losslab -m``."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.workers: _Workers | None = None
        self.total: int | None = None
        self.started = 0.0
        self.sweep_dir: Path | None = None
        self.closed = False

    def __getstate__(self) -> dict:
        """What a job's process gets (the joblib and Ray launchers pickle the callback)."""
        return {**self.__dict__, "workers": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Start the workers and the parent run. A store that cannot be used stops the sweep
        here with one line: Hydra only warns about a callback that raises, and would run every
        job into the same error."""
        from losslab.cli import reported_errors

        with reported_errors("losslab"):
            self._start(config)

    def _start(self, config: DictConfig) -> None:
        from losslab import tracking
        from losslab.app import CONF_DIR

        hydra_cfg = config.hydra
        self.total = count_jobs(hydra_cfg, CONF_DIR)
        self.sweep_dir = Path(hydra_cfg.sweep.dir).absolute()  # Ray workers start elsewhere
        (self.sweep_dir / _PROGRESS).mkdir(parents=True, exist_ok=True)
        if config.tracking.enabled:
            uri = tracking.tracking_uri(config)
            tracking.check_store(uri)
            # without credentials, which go to MLflow's variables, inherited by the workers
            self.tracking_uri = tracking.client_uri(uri)
        self.workers = _Workers.of(hydra_cfg.launcher)
        if self.workers:
            self.workers.warm_up()
        self.started = time.time()
        atexit.register(self._end_if_interrupted)
        if config.tracking.enabled:
            self.parent_run_id = start_parent_run(config, **self._parent_run(config))
            print(
                f"losslab: sweep of {self.total or '?'} jobs, MLflow parent run "
                f"{self.parent_run_id}",
                file=sys.stderr,
                flush=True,
            )

    def _parent_run(self, config: DictConfig) -> dict:
        """The parent run's name and tags."""
        overrides = list(config.hydra.overrides.task)
        study = config.hydra.runtime.choices.get("study") or ""
        name = f"sweep-{study or ' '.join(overrides)}"[:200]
        tags = {
            "losslab.sweep": "true",
            "losslab.study": study,
            "losslab.overrides": " ".join(overrides),
            "losslab.n_jobs": str(self.total or ""),
            "losslab.sweep_dir": str(self.sweep_dir.resolve()),
            "losslab.entry_point": "multirun",
            "mlflow.runName": name,
        }
        return {"name": name, "tags": tags}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Point the job at the parent run and the store: a Ray worker runs in the environment
        of ``ray start``, not the sweep's, so the store's URI travels with the callback (without
        credentials: a remote worker needs its own MLFLOW_TRACKING_USERNAME/PASSWORD)."""
        if self.parent_run_id:
            os.environ[PARENT_RUN_ENV] = self.parent_run_id
            os.environ.setdefault("MLFLOW_TRACKING_URI", self.tracking_uri)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if self.sweep_dir is None:
            return
        job = config.hydra.job.num
        if job_return.status == JobStatus.COMPLETED:
            (self.sweep_dir / _PROGRESS / f"{job}.ok").write_text(config.hydra.runtime.output_dir)
        else:
            (self.sweep_dir / _PROGRESS / f"{job}.failed").touch()
        finished = list((self.sweep_dir / _PROGRESS).iterdir())
        done, failed = len(finished), sum(p.suffix == ".failed" for p in finished)
        elapsed = time.time() - self.started
        line = f"losslab: sweep {done}/{self.total or '?'} jobs done"
        if failed:
            line += f" ({failed} failed)"
        line += f", {clock(elapsed)} elapsed"
        if self.total:
            line += f", ~{clock(elapsed / done * (self.total - done))} left"
        print(line, file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close(interrupted=False)

    def _end_if_interrupted(self) -> None:
        """At exit, after a sweep that skipped ``on_multirun_end`` (failed job, Ctrl-C, SIGTERM)."""
        self._close(interrupted=True)

    def _close(self, interrupted: bool) -> None:
        """Write the report of the jobs done, then log it and end the parent run."""
        from losslab.cli import reported_errors

        if self.closed or self.sweep_dir is None:
            return
        self.closed = True
        with reported_errors("losslab"):
            try:
                self._write_report(interrupted)
            finally:
                if self.parent_run_id:
                    end_parent_run(self.parent_run_id, self.total, self.sweep_dir, interrupted)

    def _write_report(self, interrupted: bool) -> None:
        """The report of the jobs done, drawn by the idle workers if there are any (a stopped
        sweep's workers may be going down: this process draws it then)."""
        from losslab import report

        done = sorted((self.sweep_dir / _PROGRESS).glob("*.ok"), key=lambda p: int(p.stem))
        if not done:
            return
        folders = [Path(marker.read_text()) for marker in done]
        call_all = self.workers.call_all if self.workers and not interrupted else None
        report.write(report.from_folders(folders), self.sweep_dir / _REPORT, call_all)
