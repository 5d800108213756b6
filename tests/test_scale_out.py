"""Scaling out: a sweep on a Ray cluster and on a local Ray, and a sweep of two parallel workers
through ``make server`` on PostgreSQL.

Everything is real and on loopback: a Ray head from ``ray start``, a throwaway PostgreSQL
cluster from ``initdb``, ``mlflow server``; runs are checked with the ordinary MLflow client.
Each test stops what it started (by process id) and removes what it wrote, Ray's temp dir and
``~/.ray`` included.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg
import pytest
from conftest import REPO_ROOT, free_port, mlflow_server, run_env, serving, wait_for
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent
LOSSLAB = str(BIN / "losslab")
TINY = ("dataset=regression", "loss=mse", "trainer.epochs=2")
TINY += ("dataset.n_samples=200", "dataset.n_test=100")
# Each job has data of its own: two runs that register the same new dataset at the same moment
# can collide in MLflow's store (a unique-key race in its log_inputs).
FOUR_JOBS = "dataset.random_state=1,2,3,4"
HOME_RAY = Path.home() / ".ray"


def output(done: subprocess.CompletedProcess) -> str:
    stdout, stderr = done.stdout[-3000:], done.stderr[-5000:]
    return f"exit {done.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"


def assert_one_error_line(done: subprocess.CompletedProcess, expected: str) -> None:
    """A refused sweep: a non-zero exit, exactly ``expected`` as losslab's error, no traceback."""
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("losslab: error:")]
    assert errors == [expected], output(done)
    assert "Traceback" not in done.stderr


def losslab_sweep(cwd: Path, uri: str, *overrides: str, env: dict | None = None):
    return subprocess.run(
        [LOSSLAB, "-m", *overrides],
        cwd=cwd,
        env={**run_env(uri), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def sweep_runs(uri: str) -> tuple:
    """The sweep's parent run and its children, from the server."""
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("losslab")
    assert experiment is not None, "no losslab experiment on the server"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("losslab.sweep") == "true"]
    assert len(parents) == 1, [r.data.tags.get("mlflow.runName") for r in runs]
    children = [r for r in runs if r.data.tags.get("losslab.sweep") != "true"]
    return parents[0], children


def assert_sweep_finished(uri: str, n_jobs: int) -> list:
    parent, children = sweep_runs(uri)
    assert parent.info.status == "FINISHED", parent.data.tags.get("losslab.error")
    assert parent.data.tags["losslab.children_finished"] == f"{n_jobs}/{n_jobs}"
    assert [c.info.status for c in children] == ["FINISHED"] * n_jobs
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    return children


@contextmanager
def ray_home_untouched() -> Iterator[None]:
    """``~/.ray`` is removed again if it was made meanwhile, and that fails the test."""
    existed = HOME_RAY.exists()
    yield
    if not existed and HOME_RAY.exists():
        shutil.rmtree(HOME_RAY)
        pytest.fail("Ray wrote ~/.ray (removed)")


@pytest.fixture
def no_ray_leftovers() -> Iterator[None]:
    with ray_home_untouched():
        yield


def _session(leader: int) -> list[psutil.Process]:
    """The processes of the session that ``leader`` started (orphans included)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == leader:
                members.append(process)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def _stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM ``process``, a session leader, and let it stop what it started; then SIGKILL
    whatever of its session is still there."""
    members = _session(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _, alive = psutil.wait_procs(members + _session(process.pid), timeout=grace)
    for leftover in alive:
        leftover.kill()
    psutil.wait_procs(alive, timeout=10)


# --------------------------------------------------------------------------------------------
# 1. Ray: a 4-job sweep on a Ray head started with `ray start`, logging to an MLflow server.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token() -> dict[str, str]:
    """Ray's token authentication, with the token in the environment rather than ~/.ray."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@pytest.fixture(scope="module")
def ray_env(token: dict[str, str]) -> dict[str, str]:
    """For ``ray start`` and the sweeps joining it: the token, and one-node Ray, which keeps
    127.0.0.1 (else Ray swaps it for the machine's network address)."""
    return token | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory, ray_env: dict[str, str]) -> Iterator[str]:
    """A one-node Ray cluster from ``ray start --head`` on 127.0.0.1, started in a folder of its
    own and without $MLFLOW_TRACKING_URI, one for the module's tests (marked with the ``ray``
    group, so that one worker runs them all); yields its address, then stops every process of
    its session (workers included) and removes its temp dir."""
    with ray_home_untouched():
        yield from _ray_cluster(tmp_path_factory.mktemp("ray"), ray_env)


def _ray_cluster(tmp_path: Path, ray_env: dict[str, str]) -> Iterator[str]:
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must fit
    cwd = tmp_path / "ray-cwd"
    cwd.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | ray_env
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    command = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats"]
    command += ["--port", str(port), "--num-cpus", "2", "--include-dashboard=false"]
    command += ["--temp-dir", str(temp_dir), "--ray-client-server-port", str(free_port())]
    command += ["--dashboard-port", str(free_port())]
    command += ["--dashboard-agent-listen-port", str(free_port())]
    log_path = tmp_path / "ray.log"
    with log_path.open("w") as log:
        head = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(lambda: "Ray runtime started" in log_path.read_text(), 90, "ray start", head)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(head, grace=20)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.xdist_group("ray")  # one Ray head for the module
def test_sweep_on_a_ray_cluster_logs_every_job_to_the_server(
    ray_cluster: str, ray_env: dict[str, str], tmp_path: Path
) -> None:
    driver = tmp_path / "driver"  # not where Ray started: outputs still land here
    driver.mkdir()
    with mlflow_server(tmp_path) as url:
        done = losslab_sweep(
            driver,
            url,
            "hydra/launcher=ray",
            f"hydra.launcher.ray.init.address={ray_cluster}",
            FOUR_JOBS,
            *TINY,
            env={**ray_env, "RAY_DEDUP_LOGS": "0"},  # each worker's lines with its own pid
        )
        assert done.returncode == 0, output(done)
        children = assert_sweep_finished(url, 4)
    assert f"Connecting to existing Ray cluster at address: {ray_cluster}" in done.stderr
    job_pids = set(re.findall(r"\(_run_job pid=(\d+)\)", done.stdout + done.stderr))
    assert job_pids and {c.data.tags["losslab.pid"] for c in children} <= job_pids
    assert sorted(c.data.params["dataset.random_state"] for c in children) == list("1234")
    (sweep_dir,) = (driver / "multirun").glob("*/*")
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == list("0123")
    assert (sweep_dir / "report" / "report.md").is_file()
    assert not list(tmp_path.parent.glob("ray*/ray-cwd/multirun"))  # not where Ray started
    assert "Traceback" not in done.stderr


def test_sweep_on_a_local_ray(
    tmp_path: Path, tracking_uri: str, token: dict[str, str], no_ray_leftovers
) -> None:
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-"))
    try:
        done = losslab_sweep(
            tmp_path,
            tracking_uri,
            "hydra/launcher=ray",
            f"+hydra.launcher.ray.init._temp_dir={temp_dir}",
            "+hydra.launcher.ray.init.include_dashboard=false",
            "dataset.random_state=1,2",
            *TINY,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            env=token,
        )
        assert done.returncode == 0, output(done)
        assert "Started a local Ray instance" in done.stderr
        assert_sweep_finished(tracking_uri, 2)
        wait_for(lambda: not _ray_processes(temp_dir), 30, "the local Ray to stop")
    finally:
        for leftover in _ray_processes(temp_dir):
            leftover.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_processes(temp_dir: Path) -> list[psutil.Process]:
    """The processes of the Ray that keeps its files in ``temp_dir``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(process.info["cmdline"] or ()):
            found.append(process)
    return found


def test_unreachable_ray_address_is_one_clear_line(tmp_path: Path, tracking_uri: str) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    done = losslab_sweep(
        tmp_path,
        tracking_uri,
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={address}",
        *TINY,
    )
    assert time.monotonic() - started < 60  # Ray itself would wait for minutes
    assert_one_error_line(
        done,
        f"losslab: error: hydra.launcher.ray.init.address: no Ray cluster answers at {address} "
        "(Connection refused); start one with `ray start --head`, or leave the address out to "
        "run on a local Ray",
    )


@pytest.mark.xdist_group("ray")
def test_ray_cluster_that_refuses_the_client_is_one_clear_line(
    ray_cluster: str, tmp_path: Path, tracking_uri: str
) -> None:
    done = losslab_sweep(  # without the cluster's token
        tmp_path,
        tracking_uri,
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address={ray_cluster}",
        *TINY,
        # two tries to connect rather than Ray's twenty, a second apart
        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_gcs_server_port_wait_time_s": "2"},
    )
    assert_one_error_line(
        done,
        f"losslab: error: hydra.launcher.ray.init.address: the Ray cluster at {ray_cluster} did "
        "not accept this client; if it uses token authentication, set RAY_AUTH_MODE=token with "
        "its token in ~/.ray/auth_token or RAY_AUTH_TOKEN",
    )


def test_ray_launcher_without_ray_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from hydra_plugins.losslab_ray_launcher.ray_launcher import LaunchError, RayLauncher

    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_ray_launcher.ray_launcher", None)
    launcher = RayLauncher(ray=OmegaConf.create({"init": {"address": None}, "remote": {}}))
    with pytest.raises(LaunchError, match=r"needs Ray, which is not installed: pip install -r "):
        launcher.launch([["loss=mse"]], 0)


# --------------------------------------------------------------------------------------------
# 2. `make server` on PostgreSQL, and a sweep of two parallel workers through it.
# --------------------------------------------------------------------------------------------


def postgresql_bin(name: str) -> str | None:
    """A PostgreSQL server program, of the newest version: Debian keeps them off PATH."""
    found = glob.glob(f"/usr/lib/postgresql/[0-9]*/bin/{name}")
    return max(found, key=lambda path: int(Path(path).parts[-3])) if found else shutil.which(name)


def in_ci() -> bool:
    """Whether CI runs the tests ($CI set, as CI services and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_postgresql() -> tuple[str, str]:
    """PostgreSQL's initdb and postgres; without them the test skips, saying why, except in
    CI, where it fails: CI must run it (make test installs the server as root with apt)."""
    initdb, postgres = postgresql_bin("initdb"), postgresql_bin("postgres")
    if not (initdb and postgres):
        reason = "PostgreSQL's server is not installed (make test installs it as root with apt)"
        if in_ci():
            pytest.fail(f"{reason}; CI must run this test", pytrace=False)
        pytest.skip(reason)
    return initdb, postgres


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [("true", pytest.fail.Exception), ("1", pytest.fail.Exception), (None, pytest.skip.Exception)],
    ids=["CI=true", "CI=1", "no-CI"],
)
def test_missing_postgresql_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome) -> None:
    monkeypatch.setattr(sys.modules[__name__], "postgresql_bin", lambda name: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="PostgreSQL's server is not installed"):
        require_postgresql()


@pytest.fixture
def postgresql() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a database ``mlflow`` owned by a user
    with a password; yields its URI, then stops the server and removes the cluster."""
    initdb, postgres = require_postgresql()
    # initdb refuses root: as root, the cluster belongs to the postgres user (or nobody)
    owner = None
    if os.geteuid() == 0:
        owner = "postgres" if _user_exists("postgres") else "nobody"
    root = Path(tempfile.mkdtemp(prefix="losslab-pg-"))  # pytest's tmp is private to root
    password = secrets.token_hex(8)
    (root / "password").write_text(password)
    if owner:
        shutil.chown(root, owner)
        shutil.chown(root / "password", owner)
    port = free_port()
    log_path = root / "postgres.log"
    server = None
    try:
        subprocess.run(
            [initdb, "-D", str(root / "data"), "-U", "losslab", "--pwfile", str(root / "password")]
            + ["--auth=scram-sha-256", "-E", "UTF8", "--no-sync", "--no-instructions"],
            user=owner,
            check=True,
            capture_output=True,
        )
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [postgres, "-D", str(root / "data"), "-k", str(root), "-h", "127.0.0.1"]
                + ["-p", str(port), "-c", "fsync=off"],
                user=owner,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        uri = f"postgresql://losslab:{password}@127.0.0.1:{port}"
        wait_for(lambda: _create_database(uri, "mlflow"), 60, "PostgreSQL", server)
        yield f"{uri}/mlflow"
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(root)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _create_database(uri: str, name: str) -> bool:
    try:
        with psycopg.connect(f"{uri}/postgres", autocommit=True, connect_timeout=2) as db:
            db.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError:  # not accepting connections yet
        return False
    return True


def test_parallel_sweep_through_make_server_on_postgresql(postgresql: str, tmp_path: Path) -> None:
    port = free_port()
    artifacts = tmp_path / "artifacts"
    command = ["make", "--no-print-directory", "-C", str(REPO_ROOT)]
    command += ["-o", ".venv/.installed", "server"]  # the venv running this test is the one
    command += [f"SERVER_PORT={port}", f"ARTIFACTS_DESTINATION={artifacts}", "SERVER_WORKERS=1"]
    env = dict(os.environ, BACKEND_STORE_URI=postgresql)
    with serving(command, f"http://127.0.0.1:{port}", tmp_path, env=env) as url:
        done = losslab_sweep(
            tmp_path,
            url,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            FOUR_JOBS,
            *TINY,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        )
        assert done.returncode == 0, output(done)
        children = assert_sweep_finished(url, 4)
        client = MlflowClient(url)
        for child in children:
            run_id = child.info.run_id
            assert len(client.get_metric_history(run_id, "loss")) == 2
            assert {"test_mse", "test_loss", "train_mse"} <= set(child.data.metrics)
            (model,) = child.outputs.model_outputs
            files = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
            assert {"MLmodel", "data"} <= files, files
            assert {a.path for a in client.list_artifacts(run_id, "config")} == {
                "config/config.yaml",
                "config/overrides.txt",
            }
        spans = sorted((c.info.start_time, c.info.end_time) for c in children)
        assert any(spans[i][1] > spans[i + 1][0] for i in range(3)), "no two jobs overlapped"
    assert urlsplit(postgresql).password not in (tmp_path / "server.log").read_text()
    with psycopg.connect(postgresql) as db:  # the runs are in PostgreSQL itself
        (count,) = db.execute("SELECT count(*) FROM runs").fetchone()
    assert count == 5
    assert len(list(artifacts.rglob("MLmodel"))) == 4  # the models, served into this folder
