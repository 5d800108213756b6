"""A Hydra callback that turns a multirun into one parent MLflow run with a child run per job.

``on_multirun_start`` creates the store, the experiment and the parent run before any job
starts (parallel jobs opening a fresh SQLite store race its schema migration otherwise).
Each job learns the parent's id and store in ``on_job_start`` (which runs in the job's own
process, for the joblib and Ray launchers too), reports progress in ``on_job_end``, and
``on_multirun_end`` ends the parent with the sweep's outcome and writes the report into it.

With the joblib launcher the parent run is created and ended in the worker processes, which
import MLflow and open the store for their jobs anyway: the sweep's own process then never
imports MLflow or Matplotlib (about 3 s of CPU on machines where the workers use every core).
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PARENT_RUN_ENV = "LOSSLAB_PARENT_RUN_ID"
_PROGRESS = ".losslab-progress"


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


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{seconds:02d}"


def start_parent_run(store: DictConfig, name: str, tags: dict[str, str]) -> str:
    """Create the store and experiment if need be, and the sweep's parent run; its id."""
    from mlflow.tracking import MlflowClient

    from losslab import tracking

    experiment_id = tracking.prepare(store)
    uri = tracking.client_uri(tracking.tracking_uri(store))
    return MlflowClient(uri).create_run(experiment_id, tags=tags, run_name=name).info.run_id


def _warm_up(store: DictConfig | None, parent: dict | None) -> tuple[int, str | None]:
    """In a worker: import what jobs use and, for a tracked sweep, open the store (one worker
    creates the parent run, the others wait for the store under its lock)."""
    import sklearn.datasets  # noqa: F401  (the generators)

    import losslab.plots  # noqa: F401  (Matplotlib)
    import losslab.training  # noqa: F401  (TensorFlow and Keras)

    if store is None:
        return os.getpid(), None
    import mlflow.keras  # noqa: F401

    from losslab import tracking

    if parent is not None:
        return os.getpid(), start_parent_run(store, **parent)
    tracking.prepare(store)
    return os.getpid(), None


def draw_report_share(uri: str, parent: str, sweep_dir: Path, share: int, shares: int) -> None:
    """Draw every ``shares``-th figure of the sweep's report, from the ``share``-th on."""
    from mlflow.tracking import MlflowClient

    from losslab import report

    client = MlflowClient(uri)
    configurations = report.group(report.child_runs(client, parent))
    report.draw(client, configurations, sweep_dir / "report", slice(share, None, shares))


def end_parent_run(
    uri: str,
    parent: str,
    total: int | None,
    sweep_dir: Path,
    interrupted: bool,
    drawn: bool = False,
) -> None:
    """End the parent run: FINISHED when every job finished, else FAILED (jobs failed) or
    KILLED (the sweep was stopped); publish the report of the children either way (its
    figures already ``drawn`` by :func:`draw_report_share`, or drawn here)."""
    from mlflow.tracking import MlflowClient

    from losslab import report

    client = MlflowClient(uri)
    children = report.child_runs(client, parent)
    if interrupted:
        _end_stopped_jobs(client, children)
    finished = sum(run.info.status == "FINISHED" for run in children)
    outcomes = [p.suffix for p in (sweep_dir / _PROGRESS).iterdir()]
    accounted, failed = len(outcomes), outcomes.count(".failed")
    client.set_tag(parent, "losslab.children_finished", f"{finished}/{total or accounted}")
    if finished:
        report.publish(client, children, sweep_dir / "report", parent_run_id=parent, drawn=drawn)
    best = _best_trial(sweep_dir)
    if best:
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
    """Jobs whose worker process went down with the stopped sweep (joblib kills its workers on
    Ctrl-C) could not end their own runs: end them KILLED."""
    from losslab.doctor import process_gone

    for run in children:
        if run.info.status == "RUNNING" and process_gone(run):
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

    def run(self, calls: list) -> list:
        from joblib import Parallel

        return Parallel(**self.settings)(calls)

    def warm_up(self, store: DictConfig | None, parent: dict | None) -> Future:
        """Start the workers now and have each import TensorFlow (and MLflow) while this
        process prepares the sweep: about 6 s that would otherwise delay the first jobs. The
        future gives the workers' process ids and the parent run's id."""
        from joblib import delayed

        calls = [delayed(_warm_up)(store, parent if i == 0 else None) for i in range(self.count)]
        pool = ThreadPoolExecutor(1)
        warming = pool.submit(self.run, calls)
        pool.shutdown(wait=False)
        return warming


class SweepTracker(Callback):
    """Parent/child MLflow runs and progress (jobs done/total, time left) for ``losslab -m``."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.total: int | None = None
        self.started = 0.0
        self.sweep_dir: Path | None = None
        self.workers: _Workers | None = None

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
        store = None
        if config.tracking.enabled:  # what tracking.prepare needs, for the workers
            store = OmegaConf.create(
                {"tracking": OmegaConf.to_container(config.tracking, resolve=True)}
            )
        parent = self._parent_run(config) if store is not None else None
        self.workers = _Workers.of(hydra_cfg.launcher)
        warming = self.workers.warm_up(store, parent) if self.workers else None
        self.started = time.time()
        if store is not None:
            self.tracking_uri = tracking.client_uri(tracking.tracking_uri(config))
            if warming is None:
                self.parent_run_id = start_parent_run(store, **parent)
        if warming is not None:
            ready = warming.result()
            self.parent_run_id = self.parent_run_id or ready[0][1]
            pids = ", ".join(str(pid) for pid in sorted({pid for pid, _ in ready}))
            print(f"losslab: worker processes {pids} ready", file=sys.stderr, flush=True)
        if self.parent_run_id:
            atexit.register(self._end_if_interrupted)
            print(
                f"losslab: sweep of {self.total or '?'} jobs, "
                f"MLflow parent run {self.parent_run_id}",
                file=sys.stderr,
            )

    def _parent_run(self, config: DictConfig) -> dict:
        """The parent run's name and tags."""
        overrides = list(config.hydra.overrides.task)
        study = config.hydra.runtime.choices.get("study") or ""
        name = f"sweep·{study or ' '.join(overrides)}"[:200]
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
        """Point the job at the parent and its store: a Ray worker runs in the environment of
        ``ray start``, not the sweep's, so ``$MLFLOW_TRACKING_URI`` travels with the callback
        (without credentials: a remote worker needs its own MLFLOW_TRACKING_USERNAME/PASSWORD)."""
        if self.parent_run_id:
            os.environ[PARENT_RUN_ENV] = self.parent_run_id
        if self.tracking_uri:
            os.environ.setdefault("MLFLOW_TRACKING_URI", self.tracking_uri)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if self.sweep_dir is None:
            return
        job = config.hydra.job.num
        outcome = "ok" if job_return.status == JobStatus.COMPLETED else "failed"
        (self.sweep_dir / _PROGRESS / f"{job}.{outcome}").touch()
        finished = list((self.sweep_dir / _PROGRESS).iterdir())
        done, failed = len(finished), sum(p.suffix == ".failed" for p in finished)
        elapsed = time.time() - self.started
        line = f"losslab: sweep {done}/{self.total or '?'} jobs done"
        if failed:
            line += f" ({failed} failed)"
        line += f", {_clock(elapsed)} elapsed"
        if self.total:
            line += f", ~{_clock(elapsed / done * (self.total - done))} left"
        print(line, file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close(interrupted=False)

    def _end_if_interrupted(self) -> None:
        """At exit, after a sweep that skipped ``on_multirun_end`` (failed job, Ctrl-C, SIGTERM)."""
        self._close(interrupted=True)

    def _close(self, interrupted: bool) -> None:
        """End the parent run. After a joblib sweep that ran to its end, the workers (which
        have MLflow and Matplotlib imported) draw the report's figures together, then one of
        them ends the run; else this process does it all."""
        if self.parent_run_id is None:
            return
        parent, self.parent_run_id = self.parent_run_id, None
        arguments = (self.tracking_uri, parent, self.total, self.sweep_dir, interrupted)
        if self.workers is None or interrupted:
            end_parent_run(*arguments)
            return
        from joblib import delayed

        shares = self.workers.count
        self.workers.run(
            [
                delayed(draw_report_share)(self.tracking_uri, parent, self.sweep_dir, i, shares)
                for i in range(shares)
            ]
        )
        self.workers.run([delayed(end_parent_run)(*arguments, drawn=True)])
