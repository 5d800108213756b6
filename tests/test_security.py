"""Security guarantees: servers bind to 127.0.0.1, models load in Keras's safe mode, arrays load
without pickles, and no secret (from the environment or a tracking URI) ends up in a run's
params, tags or artifacts.

Runs go to private SQLite stores or a real ``mlflow server`` on 127.0.0.1 in a temp dir. The
rows of ``docs/reliability.md`` name these tests.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import REPO_ROOT, mlflow_server, run_env
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from losslab import tracking
from losslab.config import validate
from losslab.storage import StageInputError, read_npz, write_npz
from losslab.training import load_model

BIN = Path(sys.executable).parent
LOSSLAB = str(BIN / "losslab")
MLFLOW = str(BIN / "mlflow")
TINY = ("trainer.epochs=2", "dataset.n_samples=200", "dataset.n_test=100", "trainer.verbose=0")
SECRET = "supersecret123"
SECRET_ENV = {
    "AWS_SECRET_ACCESS_KEY": SECRET,
    "MLFLOW_TRACKING_PASSWORD": SECRET,
    "MLFLOW_TRACKING_TOKEN": SECRET,
    "GITHUB_TOKEN": SECRET,
    "DATABASE_URL": f"postgresql://app:{SECRET}@db.internal/prod",
}
SERVER = re.compile(r"\bmlflow\s+(ui|server)\b")


# --------------------------------------------------------------------------------------------
# 1. Every documented or started MLflow server binds to 127.0.0.1
# --------------------------------------------------------------------------------------------


def markdown_commands(text: str) -> list[str]:
    """Shell commands in fenced code blocks (comments cut off) and in inline code spans."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        commands += [line.split(" #", 1)[0].strip() for line in block.splitlines()]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    commands += re.findall(r"`([^`\n]+)`", prose)
    return commands


def makefile_recipes(text: str) -> dict[str, list[str]]:
    """Each target's commands, continued lines joined and the Makefile's own variables
    (``VAR ?= default``) replaced by their defaults."""
    text = text.replace("\\\n", " ")
    defaults = dict(re.findall(r"^(?:export )?(\w+) *[?:]?= *(.*)$", text, re.MULTILINE))
    recipes: dict[str, list[str]] = {}
    target = None
    for line in text.splitlines():
        if line.startswith("\t") and target:
            line = re.sub(r"\$\((\w+)\)", lambda m: defaults.get(m[1], m[0]), line)
            recipes[target].append(line.strip())
        elif re.match(r"^[\w.-]+:", line) and not line.startswith("."):
            target = line.split(":", 1)[0]
            recipes[target] = []
    return recipes


def server_commands() -> dict[str, list[str]]:
    """Every ``mlflow ui`` / ``mlflow server`` command, by the file it is in."""
    found: dict[str, list[str]] = {}
    sources = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for path in sources:
        commands = [c for c in markdown_commands(path.read_text()) if SERVER.search(c)]
        found[path.name] = commands
    recipes = makefile_recipes((REPO_ROOT / "Makefile").read_text())
    found["Makefile"] = [c for lines in recipes.values() for c in lines if SERVER.search(c)]
    found["MLproject"] = [
        line for line in (REPO_ROOT / "MLproject").read_text().splitlines() if SERVER.search(line)
    ]
    return found


def binds_localhost(command: str) -> bool:
    words = shlex.split(command.replace("$(", "").replace(")", ""), comments=True)
    hosts = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("--host", "-h")]
    hosts += [w.split("=", 1)[1] for w in words if w.startswith("--host=")]
    return hosts == ["127.0.0.1"]


def test_makefile_ui_target_binds_localhost():
    recipe = makefile_recipes((REPO_ROOT / "Makefile").read_text())["ui"]
    (command,) = [line for line in recipe if SERVER.search(line)]
    assert binds_localhost(command), command


def test_documented_server_commands_bind_localhost():
    found = server_commands()
    assert found["README.md"], "README.md documents no mlflow ui/server command"
    assert found["Makefile"], "the Makefile starts no mlflow ui"
    for source, commands in found.items():
        for command in commands:
            assert "0.0.0.0" not in command, (source, command)
            assert binds_localhost(command), f"{source}: {command!r} lacks --host 127.0.0.1"


def test_binds_localhost_tells_the_difference():
    assert binds_localhost("mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1")
    assert binds_localhost("mlflow server --host=127.0.0.1 --port 5000")
    assert not binds_localhost("mlflow ui --backend-store-uri sqlite:///mlflow.db")
    assert not binds_localhost("mlflow server --host 0.0.0.0")
    assert markdown_commands("x `mlflow ui` y\n```bash\nmlflow server -h 1.2.3.4  # c\n```\n") == [
        "mlflow server -h 1.2.3.4",
        "mlflow ui",
    ]


def test_no_source_file_binds_all_interfaces():
    for path in sorted((REPO_ROOT / "src").rglob("*.py")):
        assert "0.0.0.0" not in path.read_text(), path


# --------------------------------------------------------------------------------------------
# 2. Models load in Keras's safe mode; arrays load without pickles
# --------------------------------------------------------------------------------------------


def test_load_model_refuses_a_model_with_code(tmp_path):
    path = tmp_path / "lambda.keras"
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Lambda(lambda x: x * 2.0), keras.layers.Dense(1)]
    )
    model.save(path)
    # the file is a working model: only safe mode stands between it and its code
    unsafe = keras.models.load_model(path, safe_mode=False)
    assert isinstance(unsafe.layers[0], keras.layers.Lambda)
    with pytest.raises(StageInputError) as refused:
        load_model(path)
    message = str(refused.value)
    assert str(path) in message
    assert "safe_mode" in message and "Lambda" in message


def test_read_npz_refuses_pickled_object_arrays(tmp_path):
    path = tmp_path / "dataset.npz"
    objects = np.array([{"a": 1}, None], dtype=object)
    np.savez(path, x_train=objects, y_train=np.zeros(2))  # numpy pickles object arrays
    with np.load(path, allow_pickle=True) as archive:  # readable, but only by unpickling
        assert archive["x_train"][0] == {"a": 1}
    with pytest.raises(StageInputError) as refused:
        read_npz(path, ("x_train", "y_train"))
    message = str(refused.value)
    assert str(path) in message and "allow_pickle=False" in message


def test_write_npz_never_writes_pickles(tmp_path):
    with pytest.raises(ValueError, match="allow_pickle"):
        write_npz(tmp_path / "dataset.npz", {"x": np.array([object()], dtype=object)})
    assert list(tmp_path.iterdir()) == []  # nor a half-written file


# --------------------------------------------------------------------------------------------
# 3. Secrets: none from the environment, and a tracking URI's password masked
# --------------------------------------------------------------------------------------------


def files_containing(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and needle in path.read_bytes()
    )


def run_texts(client: MlflowClient, run) -> dict[str, str]:
    """Every param and tag of a run, by name."""
    texts = {f"param {k}": v for k, v in run.data.params.items()}
    texts.update({f"tag {k}": v for k, v in run.data.tags.items()})
    for data_input in run.inputs.dataset_inputs:
        texts["input source"] = data_input.dataset.source
        texts.update({f"input tag {t.key}": t.value for t in data_input.tags})
    return texts


def test_environment_secrets_stay_out_of_the_run(tmp_path):
    root = tmp_path / "store"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = tmp_path / "out"
    done = subprocess.run(
        [LOSSLAB, *TINY, f"hydra.run.dir={out}"],
        cwd=tmp_path,
        env={**run_env(uri), **SECRET_ENV},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    (finished,) = client.search_runs(experiments, run_view_type=ViewType.ALL)
    assert finished.info.status == "FINISHED"
    leaks = {k: v for k, v in run_texts(client, finished).items() if SECRET in v}
    assert leaks == {}
    # artifacts (config, history, metrics, plots, the logged model), the whole store, outputs
    assert (root / "mlartifacts").is_dir()
    assert files_containing(root, SECRET) == []
    assert files_containing(out, SECRET) == []
    assert SECRET not in done.stdout + done.stderr


PASSWORD_URI = f"http://alice:{SECRET}@127.0.0.1:5000"


def test_config_params_and_tags_mask_a_tracking_password(compose_raw):
    cfg = validate(compose_raw(f"tracking.uri={PASSWORD_URI}"))
    masked = "http://alice:***@127.0.0.1:5000"
    assert tracking.public_config(cfg)["tracking"]["uri"] == masked
    assert tracking.config_params(cfg)["tracking.uri"] == masked
    tags = tracking.run_tags(cfg, "cli", [])
    assert tags["losslab.tracking_uri"] == masked
    assert not [k for k, v in {**tracking.config_params(cfg), **tags}.items() if SECRET in v]


def test_overrides_tag_masks_a_tracking_password(compose_raw):
    cfg = validate(compose_raw(f"tracking.uri={PASSWORD_URI}"))
    tags = tracking.run_tags(cfg, "cli", [f"tracking.uri={PASSWORD_URI}", "loss=bce"])
    assert SECRET not in tags["losslab.overrides"], tags["losslab.overrides"]


# --- with a real tracking server -------------------------------------------------------------


@dataclass
class ServerRuns:
    uri: str  # the server, without credentials
    root: Path  # the server's store and artifacts
    printed: dict[str, str]  # entry → what losslab printed (stdout and stderr)
    runs: dict  # entry → the run: "env" ($MLFLOW_TRACKING_URI), "override" (tracking.uri=)


@pytest.fixture(scope="module")
def server_runs(tmp_path_factory: pytest.TempPathFactory) -> ServerRuns:
    """A real mlflow server on 127.0.0.1, and one run through a URI with a password given each
    way: in $MLFLOW_TRACKING_URI (seed 0), and as the tracking.uri override (seed 1)."""
    root = tmp_path_factory.mktemp("server")
    with mlflow_server(root) as plain:
        yield from _runs_through(root, plain)


def _runs_through(root: Path, plain: str) -> Iterator[ServerRuns]:
    secret_uri = plain.replace("://", f"://alice:{SECRET}@")

    def losslab(entry: str, env_uri: str, *extra: str) -> str:
        done = subprocess.run(
            [LOSSLAB, *TINY, *extra, f"hydra.run.dir={root / entry}"],
            cwd=root,
            env=run_env(env_uri),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout + done.stderr

    printed = {
        "env": losslab("env", secret_uri, "seed=0"),
        "override": losslab("override", plain, "seed=1", f"tracking.uri={secret_uri}"),
    }
    client = MlflowClient(tracking_uri=plain)
    experiment = client.get_experiment_by_name("losslab")
    by_seed = {r.data.params["seed"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(by_seed) == ["0", "1"]
    yield ServerRuns(plain, root, printed, {"env": by_seed["0"], "override": by_seed["1"]})


def run_files_containing(server_runs: ServerRuns, entry: str, secret: str) -> list[str]:
    """The run's artifact files (config, history, metrics, plots, the logged model's files)
    that contain ``secret``."""
    return [
        f
        for f in files_containing(server_runs.root / "art", secret)
        if owned(server_runs, entry, f)
    ]


def owned(server_runs: ServerRuns, entry: str, path: str) -> bool:
    logged = server_runs.runs[entry]
    ids = [logged.info.run_id, *(m.model_id for m in logged.outputs.model_outputs)]
    return any(i in path for i in ids)


@pytest.mark.slow
def test_password_in_tracking_uri_is_masked_in_params_tags_and_config(server_runs, tmp_path):
    client = MlflowClient(tracking_uri=server_runs.uri)
    for entry, logged in server_runs.runs.items():
        assert logged.info.status == "FINISHED", entry
        tag = logged.data.tags["losslab.tracking_uri"]
        # the credentials move to MLFLOW_TRACKING_USERNAME/PASSWORD; the tag shows the server
        assert tag in (server_runs.uri, server_runs.uri.replace("://", "://alice:***@")), tag
        assert SECRET not in tag
        config = client.download_artifacts(logged.info.run_id, "config/config.yaml", str(tmp_path))
        assert SECRET not in Path(config).read_text(), entry
    override = server_runs.runs["override"]
    assert override.data.params["tracking.uri"].startswith("http://alice:***@127.0.0.1:")


@pytest.mark.slow
def test_password_in_tracking_uri_env_is_stored_nowhere(server_runs):
    client = MlflowClient(tracking_uri=server_runs.uri)
    logged = server_runs.runs["env"]
    assert {k: v for k, v in run_texts(client, logged).items() if SECRET in v} == {}
    assert run_files_containing(server_runs, "env", SECRET) == []
    searched = [
        p for p in (server_runs.root / "art").rglob("*") if owned(server_runs, "env", str(p))
    ]
    names = {p.name for p in searched if p.is_file()}
    assert {"config.yaml", "history.csv", "metrics.json", "MLmodel"} <= names  # all searched


@pytest.mark.slow
def test_password_in_tracking_uri_override_is_stored_nowhere(server_runs):
    client = MlflowClient(tracking_uri=server_runs.uri)
    leaks = {k for k, v in run_texts(client, server_runs.runs["override"]).items() if SECRET in v}
    files = run_files_containing(server_runs, "override", SECRET)
    assert (leaks, files) == (set(), [])


@pytest.mark.slow
def test_password_in_tracking_uri_is_never_printed(server_runs):
    for entry, printed in server_runs.printed.items():
        assert SECRET not in printed, entry
