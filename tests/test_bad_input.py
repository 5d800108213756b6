"""Bad input through the real console scripts: one clear message, a non-zero exit, no traceback,
no half-written output and no MLflow run left RUNNING.

Each test is one row of the bad-input table in ``docs/reliability.md``. Rows already tested
elsewhere are referenced there, not repeated here. Every subprocess gets a private SQLite store
(``run_env``) and runs in a temp dir; the tiny settings keep the runs that get as far as
training short. Overrides that are refused come after the tiny settings, since Hydra applies
the last value of a key.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import all_runs, clone_repo, mlflow_server, run_env
from omegaconf import OmegaConf

BIN = Path(sys.executable).parent
LOSSLAB = str(BIN / "losslab")
LOSSLAB_STAGE = str(BIN / "losslab-stage")
DVC = str(BIN / "dvc")
TINY = ("trainer.epochs=2", "dataset.n_samples=200", "dataset.n_test=100", "trainer.verbose=0")
SECRET = "supersecret123"


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    done: subprocess.CompletedProcess
    seconds: float
    out: Path  # the Hydra run dir, or the folder the stage ran in
    uri: str  # the store whose runs are checked: the one the command was given, or behind it

    @property
    def text(self) -> str:
        done = self.done
        return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def run(
    cmd: list[str],
    cwd: Path,
    uri: str,
    out: Path,
    timeout: float = 300,
    store: str | None = None,
    **env,
) -> Outcome:
    """``cmd`` against the store ``uri``; ``store``: where its runs are read (by default ``uri``
    itself; for a server that does not answer, the store the server kept)."""
    environment = {**run_env(uri), **env}
    started = time.monotonic()
    done = subprocess.run(
        cmd, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout
    )
    return Outcome(done, time.monotonic() - started, out, store or uri)


def losslab(tmp_path: Path, uri: str, *overrides: str, store: str | None = None, **env) -> Outcome:
    """``losslab <tiny settings> <overrides>`` with its Hydra run dir in ``tmp_path/out``."""
    out = tmp_path / "out"
    cmd = [LOSSLAB, *TINY, *overrides, f"hydra.run.dir={out}"]
    return run(cmd, tmp_path, uri, out, store=store, **env)


def stage(folder: Path, uri: str, step: str) -> Outcome:
    return run([LOSSLAB_STAGE, step], folder, uri, folder)


def assert_no_run_running(uri: str) -> list:
    runs = all_runs(uri)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    return runs


def error_lines(outcome: Outcome, program: str) -> list[str]:
    return [line for line in outcome.done.stderr.splitlines() if line.startswith(f"{program}:")]


def assert_clean_refusal(outcome: Outcome, status: int) -> None:
    """The exit status, no traceback anywhere, no run left RUNNING."""
    assert outcome.done.returncode == status, outcome.text
    assert "Traceback" not in outcome.done.stderr + outcome.done.stdout, outcome.text
    assert_no_run_running(outcome.uri)


def assert_nothing_written(out: Path) -> None:
    """No run dir at all: the config and the store are checked before Hydra makes it."""
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))


def assert_user_error(outcome: Outcome, *parts: str, program: str = "losslab") -> str:
    """losslab's own refusal: exit 2, exactly one line on stderr naming every part."""
    assert_clean_refusal(outcome, 2)
    lines = [line for line in outcome.done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, outcome.text
    (line,) = lines
    assert line.startswith(f"{program}: error: "), line
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"
    return line


@dataclass
class GoneServer:
    """A real MLflow server on loopback that answered, then was stopped: its port is closed,
    and its store (``store``, read directly) is where a run through ``port`` would have gone."""

    port: int
    store: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def gone_server(tmp_path_factory: pytest.TempPathFactory) -> GoneServer:
    root = tmp_path_factory.mktemp("gone_server")
    with mlflow_server(root) as url:
        port = int(url.rsplit(":", 1)[1])
    store = f"sqlite:///{root / 'srv.db'}"
    assert Path(store.removeprefix("sqlite:///")).is_file()  # the server made it
    return GoneServer(port, store)


def assert_server_store_untouched(gone: GoneServer) -> None:
    """Nothing reached the stopped server's store: no run at all, RUNNING or not."""
    assert all_runs(gone.store) == []


# --------------------------------------------------------------------------------------------
# 1. The losslab app: Hydra's own errors (exit 1), then losslab's validation (exit 2)
# --------------------------------------------------------------------------------------------

# (group, an option the message must offer); loss=nope is test_config.py's
# test_cli_unknown_loss_lists_options
GROUP_OPTIONS = [
    ("dataset", "regression"),
    ("model", "mlp"),
    ("optimizer", "sgd"),
    ("trainer", "default"),
    ("experiment", "reg_mse"),
    ("tracking", "default"),
]


@pytest.mark.parametrize(("group", "allowed"), GROUP_OPTIONS, ids=[g for g, _ in GROUP_OPTIONS])
def test_unknown_group_option(tmp_path, tracking_uri, group, allowed):
    outcome = losslab(tmp_path, tracking_uri, f"{group}=nope")
    assert_clean_refusal(outcome, 1)  # Hydra's composition error, before losslab runs
    stderr = outcome.done.stderr
    assert f"Could not find '{group}/nope'" in stderr, outcome.text
    assert f"Available options in '{group}'" in stderr
    assert re.search(rf"^\s+{allowed}$", stderr, re.MULTILINE), outcome.text
    assert_nothing_written(outcome.out)
    assert all_runs(tracking_uri) == []


def test_unknown_key_without_plus(tmp_path, tracking_uri):
    outcome = losslab(tmp_path, tracking_uri, "trainer.foo=1")
    assert_clean_refusal(outcome, 1)
    assert "Could not override 'trainer.foo'" in outcome.done.stderr, outcome.text
    assert_nothing_written(outcome.out)
    assert all_runs(tracking_uri) == []


def test_unknown_key_with_plus(tmp_path, tracking_uri):
    outcome = losslab(tmp_path, tracking_uri, "+trainer.foo=1")
    assert_user_error(outcome, "trainer.foo", "unknown key", "epochs", "batch_size")
    assert_nothing_written(outcome.out)


WRONG_TYPES = {
    "epochs-word": ("trainer.epochs=abc", ["trainer.epochs", "'abc'", "Integer"]),
    "epochs-fraction": ("trainer.epochs=1.5", ["trainer.epochs", "'1.5'", "Integer"]),
    "lr-word": ("optimizer.learning_rate=fast", ["optimizer.learning_rate", "'fast'", "Float"]),
    "hidden-word-in-list": ("model.hidden=[abc]", ["model.hidden[0]", "'abc'", "Integer"]),
}


@pytest.mark.parametrize(("override", "parts"), WRONG_TYPES.values(), ids=list(WRONG_TYPES))
def test_wrong_type(tmp_path, tracking_uri, override, parts):
    outcome = losslab(tmp_path, tracking_uri, override)
    assert_user_error(outcome, *parts)
    assert_nothing_written(outcome.out)


def test_wrong_type_list_is_refused(tmp_path, tracking_uri):
    outcome = losslab(tmp_path, tracking_uri, "model.hidden=abc")
    assert_user_error(outcome, "model.hidden")
    assert_nothing_written(outcome.out)


def test_wrong_type_list_names_the_value_and_an_example(tmp_path, tracking_uri):
    outcome = losslab(tmp_path, tracking_uri, "model.hidden=abc")
    line = assert_user_error(outcome, "model.hidden")
    assert "'abc'" in line and "[" in line.split("model.hidden", 1)[1], line


# test_config.py::test_refusals_name_the_problem checks these messages in process; here the
# console script: exit 2, one line, nothing written, no run.
NOT_POSITIVE = {
    "epochs-zero": ("trainer.epochs=0", ["trainer.epochs", "must be > 0", "got 0"]),
    "epochs-negative": ("trainer.epochs=-1", ["trainer.epochs", "must be > 0", "got -1"]),
    "batch-zero": ("trainer.batch_size=0", ["trainer.batch_size", "must be > 0", "got 0"]),
    "batch-negative": ("trainer.batch_size=-8", ["trainer.batch_size", "must be > 0", "got -8"]),
    "lr-zero": ("optimizer.learning_rate=0", ["optimizer.learning_rate", "must be > 0", "got 0"]),
    "lr-negative": (
        "optimizer.learning_rate=-0.1",
        ["optimizer.learning_rate", "must be > 0", "got -0.1"],
    ),
    "n-samples-zero": ("dataset.n_samples=0", ["dataset.n_samples", "must be > 0", "got 0"]),
    "n-samples-negative": ("dataset.n_samples=-5", ["dataset.n_samples", "must be > 0", "got -5"]),
}


@pytest.mark.parametrize(("override", "parts"), NOT_POSITIVE.values(), ids=list(NOT_POSITIVE))
def test_not_positive(tmp_path, tracking_uri, override, parts):
    outcome = losslab(tmp_path, tracking_uri, override)
    assert_user_error(outcome, *parts)
    assert_nothing_written(outcome.out)


@pytest.mark.parametrize("n_test", [200, 500], ids=["equal", "larger"])
def test_split_larger_than_the_data(tmp_path, tracking_uri, n_test):
    outcome = losslab(tmp_path, tracking_uri, f"dataset.n_test={n_test}")
    assert_user_error(outcome, "dataset.n_test", "1..199", f"got {n_test}")
    assert_nothing_written(outcome.out)


# regression + hinge is test_config.py::test_cli_loss_dataset_mismatch_is_one_line
COMBINATIONS = {
    "cce-on-regression": (
        ["dataset=regression", "loss=cce"],
        ["'cce'", "'regression'", "mse", "log_cosh"],
    ),
    "hinge-on-blobs": (["dataset=blobs", "loss=hinge"], ["'hinge'", "'blobs'", "cce", "kld"]),
    "softmax-head-with-bce": (
        ["loss=bce", "model.output_activation=softmax"],
        ["model.output_activation", "'softmax'", "'bce'", "allowed: sigmoid"],
    ),
}


@pytest.mark.parametrize(("overrides", "parts"), COMBINATIONS.values(), ids=list(COMBINATIONS))
def test_combination_that_cannot_work(tmp_path, tracking_uri, overrides, parts):
    outcome = losslab(tmp_path, tracking_uri, *overrides)
    assert_user_error(outcome, *parts)
    assert_nothing_written(outcome.out)


# --------------------------------------------------------------------------------------------
# 2. Tracking: a server that does not answer, a password in its URI, a diverging loss
# --------------------------------------------------------------------------------------------


@pytest.mark.xdist_group("gone_server")  # one server for the module's tests
def test_unreachable_tracking_server_fails_fast(tmp_path, gone_server):
    uri = gone_server.url
    outcome = losslab(tmp_path, uri, store=gone_server.store)
    assert outcome.seconds < 15, f"took {outcome.seconds:.1f} s\n{outcome.text}"
    assert_clean_refusal(outcome, 2)
    (line,) = error_lines(outcome, "losslab")
    assert line.startswith("losslab: error: tracking.uri:"), line
    assert uri in line and "does not answer" in line
    assert "MLFLOW_TRACKING_URI" in line  # what to do about it
    assert not (outcome.out / "model").exists()
    assert not (outcome.out / "metrics.json").exists()
    assert_server_store_untouched(gone_server)


@pytest.mark.xdist_group("gone_server")
def test_sweep_on_an_unreachable_tracking_server_is_one_line(tmp_path, gone_server):
    sweep_dir = tmp_path / "sweep"
    cmd = [
        LOSSLAB,
        "-m",
        *TINY,
        "seed=0,1",
        "hydra/launcher=joblib",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    outcome = run(cmd, tmp_path, gone_server.url, sweep_dir, store=gone_server.store)
    assert_clean_refusal(outcome, 2)
    (line,) = error_lines(outcome, "losslab")
    assert line.startswith("losslab: error: tracking.uri:") and "does not answer" in line, line
    assert "Warning" not in outcome.done.stderr, outcome.text
    assert not list(sweep_dir.glob("*/metrics.json"))  # no job ran
    assert_server_store_untouched(gone_server)


def test_sqlite_store_in_a_folder_that_cannot_exist_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    sweep_dir = tmp_path / "sweep"
    single = losslab(tmp_path, uri)
    sweep = run(
        [LOSSLAB, "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep_dir}"], tmp_path, uri, sweep_dir
    )
    for outcome in (single, sweep):
        assert outcome.done.returncode == 2, outcome.text
        assert "Traceback" not in outcome.done.stderr + outcome.done.stdout, outcome.text
        (line,) = error_lines(outcome, "losslab")
        assert line.startswith(
            f"losslab: error: tracking.uri: cannot keep the SQLite store in {blocker}"
        ), line
        assert "writable folder" in line
    assert_nothing_written(single.out)
    assert not list(sweep_dir.glob("*/metrics.json"))  # no job ran


@pytest.mark.xdist_group("gone_server")
def test_unreachable_tracking_server_writes_no_data(tmp_path, gone_server):
    outcome = losslab(tmp_path, gone_server.url, store=gone_server.store)
    assert outcome.done.returncode == 2, outcome.text
    assert_nothing_written(outcome.out)
    assert_server_store_untouched(gone_server)


@pytest.mark.xdist_group("gone_server")
def test_unreachable_tracking_server_password_is_masked(tmp_path, gone_server):
    port = gone_server.port
    uri = f"http://alice:{SECRET}@127.0.0.1:{port}"
    outcome = losslab(tmp_path, uri, store=gone_server.store)
    assert_clean_refusal(outcome, 2)
    assert SECRET not in outcome.done.stderr + outcome.done.stdout
    (line,) = error_lines(outcome, "losslab")
    assert f"http://alice:***@127.0.0.1:{port}" in line, line
    assert_server_store_untouched(gone_server)


def test_non_finite_loss(tmp_path, tracking_uri):
    outcome = losslab(tmp_path, tracking_uri, "experiment=reg_mse", "optimizer.learning_rate=1e6")
    assert_clean_refusal(outcome, 2)
    (line,) = error_lines(outcome, "losslab")
    assert re.search(r"non-finite at epoch \d+ of 2", line), line
    assert "lower optimizer.learning_rate" in line and "1000000.0" in line
    (failed,) = all_runs(tracking_uri)
    assert failed.info.status == "FAILED"
    assert "non-finite" in failed.data.tags["losslab.error"]
    assert not (outcome.out / "model").exists()  # no model of a diverged training
    assert not (outcome.out / "metrics.json").exists()


# --------------------------------------------------------------------------------------------
# 3. params.yaml edited by hand, read by losslab-stage and by dvc repro
# --------------------------------------------------------------------------------------------


@pytest.fixture
def params_dir(tmp_path: Path, compose_raw) -> Path:
    """A folder with the default composition as params.yaml, shrunk to the tiny settings."""
    folder = tmp_path / "stage"
    folder.mkdir()
    raw = compose_raw(*TINY)
    OmegaConf.save(raw, folder / "params.yaml")
    return folder


def edit_params(folder: Path, edit) -> None:
    path = folder / "params.yaml"
    before = path.read_text()
    after = edit(before)
    assert after != before, "the edit did not apply"
    path.write_text(after)


def assert_no_stage_outputs(folder: Path) -> None:
    for name in ("data", "model", "plots", "metrics.json"):
        assert not (folder / name).exists(), name


def test_params_yaml_bad_syntax(params_dir, tracking_uri):
    edit_params(params_dir, lambda text: text.replace("  epochs: 2\n", "  epochs: [2\n"))
    outcome = stage(params_dir, tracking_uri, "generate")
    assert_clean_refusal(outcome, 2)
    first = outcome.done.stderr.splitlines()[0]
    assert first.startswith("losslab-stage generate: error: params.yaml: not valid YAML"), first
    assert re.search(r"line \d+, column \d+", outcome.done.stderr), outcome.text
    assert_no_stage_outputs(params_dir)


def test_params_yaml_unknown_loss(params_dir, tracking_uri):
    edit_params(params_dir, lambda text: text.replace("  name: bce\n", "  name: nope\n"))
    outcome = stage(params_dir, tracking_uri, "generate")
    assert_user_error(
        outcome, "loss.name", "'nope'", "bce", "hinge", program="losslab-stage generate"
    )
    assert_no_stage_outputs(params_dir)


def test_params_yaml_list_instead_of_mapping(params_dir, tracking_uri):
    (params_dir / "params.yaml").write_text("- seed\n- loss\n")
    outcome = stage(params_dir, tracking_uri, "generate")
    assert_user_error(
        outcome, "params.yaml", "expected a mapping", program="losslab-stage generate"
    )
    assert_no_stage_outputs(params_dir)


def test_params_yaml_missing(tmp_path, tracking_uri):
    outcome = stage(tmp_path, tracking_uri, "generate")
    assert_user_error(
        outcome, "params.yaml", "no such params file", program="losslab-stage generate"
    )
    assert_no_stage_outputs(tmp_path)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of the committed HEAD (no stage outputs yet)."""
    return clone_repo(tmp_path / "clone")


def data_outputs(clone: Path) -> list[str]:
    """The generate stage's outputs present in the clone."""
    return sorted(
        name for name in ("dataset.npz", "dataset.json") if (clone / "data" / name).exists()
    )


def test_dvc_repro_with_unknown_loss_in_params_yaml(clone, tracking_uri):
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["loss"]["name"] = "nope"
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    outcome = run([DVC, "repro"], clone, tracking_uri, clone)
    assert outcome.done.returncode != 0, outcome.text
    assert "Traceback" not in outcome.done.stderr + outcome.done.stdout
    (line,) = error_lines(outcome, "losslab-stage generate")
    assert "loss.name: 'nope' is not known" in line and "bce" in line, line
    assert "failed to reproduce 'generate'" in outcome.done.stderr
    assert data_outputs(clone) == []
    assert all_runs(tracking_uri) == []


def test_dvc_repro_with_bad_yaml_in_params_yaml(clone, tracking_uri):
    edit_params(clone, lambda text: text.replace("  epochs: ", "  epochs: [", 1))
    outcome = run([DVC, "repro"], clone, tracking_uri, clone)
    assert outcome.done.returncode != 0, outcome.text
    assert "Traceback" not in outcome.done.stderr + outcome.done.stdout
    assert "unable to read: 'params.yaml'" in outcome.done.stderr, outcome.text
    assert re.search(r"line: \d+", outcome.done.stderr), outcome.text
    assert "Running stage" not in outcome.done.stdout
    assert data_outputs(clone) == []


# --------------------------------------------------------------------------------------------
# 4. Stage inputs missing or corrupted (evaluate with a truncated npz or a garbage model is
#    test_pipeline.py::test_truncated_dataset_is_named / test_garbage_model_is_named)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated_once(tmp_path_factory: pytest.TempPathFactory, compose_raw) -> Path:
    """A tiny params.yaml and its data, made once by a real ``losslab-stage generate``."""
    folder = tmp_path_factory.mktemp("generated")
    OmegaConf.save(compose_raw(*TINY), folder / "params.yaml")
    outcome = stage(folder, f"sqlite:///{folder / 'unused.db'}", "generate")
    assert outcome.done.returncode == 0, outcome.text
    assert (folder / "data" / "dataset.npz").is_file()
    assert not (folder / "unused.db").exists()  # generate never touches MLflow
    return folder


@pytest.fixture
def generated(generated_once: Path, tmp_path: Path) -> Path:
    """A private copy of the generated stage folder, for one test to break."""
    return Path(shutil.copytree(generated_once, tmp_path / "stage"))


def assert_train_refused(outcome: Outcome, *parts: str) -> None:
    """The train stage started its run before reading the data: the run must end FAILED."""
    assert_clean_refusal(outcome, 2)
    (line,) = error_lines(outcome, "losslab-stage train")
    assert line.startswith("losslab-stage train: error: "), line
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"
    runs = all_runs(outcome.uri)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert parts[0] in runs[0].data.tags["losslab.error"]
    assert not (outcome.out / "model").exists()


def test_train_without_dataset_npz(generated, tracking_uri):
    (generated / "data" / "dataset.npz").unlink()
    outcome = stage(generated, tracking_uri, "train")
    assert_train_refused(outcome, "data/dataset.npz", "missing", "generate")


def test_train_with_truncated_dataset_npz(generated, tracking_uri):
    npz = generated / "data" / "dataset.npz"
    npz.write_bytes(npz.read_bytes()[:1000])
    outcome = stage(generated, tracking_uri, "train")
    assert_train_refused(outcome, "data/dataset.npz", "not a complete dataset archive", "generate")


def test_train_with_invalid_dataset_json(generated, tracking_uri):
    meta = generated / "data" / "dataset.json"
    meta.write_text(meta.read_text()[:40])
    outcome = stage(generated, tracking_uri, "train")
    assert_train_refused(outcome, "data/dataset.json", "not valid JSON", "rerun")


def test_train_with_edited_dataset_npz(generated, tracking_uri):
    """A well-formed archive whose arrays are not the ones the metadata's hash describes."""
    from losslab.storage import write_npz

    npz = generated / "data" / "dataset.npz"
    with np.load(npz) as archive:
        arrays = {name: archive[name].copy() for name in archive.files}
    arrays["x_train"][0, 0] += 1.0
    write_npz(npz, arrays)
    outcome = stage(generated, tracking_uri, "train")
    assert_train_refused(outcome, "data/dataset.npz", "does not match the hash", "generate")


@pytest.mark.parametrize("step", ["evaluate", "plot"])
def test_stage_after_train_without_a_model(generated, tracking_uri, step):
    """evaluate and plot find the train stage's run by their model file's hash: without the file
    there is nothing to hash, and they say which file is missing before any run starts."""
    outcome = stage(generated, tracking_uri, step)
    assert outcome.done.returncode != 0, outcome.text
    assert_user_error(
        outcome, "model/model.keras", "missing", "run the stage", program=f"losslab-stage {step}"
    )
    assert not (generated / "metrics.json").exists()
    assert not (generated / "plots").exists()
    assert all_runs(tracking_uri) == []
    assert json.loads((generated / "data" / "dataset.json").read_text())  # inputs left alone
