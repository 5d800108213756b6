"""Shared fixtures and helpers: Hydra-composed configs shrunk for tests, a private MLflow store
(a copy of one migrated once), a clone of the repo and one reproduced once for the session, a
real MLflow server on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from losslab.app import CONF_DIR
from losslab.config import validate

REPO_ROOT = CONF_DIR.parent

# The Ctrl-C tests send SIGINT to the commands they start, as a terminal does. A shell without
# job control (``make test &`` in a script) starts its background jobs with SIGINT ignored, and
# every process they start inherits that: losslab rightly leaves an ignored SIGINT ignored, and
# those tests would fail on how the suite was started. The commands get the terminal's default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# the 11 reference presets; real_* carry the studies over to bundled real datasets
PRESETS = sorted(
    path.stem
    for path in (CONF_DIR / "experiment").glob("*.yaml")
    if not path.stem.startswith("real_")
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Make ``--dist loadgroup`` group the tests marked ``xdist_group``, as make test asks.

    pytest-xdist 3.8 tells its scheduler a test's group by appending ``@group`` to the test's
    ``_nodeid``, which pytest 9.2's structured node ids no longer read: the groups were silently
    ignored, and a module fixture shared by a group's tests was made once per worker
    (pytest-dev/pytest-xdist#1386). Here the suffix goes into the node id itself; a node id
    still without it stops the run rather than let the groups go unnoticed again."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        return
    for item in items:
        marks = item.iter_markers("xdist_group")
        groups = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        )
        if not groups:
            continue
        suffix = "@" + "_".join(groups)
        if not item.nodeid.endswith(suffix):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)
        if not item.nodeid.endswith(suffix):
            raise pytest.UsageError(f"cannot put {item.nodeid} in its xdist_group {suffix[1:]}")


@pytest.fixture(scope="session")
def compose_raw() -> Iterator[Callable[..., DictConfig]]:
    """Compose ``conf/`` with Hydra, as the app does, for the given overrides."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield lambda *overrides: compose(config_name="config", overrides=list(overrides))
    GlobalHydra.instance().clear()


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy of the SQLite store ``source`` (SQLite's own backup)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


@contextmanager
def made_once(tmp_path_factory, worker_id: str, name: str) -> Iterator[tuple[Path, Path]]:
    """A folder ``name`` shared by the session's xdist workers, and the file that says it is
    made, under a file lock: the first worker to get there makes it (when that file is absent),
    the others wait for it and use what it made."""
    base = tmp_path_factory.getbasetemp()
    folder = (base if worker_id == "master" else base.parent) / name  # parent: the session's
    with FileLock(f"{folder}.lock", timeout=900):
        folder.mkdir(exist_ok=True)
        yield folder, folder / "made.json"


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory, worker_id) -> Path:
    """An empty store with MLflow's schema, made once for the session: migrating a new SQLite
    store costs seconds, which only the tests of a fresh store need to pay. Made in its own
    folder, so that MLflow's Default experiment keeps its artifacts there too."""
    with made_once(tmp_path_factory, worker_id, "migrated_store") as (folder, made):
        if not made.exists():
            with contextlib.chdir(folder):
                MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
            made.write_text("{}")
    return folder / "mlflow.db"


@pytest.fixture(scope="session")
def empty_store(migrated_store: Path) -> Callable[[Path], str]:
    """``empty_store(folder)``: a copy of the migrated store at ``folder/mlruns/mlflow.db``, as
    a URI; for tests that do not test how a store comes to be."""

    def make(folder: Path) -> str:
        target = folder / "mlruns" / "mlflow.db"
        copy_store(migrated_store, target)
        return f"sqlite:///{target}"

    return make


@pytest.fixture
def tracking_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Callable[[Path], str]
) -> str:
    """A store of the test's own in its temp dir, begun as a copy of the migrated store (no
    experiment of losslab's yet: the run under test still makes it), also exported for
    subprocesses."""
    uri = empty_store(tmp_path)
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
    """Every run in the store, deleted ones too. A SQLite store never created holds none (and
    stays absent); a server that does not answer fails the test: it cannot tell."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    if uri.startswith("http"):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=5).close()
        except OSError as error:
            pytest.fail(f"no MLflow server answers at {uri} ({error}): its runs cannot be read")
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return []
    return client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000)


def file_md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def runs_of_model(uri: str, md5: str) -> list:
    """The runs tagged with this model file's hash, as the DVC stages after train find theirs."""
    return [r for r in all_runs(uri) if r.data.tags.get("losslab.model_md5") == md5]


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


BIN = Path(sys.executable).parent


def own_code(clone: Path) -> dict[str, str]:
    """The environment that makes a clone run its own code (its ``src`` before the editable
    install of the repo under test), as it would in a venv of its own."""
    return {"PYTHONPATH": str(clone / "src")}


@dataclass
class Reproduced:
    """A clone of HEAD after ``losslab-doctor`` and then the pipeline with the committed params
    as ``make run`` runs it (``dvc repro --force-downstream``), against a store of its own.
    Shared by the session's workers: nothing may change it; a test that runs DVC, git or
    losslab in it works on a copy (:meth:`copy`)."""

    clone: Path
    store: Path
    imported_from: str  # where the clone's processes import losslab from
    doctor: subprocess.CompletedProcess  # losslab-doctor, before anything ran
    repro: subprocess.CompletedProcess  # the first dvc repro --force-downstream

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.store}"

    def copy(self, target: Path) -> tuple[Path, str]:
        """A copy of the clone (and of its store, as a URI) in ``target``, for one test to use.
        The copied store's experiment still keeps its artifacts beside the shared store, each
        run's in a folder of its own."""
        clone = Path(shutil.copytree(self.clone, target / "clone", symlinks=True))
        store = target / "mlruns" / "mlflow.db"
        copy_store(self.store, store)
        return clone, f"sqlite:///{store}"


def _completed(done: dict) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(
        done["args"], done["returncode"], done["stdout"], done["stderr"]
    )


@pytest.fixture(scope="session")
def reproduced_clone(tmp_path_factory, worker_id, migrated_store: Path) -> Reproduced:
    """Made once for all of the session's workers (the first to need it makes it)."""
    with made_once(tmp_path_factory, worker_id, "reproduced_clone") as (root, made):
        clone, store = root / "clone", root / "mlruns" / "mlflow.db"
        if not made.exists():
            shutil.rmtree(clone, ignore_errors=True)  # a worker that failed halfway
            clone_repo(clone)
            copy_store(migrated_store, store)
            uri, env = f"sqlite:///{store}", own_code(clone)
            where = [sys.executable, "-c", "import losslab; print(losslab.__file__)"]
            outcome = {
                "where": run_command(where, root, uri, **env).stdout.strip(),
                "doctor": run_command([str(BIN / "losslab-doctor")], clone, uri, **env),
                "repro": run_command(
                    [str(BIN / "dvc"), "repro", "--force-downstream"], clone, uri, **env
                ),
            }
            made.write_text(
                json.dumps({k: v if isinstance(v, str) else vars(v) for k, v in outcome.items()})
            )
        outcome = json.loads(made.read_text())
    return Reproduced(
        clone, store, outcome["where"], _completed(outcome["doctor"]), _completed(outcome["repro"])
    )


# what the train stage writes, and what evaluate writes from it; the temporary files they are
# written through until they are complete
KEPT = ("model/model.keras", "model/history.csv", "model/train.json", "metrics.json")
LEFTOVER = re.compile(r"^\.(model\.keras|history\.csv|train\.json|metrics\.json)\.")


@dataclass
class Interruption:
    """One ``losslab-stage train`` stopped by a signal once its first epoch was done."""

    returncode: int
    stdout: str
    stderr: str
    run: object  # its MLflow run (the one its pid holds), as the signal left it
    changed: list[str]  # the outputs of the earlier repro whose bytes changed
    leftovers: list[str]  # temporary files left beside them


@dataclass
class Edited:
    """A copy of the reproduced clone taken through what a user does next: ``dvc status`` and
    a ``dvc repro`` with nothing to do; a new learning rate, and the train stage (endless
    epochs) stopped by SIGINT, then by SIGTERM, once its first epoch was done; ``dvc repro``
    with the epochs put back, which reruns train, evaluate and plot; ``dvc status`` again."""

    clone: Path
    uri: str
    before: set[str]  # the ids of the runs in the store before
    lock_before: bytes
    status: subprocess.CompletedProcess
    noop: subprocess.CompletedProcess
    lock_after_noop: bytes
    learning_rate: float  # the new one
    interrupted: dict[str, Interruption]  # by the signal's name
    repro: subprocess.CompletedProcess
    status_after: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def edited_clone(reproduced_clone: Reproduced, tmp_path_factory) -> Edited:
    """Made once per worker: its tests (in test_pipeline.py and test_faults.py) are all in the
    xdist group ``edited_clone``, so that one worker runs them all."""
    clone, uri = reproduced_clone.copy(tmp_path_factory.mktemp("edited"))
    env = own_code(clone)
    dvc = str(BIN / "dvc")
    kept = {relative: (clone / relative).read_bytes() for relative in KEPT}
    before = {r.info.run_id for r in all_runs(uri)}
    lock_before = (clone / "dvc.lock").read_bytes()
    status = run_command([dvc, "status"], clone, uri, **env)
    noop = run_command([dvc, "repro"], clone, uri, **env)
    lock_after_noop = (clone / "dvc.lock").read_bytes()

    params = clone / "params.yaml"
    committed = OmegaConf.load(params)
    learning_rate = committed.optimizer.learning_rate * 1.5
    endless = {"trainer.epochs": 100000, "trainer.verbose": 2}  # verbose 2: a line per epoch
    set_params(params, **{"optimizer.learning_rate": learning_rate, **endless})
    interrupted = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        # the stage itself, not dvc, so the signal reaches the losslab process
        proc = subprocess.Popen(
            [str(BIN / "losslab-stage"), "train"],
            cwd=clone,
            env={**run_env(uri), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for_line(proc, "Epoch ", timeout=180)
            proc.send_signal(signum)
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        (run,) = [r for r in all_runs(uri) if r.data.tags.get("losslab.pid") == str(proc.pid)]
        changed = [name for name, content in kept.items() if (clone / name).read_bytes() != content]
        files = [p.name for folder in (clone, clone / "model") for p in folder.iterdir()]
        leftovers = [name for name in files if LEFTOVER.match(name)]
        interrupted[signum.name] = Interruption(
            proc.returncode, stdout, stderr, run, changed, leftovers
        )
    set_params(params, **{key: OmegaConf.select(committed, key) for key in endless})
    repro = run_command([dvc, "repro"], clone, uri, **env)
    status_after = run_command([dvc, "status"], clone, uri, **env)
    return Edited(
        clone,
        uri,
        before,
        lock_before,
        status,
        noop,
        lock_after_noop,
        learning_rate,
        interrupted,
        repro,
        status_after,
    )


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


def answers(url: str) -> bool:
    """Whether the server at ``url`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


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
        wait_for(lambda: answers(url), 90, f"{url}/health", server, root / "server.log")
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


def wait_for(
    condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path = None
):
    """Poll ``condition`` until it returns something true; fail if ``proc`` exits first (with
    its stderr, or the end of ``log`` when its output goes there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            _, stderr = proc.communicate()
            told = log.read_text()[-3000:] if log is not None else stderr
            pytest.fail(f"process exited with {proc.returncode} waiting for {what}:\n{told}")
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float) -> str:
    """Read ``proc``'s stdout (a text pipe) until a line starts with ``prefix``; fail if it ends
    first. What was read before is gone: the caller reads on from there."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(timeout=left):
                continue
            line = proc.stdout.readline()
            if not line:
                _, stderr = proc.communicate()
                pytest.fail(f"exited with {proc.returncode} before {prefix!r}:\n{stderr[-3000:]}")
            if line.startswith(prefix):
                return line
    pytest.fail(f"no line starting with {prefix!r} in {timeout:.0f} s")
