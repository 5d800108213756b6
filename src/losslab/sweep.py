"""A Hydra callback that turns a multirun into one parent MLflow run with a child run per job.

``on_multirun_start`` has the store, the experiment and the parent run created before any
job's run (parallel jobs opening a fresh SQLite store race its schema migration otherwise).
Each job learns where to log in ``on_job_start`` (which runs in the job's own process, for the
joblib and Ray launchers too), reports progress in ``on_job_end``, and ``on_multirun_end``
writes the report from the jobs' folders, tracked or not, then ends the parent run with the
sweep's outcome and the report logged into it.

All of that MLflow work happens in one process, the sweep's :class:`Tracker`, except a Ray
job's own run, which its worker (possibly on another machine) logs itself. The sweep's own
process and its workers never import MLflow.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from losslab.tracking import TRACKER_ENV

PARENT_RUN_ENV = "LOSSLAB_PARENT_RUN_ID"
_PROGRESS = ".losslab-progress"  # a file per job done: {num}.ok (holding its folder), {num}.failed
_REPORT = "report"


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
    tags = {**tags, **tracking.holder_tags()}
    return MlflowClient(uri).create_run(experiment_id, tags=tags, run_name=name).info.run_id


def _warm_up() -> int:
    """In a worker: import what jobs use."""
    import sklearn.datasets  # noqa: F401  (the generators)

    import losslab.plots  # noqa: F401  (Matplotlib)
    import losslab.training  # noqa: F401  (TensorFlow and Keras)

    return os.getpid()


def end_parent_run(
    uri: str, parent: str, total: int | None, sweep_dir: Path, interrupted: bool
) -> str | None:
    """End the parent run: FINISHED when every job finished, else FAILED (jobs failed, or
    their runs could not be logged in full) or KILLED (the sweep was stopped); log the
    sweep's report into it either way. Return what the jobs did not say: runs that failed
    while their jobs succeeded."""
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
    if (sweep_dir / _REPORT).is_dir():
        client.log_artifacts(parent, str(sweep_dir / _REPORT), _REPORT)
    best = _best_trial(sweep_dir)
    if best:
        client.set_tag(parent, "losslab.best_trial", best)
    unsaid = None
    if not interrupted and not failed and finished == (total or len(children)):
        status = "FINISHED"
    elif total is None or accounted >= total:
        status, error = "FAILED", f"{failed} of {accounted} job(s) failed"
        if not failed:
            errors = [r.data.tags.get("losslab.error") for r in children]
            first = next((e for e in errors if e), "no run")
            error = unsaid = f"{accounted - finished} job(s) could not be logged in full: {first}"
        client.set_tag(parent, "losslab.error", error)
    else:
        status = "KILLED"
        client.set_tag(parent, "losslab.error", f"stopped after {accounted} of {total} jobs")
    client.set_terminated(parent, status)
    return unsaid


def _end_stopped_jobs(client: Any, children: list) -> None:
    """End KILLED the runs of a stopped sweep that nothing will end: those held by a process
    that is gone (a Ray worker that went down with the sweep), and those this tracking process
    still holds (:meth:`Tracker.close` waited for them)."""
    from losslab.doctor import process_gone

    here = str(os.getpid())
    for run in children:
        held_here = run.data.tags.get("losslab.pid") == here
        if run.info.status == "RUNNING" and (held_here or process_gone(run)):
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

    def call_all(self, calls: list) -> None:
        """Have the workers call each of ``calls``."""
        from joblib import delayed

        self.run([delayed(call)() for call in calls])

    def warm_up(self) -> Future:
        """Start the workers now and have each import TensorFlow while this process prepares
        the sweep: about 6 s that would otherwise delay the first jobs. The future gives the
        workers' process ids."""
        from joblib import delayed

        calls = [delayed(_warm_up)() for _ in range(self.count)]
        pool = ThreadPoolExecutor(1)
        warming = pool.submit(self.run, calls)
        pool.shutdown(wait=False)
        return warming


class Tracker:
    """The one process that does a sweep's MLflow work: it creates and ends the parent run,
    holds every job's run (:func:`losslab.tracking.hold_run`), and logs the sweep's report.

    It is forked as ``losslab -m`` starts, so that it imports MLflow and opens the store while
    Hydra composes the sweep, and workers never do: two workers doing so on two cores took 2 to
    3 s each before their first jobs. It runs on the CPU time the workers leave idle
    (:func:`_yield_to_workers`), and jobs never wait for it: they reach it over a socket
    (``$LOSSLAB_TRACKER``) at once and hand it their runs as a single run hands its run to a
    side process, and it catches up while the last jobs run. Ctrl-C goes to the sweep's own
    process, which tells it that the sweep was stopped; if that process dies, it ends the
    sweep's runs KILLED itself.
    """

    GRACE_S = 10.0  # how long a stopped sweep's runs may take to end before they end KILLED

    def __init__(self) -> None:
        from losslab import tracking

        listener, self.address = tracking.listen()
        self.connection, self.process = tracking.fork_with_pipe(_track, listener)
        listener.close()  # the tracker's copy listens
        self.answered = False

    @classmethod
    @contextlib.contextmanager
    def ahead(cls) -> Any:
        """Fork the tracker before Hydra composes the sweep; :meth:`take` it for a tracked
        sweep, or it is stopped unused, having touched no store."""
        global _AHEAD
        _AHEAD = cls()
        try:
            yield
        finally:
            cls.take(None)

    @staticmethod
    def take(tracking_enabled: bool | None) -> Tracker | None:
        """The tracker for a sweep: the one forked ahead (or a new one) if the sweep is
        tracked; None, with the one forked ahead stopped, if not."""
        global _AHEAD
        tracker, _AHEAD = _AHEAD, None
        if tracking_enabled:
            return tracker or Tracker()
        if tracker is not None:
            tracker.process.kill()
            tracker.process.join()
        return None

    def start_parent(self, store: DictConfig, parent: dict, ending: tuple) -> None:
        """Have the parent run created (its ``name`` and ``tags`` in ``parent``) without
        waiting for it; ``ending`` is what :func:`end_parent_run` needs besides the run."""
        self.connection.send(("parent", store, parent, ending))

    def parent_run_id(self) -> str:
        """The parent run's id, once created; the error that prevented it."""
        self.answered = True
        return self._answer()

    def close(self, interrupted: bool) -> str | None:
        """End the parent run once every job's run has ended, with the report; raise
        what prevented the parent run or its end, return what failed the parent run that no
        job has said (:func:`end_parent_run`)."""
        try:
            if not self.answered:
                with contextlib.suppress(Exception):  # the last answer repeats an error
                    self.parent_run_id()
            with contextlib.suppress(OSError):
                self.connection.send(("close", interrupted))
            return self._answer()
        finally:
            self.process.join()

    def _answer(self) -> Any:
        try:
            kind, value = self.connection.recv()
        except (EOFError, OSError):
            self.process.join()
            raise RuntimeError(
                "the sweep's tracking process ended unexpectedly "
                f"(exit code {self.process.exitcode})"
            ) from None
        if kind == "error":
            raise value
        return value


_AHEAD: Tracker | None = None


def _track(connection: Any, sweep_end: Any, listener: Any) -> None:
    """The tracking process: the parent run as the sweep asks, the jobs' runs as they come."""
    from losslab import tracking
    from losslab.cli import Terminated

    sweep_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the sweep says how it ended
    _yield_to_workers()
    parent: Future = Future()
    jobs = _Jobs()
    # jobs connect at once and queue their messages, however far behind this process is
    threading.Thread(target=_serve, args=(listener, jobs, parent), daemon=True).start()
    import mlflow  # noqa: F401  while Hydra composes the sweep

    try:
        _, store, parent_run, (total, sweep_dir) = connection.recv()
    except (EOFError, OSError, Terminated):
        return
    try:
        parent.set_result(start_parent_run(store, **parent_run))
        print(
            f"losslab: sweep of {total or '?'} jobs, MLflow parent run {parent.result()}",
            file=sys.stderr,
            flush=True,
        )
    except Exception as error:  # each job is refused with it, the sweep reports it at its end
        parent.set_exception(tracking.picklable(error))
    refusal = parent.exception()
    with contextlib.suppress(OSError):  # the sweep's process is gone: below, as stopped
        connection.send(("error", refusal) if refusal else ("parent", parent.result()))
    try:
        interrupted = connection.recv()[1]
    except (EOFError, OSError, Terminated):  # the sweep's process is gone
        interrupted = True
    outcome, unsaid = refusal, None
    try:
        jobs.end(interrupted)
        if refusal is None:
            uri = tracking.client_uri(tracking.tracking_uri(store))
            unsaid = end_parent_run(uri, parent.result(), total, sweep_dir, interrupted)
    except Exception as error:
        outcome = tracking.picklable(error)
    with contextlib.suppress(OSError):
        connection.send(("error", outcome) if outcome else ("closed", unsaid))


def _yield_to_workers() -> None:
    """Take only the CPU time the sweep's workers leave idle (Linux's SCHED_IDLE). At nice 10
    the scheduler still gave this process about a tenth of a busy core, and a study ran about
    11 % longer tracked than untracked (about 6 % under SCHED_IDLE). Threads started after
    this call inherit it; where there is no SCHED_IDLE, nice 19."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


class _Jobs:
    """The jobs whose runs the tracker holds, each on a thread of its own."""

    def __init__(self) -> None:
        self.held: list[tuple[threading.Thread, Any]] = []
        self.lock = threading.Lock()
        self.ended = False

    def take(self, connection: Any, parent: Future) -> None:
        """Hold the run of the job at ``connection``; a job that comes after the sweep's end
        (a worker that outlived a killed sweep) is turned away, before it has a run."""
        with self.lock:
            if self.ended:
                connection.close()
                return
            thread = threading.Thread(target=_hold_job, args=(connection, parent), daemon=True)
            thread.start()
            self.held.append((thread, connection))

    def end(self, interrupted: bool) -> None:
        """Wait until every run has ended. After a stopped sweep, jobs still under way after
        the grace period are cut off, and their runs end KILLED as for a job that died."""
        with self.lock:
            self.ended = True
        deadline = time.monotonic() + Tracker.GRACE_S
        for thread, _ in self.held:
            thread.join(max(0.0, deadline - time.monotonic()) if interrupted else None)
        for thread, connection in self.held:
            if thread.is_alive():
                with contextlib.suppress(OSError):  # wakes the thread's read with end-of-file
                    socket.socket(fileno=os.dup(connection.fileno())).shutdown(socket.SHUT_RDWR)
                thread.join(Tracker.GRACE_S)


def _serve(listener: Any, jobs: _Jobs, parent: Future) -> None:
    """Take each connecting job."""
    from multiprocessing import AuthenticationError

    while True:
        try:
            connection = listener.accept()
        except (EOFError, ConnectionError, AuthenticationError):  # not a job of this sweep
            continue
        jobs.take(connection, parent)


def _hold_job(connection: Any, parent: Future) -> None:
    """Hold a job's run as a child of the ``parent`` run, once that exists; or refuse it with
    the error that left the sweep without a parent run."""
    from losslab.tracking import hold_run

    try:
        parent_run_id = parent.result()
    except Exception as refusal:
        with contextlib.suppress(OSError):
            connection.send(("ended", refusal))
        connection.close()
        return
    hold_run(connection, {"mlflow.parentRunId": parent_run_id})


class SweepTracker(Callback):
    """Parent/child MLflow runs and progress (jobs done/total, time left) for ``losslab -m``."""

    def __init__(self) -> None:
        self.parent_run_id: str | None = None
        self.tracking_uri: str | None = None
        self.tracker: Tracker | None = None
        self.tracker_address: str | None = None
        self.workers: _Workers | None = None
        self.total: int | None = None
        self.started = 0.0
        self.sweep_dir: Path | None = None
        self.closed = False

    def __getstate__(self) -> dict:
        """What a job's process gets (the joblib and Ray launchers pickle the callback): where
        to log, not the tracker itself."""
        return {**self.__dict__, "tracker": None, "workers": None}

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
            tracking.check_store(tracking.tracking_uri(config))
        tracker = Tracker.take(config.tracking.enabled)
        self.workers = _Workers.of(hydra_cfg.launcher)
        warming = self.workers.warm_up() if self.workers else None
        self.started = time.time()
        atexit.register(self._end_if_interrupted)
        if tracker is not None:
            # what tracking.prepare needs, for the tracker
            store = OmegaConf.create(
                {"tracking": OmegaConf.to_container(config.tracking, resolve=True)}
            )
            tracker.start_parent(store, self._parent_run(config), (self.total, self.sweep_dir))
            self.tracker = tracker
            if _runs_jobs_here(hydra_cfg.launcher):
                self.tracker_address = tracker.address
            else:  # a Ray job logs itself, as a child of the parent run
                self.parent_run_id = tracker.parent_run_id()
                self.tracking_uri = tracking.client_uri(tracking.tracking_uri(config))
        if warming is not None:
            pids = ", ".join(str(pid) for pid in sorted(set(warming.result())))
            print(f"losslab: worker processes {pids} ready", file=sys.stderr, flush=True)

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
        """Point the job at the parent run and at the tracker, or at the store: a Ray worker
        runs in the environment of ``ray start``, not the sweep's, so ``$MLFLOW_TRACKING_URI``
        travels with the callback (without credentials: a remote worker needs its own
        MLFLOW_TRACKING_USERNAME/PASSWORD)."""
        if self.parent_run_id:
            os.environ[PARENT_RUN_ENV] = self.parent_run_id
        if self.tracker_address:
            os.environ[TRACKER_ENV] = self.tracker_address
        elif self.tracking_uri:
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
        """Write the report of the jobs done, then have the tracker (if tracked) log it and end
        the parent run once the jobs' runs have ended; it catches up on their logging while
        the report is drawn. An error that left the sweep without a parent run, each job has
        met already: it ends the sweep with one line."""
        from losslab.cli import reported_errors

        if self.closed or self.sweep_dir is None:
            return
        self.closed = True
        tracker, self.tracker = self.tracker, None
        with reported_errors("losslab"):
            try:
                self._write_report(interrupted)
            finally:
                unsaid = tracker.close(interrupted) if tracker else None
        if unsaid:
            print(f"losslab: error: {unsaid}", file=sys.stderr)

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


def _runs_jobs_here(launcher: DictConfig) -> bool:
    """Whether the launcher runs jobs on this machine, where they can reach the tracker."""
    return str(launcher.get("_target_", "")).endswith(("BasicLauncher", "JoblibLauncher"))
