"""Config composition and validation: presets, params.yaml, refusals and the CLI's error output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PRESETS, REPO_ROOT, run_env
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

from losslab.config import ConfigError, Validation, validate

SGD = {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9}
ADAM_FAST = {"name": "adam", "learning_rate": 0.03}

# The presets as the study specifies them.
PRESET_TABLE = {
    "reg_mse": dict(dataset="regression", hidden=[25], loss="mse", optimizer=SGD, epochs=100,
                    batch=32, validation="test"),
    "reg_msle": dict(dataset="regression", hidden=[25], loss="msle", optimizer=SGD, epochs=100,
                     batch=32, validation="test"),
    "reg_mae": dict(dataset="regression", hidden=[25], loss="mae", optimizer=SGD, epochs=100,
                    batch=32, validation="test"),
    "circles_bce": dict(dataset="circles_noisy", hidden=[50], loss="bce", optimizer=SGD,
                        epochs=200, batch=32, validation="test"),
    "circles_hinge": dict(dataset="circles_noisy", hidden=[50], loss="hinge", optimizer=SGD,
                          epochs=200, batch=32, validation="test"),
    "circles_squared_hinge": dict(dataset="circles_noisy", hidden=[50], loss="squared_hinge",
                                  optimizer=SGD, epochs=200, batch=32, validation="test"),
    "blobs_cce": dict(dataset="blobs", hidden=[50], loss="cce", optimizer=SGD, epochs=100,
                      batch=32, validation="test"),
    "blobs_sparse_cce": dict(dataset="blobs", hidden=[50], loss="sparse_cce", optimizer=SGD,
                             epochs=100, batch=32, validation="test"),
    "blobs_kld": dict(dataset="blobs", hidden=[50], loss="kld", optimizer=SGD, epochs=100,
                      batch=32, validation="test"),
    "separable_hinge": dict(dataset="circles_separable", hidden=[4, 2], loss="hinge",
                            optimizer=ADAM_FAST, epochs=30, batch=5, validation="split",
                            validation_split=0.2),
    "separable_squared_hinge": dict(dataset="circles_separable", hidden=[4, 2],
                                    loss="squared_hinge", optimizer=ADAM_FAST, epochs=30, batch=5,
                                    validation="split", validation_split=0.2),
}  # fmt: skip


def test_every_preset_is_in_the_spec_table():
    assert PRESETS, "no presets found in conf/experiment"
    assert sorted(PRESET_TABLE) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_validates(compose_raw, name):
    cfg = validate(compose_raw(f"experiment={name}"))
    assert cfg.preset == name


@pytest.mark.parametrize(("name", "spec"), PRESET_TABLE.items(), ids=list(PRESET_TABLE))
def test_preset_settings_match_spec(compose_raw, name, spec):
    cfg = validate(compose_raw(f"experiment={name}"))
    assert cfg.dataset.name == spec["dataset"]
    assert list(cfg.model.hidden) == spec["hidden"]
    assert cfg.loss.name == spec["loss"]
    assert cfg.optimizer.name == spec["optimizer"]["name"]
    assert cfg.optimizer.learning_rate == pytest.approx(spec["optimizer"]["learning_rate"])
    if "momentum" in spec["optimizer"]:
        assert cfg.optimizer.momentum == pytest.approx(spec["optimizer"]["momentum"])
    assert cfg.trainer.epochs == spec["epochs"]
    assert cfg.trainer.batch_size == spec["batch"]
    assert cfg.trainer.validation is Validation(spec["validation"])
    if "validation_split" in spec:
        assert cfg.trainer.validation_split == pytest.approx(spec["validation_split"])


def test_default_composition_equals_params_yaml(compose_raw):
    composed = OmegaConf.to_container(compose_raw(), resolve=True)
    params = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "params.yaml"), resolve=True)
    assert composed == params


def test_params_yaml_validates():
    cfg = validate(OmegaConf.load(REPO_ROOT / "params.yaml"))
    assert cfg.loss.name == "bce"
    assert cfg.dataset.name == "circles_noisy"


def test_validate_returns_read_only_config(compose_raw):
    cfg = validate(compose_raw())
    assert OmegaConf.is_readonly(cfg)
    with pytest.raises(ReadonlyConfigError):
        cfg.seed = 1
    with pytest.raises(ReadonlyConfigError):
        cfg.trainer.epochs = 1
    with pytest.raises(ReadonlyConfigError):
        cfg.model.hidden[0] = 7


# Overrides that must be refused, and substrings the message must contain.
REFUSALS = {
    "hinge-on-blobs": (["dataset=blobs", "loss=hinge"], ["'hinge'", "'blobs'", "cce"]),
    "cce-on-regression": (["dataset=regression", "loss=cce"], ["'cce'", "'regression'", "mse"]),
    "bce-on-regression": (["dataset=regression", "loss=bce"], ["'bce'", "'regression'", "mse"]),
    "mse-on-circles": (["loss=mse"], ["'mse'", "'circles_noisy'", "bce", "hinge"]),
    "softmax-with-hinge": (
        ["loss=hinge", "model.output_activation=softmax"],
        ["model.output_activation", "'softmax'", "'hinge'", "tanh"],
    ),
    "epochs-not-int": (["trainer.epochs=abc"], ["trainer.epochs", "'abc'", "Integer"]),
    "epochs-zero": (["trainer.epochs=0"], ["trainer.epochs", "> 0", "got 0"]),
    "epochs-negative": (["trainer.epochs=-3"], ["trainer.epochs", "> 0", "got -3"]),
    "batch-zero": (["trainer.batch_size=0"], ["trainer.batch_size", "> 0", "got 0"]),
    "batch-negative": (["trainer.batch_size=-1"], ["trainer.batch_size", "> 0", "got -1"]),
    "lr-zero": (["optimizer.learning_rate=0"], ["optimizer.learning_rate", "> 0"]),
    "lr-negative": (["optimizer.learning_rate=-0.1"], ["optimizer.learning_rate", "-0.1"]),
    "n-samples-zero": (["dataset.n_samples=0"], ["dataset.n_samples", "> 0", "got 0"]),
    "n-samples-negative": (["dataset.n_samples=-5"], ["dataset.n_samples", "got -5"]),
    "n-test-equal": (["dataset.n_test=1000"], ["dataset.n_test", "999", "got 1000"]),
    "n-test-above": (["dataset.n_test=1500"], ["dataset.n_test", "999", "got 1500"]),
    "n-test-zero": (["dataset.n_test=0"], ["dataset.n_test", "1..999"]),
    "split-zero": (["trainer.validation_split=0"], ["trainer.validation_split", "(0, 1)"]),
    "split-one": (["trainer.validation_split=1"], ["trainer.validation_split", "(0, 1)"]),
    "split-above": (["trainer.validation_split=1.5"], ["trainer.validation_split", "1.5"]),
    "split-negative": (["trainer.validation_split=-0.2"], ["trainer.validation_split", "-0.2"]),
    "unknown-optimizer": (["optimizer.name=nadam"], ["optimizer.name", "'nadam'", "adam", "sgd"]),
    "unknown-generator": (
        ["dataset.generator=moons"],
        ["dataset.generator", "'moons'", "circles", "blobs"],
    ),
    "unknown-validation": (["trainer.validation=later"], ["trainer.validation", "later", "split"]),
    "unknown-trainer-key": (["+trainer.foo=1"], ["trainer.foo", "unknown key"]),
    "unknown-dataset-key": (["+dataset.foo=1"], ["dataset.foo", "unknown key", "n_samples"]),
    "unknown-optimizer-key": (["+optimizer.foo=1"], ["optimizer.foo", "momentum"]),
}


@pytest.mark.parametrize(("overrides", "expected"), REFUSALS.values(), ids=list(REFUSALS))
def test_refusals_name_the_problem(compose_raw, overrides, expected):
    raw = compose_raw(*overrides)
    with pytest.raises(ConfigError) as excinfo:
        validate(raw)
    message = str(excinfo.value)
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_loss_refusal_lists_only_losses_for_the_dataset(compose_raw):
    with pytest.raises(ConfigError) as excinfo:
        validate(compose_raw("dataset=blobs", "loss=hinge"))
    allowed = str(excinfo.value).rsplit(":", 1)[1]
    names = {name.strip() for name in allowed.split(",")}
    assert {"cce", "sparse_cce", "kld"} <= names
    assert not names & {"bce", "hinge", "squared_hinge", "mse"}


@pytest.mark.parametrize(
    ("override", "allowed", "not_allowed"),
    [
        ("+trainer.foo=1", "epochs", "seed"),
        ("+model.foo=1", "hidden", "seed"),
        ("+tracking.foo=1", "experiment", "seed"),
    ],
)
def test_unknown_nested_key_lists_that_groups_keys(compose_raw, override, allowed, not_allowed):
    with pytest.raises(ConfigError) as excinfo:
        validate(compose_raw(override))
    message = str(excinfo.value)
    assert allowed in message
    assert not_allowed not in message


def test_unknown_top_level_key_lists_top_level_keys(compose_raw):
    with pytest.raises(ConfigError) as excinfo:
        validate(compose_raw("+foo=1"))
    message = str(excinfo.value)
    assert message.startswith("foo:")
    assert "trainer" in message


def test_unknown_loss_in_raw_dict():
    raw = OmegaConf.to_container(OmegaConf.load(REPO_ROOT / "params.yaml"), resolve=True)
    raw["loss"]["name"] = "nope"
    with pytest.raises(ConfigError) as excinfo:
        validate(raw)
    message = str(excinfo.value)
    for part in ("loss.name", "'nope'", "bce", "mse", "hinge"):
        assert part in message


# --- the console script ---------------------------------------------------------------------

LOSSLAB = Path(sys.executable).parent / "losslab"


def _losslab(args: list[str], cwd: Path, tracking_uri: str, *python_flags: str):
    command = [sys.executable, *python_flags, str(LOSSLAB), *args]
    return subprocess.run(
        command, cwd=cwd, env=run_env(tracking_uri), capture_output=True, text=True, timeout=120
    )


def test_cli_unknown_loss_lists_options(tmp_path, tracking_uri):
    result = _losslab(["loss=nope"], tmp_path, tracking_uri)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "nope" in result.stderr
    for option in ("bce", "hinge", "mse", "sparse_cce"):
        assert option in result.stderr


def test_cli_loss_dataset_mismatch_is_one_line(tmp_path, tracking_uri):
    result = _losslab(["dataset=regression", "loss=hinge"], tmp_path, tracking_uri)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "hinge" in lines[0]
    assert "regression" in lines[0]


def test_cli_help_does_not_import_tensorflow(tmp_path, tracking_uri):
    result = _losslab(["--help"], tmp_path, tracking_uri, "-X", "importtime")
    assert result.returncode == 0, result.stderr
    assert "loss" in result.stdout
    imported = [
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "losslab.app" in imported
    heavy = [name for name in imported if name.split(".")[0] in ("tensorflow", "keras")]
    assert heavy == []


@pytest.mark.parametrize("overrides", [[], ["experiment=reg_mse", "optimizer=adam"]])
def test_quick_help_is_hydras_help_page(tmp_path, tracking_uri, overrides):
    """``losslab --help`` skips Hydra's slow group listing; the page must stay Hydra's own."""
    hydras = subprocess.run(
        [sys.executable, "-c", "from losslab.app import hydra_app; hydra_app()", *overrides]
        + ["--help"],
        cwd=tmp_path,
        env=run_env(tracking_uri),
        capture_output=True,
        text=True,
        timeout=120,
    )
    ours = _losslab([*overrides, "--help"], tmp_path, tracking_uri)
    assert ours.returncode == hydras.returncode == 0, ours.stderr + hydras.stderr
    assert "== Configuration groups ==" in ours.stdout
    assert ours.stdout == hydras.stdout


def test_importing_the_app_does_not_import_tensorflow(tmp_path, tracking_uri):
    code = "import losslab.app, sys; assert 'tensorflow' not in sys.modules, 'tensorflow loaded'"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=run_env(tracking_uri),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
