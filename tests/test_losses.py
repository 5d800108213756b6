"""The loss registry: contracts, target encodings, label decoding and the conf/loss files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT
from omegaconf import OmegaConf

from losslab import losses
from losslab.config import validate
from losslab.losses import LOSSES, Encoding, Task

R, B, M = Task.REGRESSION, Task.BINARY, Task.MULTICLASS

# name: (task, encoding, default output activation)
EXPECTED = {
    "mse": (R, Encoding.FLOAT, "linear"),
    "msle": (R, Encoding.FLOAT, "linear"),
    "mae": (R, Encoding.FLOAT, "linear"),
    "huber": (R, Encoding.FLOAT, "linear"),
    "log_cosh": (R, Encoding.FLOAT, "linear"),
    "bce": (B, Encoding.ZERO_ONE, "sigmoid"),
    "hinge": (B, Encoding.PLUS_MINUS_ONE, "tanh"),
    "squared_hinge": (B, Encoding.PLUS_MINUS_ONE, "tanh"),
    "cce": (M, Encoding.ONE_HOT, "softmax"),
    "sparse_cce": (M, Encoding.INTEGER, "softmax"),
    "kld": (M, Encoding.ONE_HOT, "softmax"),
    "categorical_hinge": (M, Encoding.ONE_HOT, "softmax"),
    "focal": (B, Encoding.ZERO_ONE, "sigmoid"),
    "categorical_focal": (M, Encoding.ONE_HOT, "softmax"),
    "softmax_mae": (M, Encoding.ONE_HOT, "softmax"),
    "gce": (M, Encoding.ONE_HOT, "softmax"),
    "sce": (M, Encoding.ONE_HOT, "softmax"),
}
CLASSIFICATION = [name for name, (task, _, _) in EXPECTED.items() if task is not R]
LOSS_DIR = REPO_ROOT / "conf" / "loss"


def test_every_registered_loss_has_expectations():
    assert sorted(LOSSES) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_spec_contract(name):
    task, encoding, activation = EXPECTED[name]
    spec = losses.get(name)
    assert spec.name == name
    assert spec.task is task
    assert spec.encoding is encoding
    assert spec.default_activation == activation
    assert spec.activations[0] == activation


@pytest.mark.parametrize("name", EXPECTED)
@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_units(name, n_classes):
    task, _, _ = EXPECTED[name]
    expected = n_classes if task is M else 1
    assert losses.get(name).units(n_classes) == expected


@pytest.mark.parametrize("name", EXPECTED)
def test_every_loss_builds_a_keras_loss_with_its_parameters(name):
    import keras

    spec = losses.get(name)
    built = losses.build({"name": name})
    assert isinstance(built, keras.losses.Loss)
    for parameter in spec.parameters:
        assert parameter in spec.bounds, f"{name}.{parameter} has no allowed range"
    assert (LOSS_DIR / f"{name}.yaml").is_file()


# --- encode_targets -------------------------------------------------------------------------

BINARY_LABELS = np.array([0, 1, 1, 0, 1], dtype="int64")
MULTI_LABELS = np.array([2, 0, 1, 2, 0, 1], dtype="int64")

FLOATS = np.array([0.5, -1.25, 3.0, 0.0], dtype="float64")
EXPECTED_FLOAT = np.array([[0.5], [-1.25], [3.0], [0.0]], dtype="float32")
EXPECTED_ZERO_ONE = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]], dtype="float32")
EXPECTED_PLUS_MINUS = np.array([[-1.0], [1.0], [1.0], [-1.0], [1.0]], dtype="float32")
EXPECTED_ONE_HOT = np.array(
    [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype="float32"
)
EXPECTED_INTEGER = np.array([2, 0, 1, 2, 0, 1])


@pytest.mark.parametrize("name", EXPECTED)
def test_encode_targets(name):
    spec = losses.get(name)
    if spec.encoding is Encoding.FLOAT:
        encoded, expected = losses.encode_targets(spec, FLOATS, 0), EXPECTED_FLOAT
    elif spec.encoding is Encoding.ZERO_ONE:
        encoded, expected = losses.encode_targets(spec, BINARY_LABELS, 2), EXPECTED_ZERO_ONE
    elif spec.encoding is Encoding.PLUS_MINUS_ONE:
        encoded, expected = losses.encode_targets(spec, BINARY_LABELS, 2), EXPECTED_PLUS_MINUS
    elif spec.encoding is Encoding.ONE_HOT:
        encoded, expected = losses.encode_targets(spec, MULTI_LABELS, 3), EXPECTED_ONE_HOT
    else:
        encoded, expected = losses.encode_targets(spec, MULTI_LABELS, 3), EXPECTED_INTEGER
        assert np.issubdtype(encoded.dtype, np.integer)
    assert encoded.shape == expected.shape
    if spec.encoding is not Encoding.INTEGER:
        assert encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded, expected)


def test_one_hot_with_more_classes_than_seen():
    encoded = losses.encode_targets(losses.get("cce"), np.array([0, 1]), 4)
    np.testing.assert_array_equal(encoded, [[1, 0, 0, 0], [0, 1, 0, 0]])


def test_labels_stored_as_floats_are_encoded_as_classes():
    spec = losses.get("hinge")
    encoded = losses.encode_targets(spec, np.array([1.0, 0.0]), 2)
    np.testing.assert_array_equal(encoded, [[1.0], [-1.0]])


# --- predict_labels -------------------------------------------------------------------------


def _outputs_like_a_model(spec, encoded: np.ndarray, n_classes: int) -> np.ndarray:
    """Confident but imperfect outputs that point at the encoded targets."""
    if spec.encoding is Encoding.ZERO_ONE:
        return 0.1 + 0.8 * encoded  # probabilities 0.1 / 0.9
    if spec.encoding is Encoding.PLUS_MINUS_ONE:
        return 0.3 * encoded  # tanh outputs -0.3 / +0.3: the sign decides, not 0.5
    one_hot = np.eye(n_classes)[encoded] if spec.encoding is Encoding.INTEGER else encoded
    return 0.5 * one_hot + 0.5 / n_classes  # a softmax-like row peaking at the class


# Every classification loss on two classes; the multiclass losses also on three.
ROUND_TRIPS = [(name, "binary", BINARY_LABELS) for name in CLASSIFICATION] + [
    (name, "multiclass", MULTI_LABELS) for name in CLASSIFICATION if EXPECTED[name][0] is M
]


@pytest.mark.parametrize(
    ("name", "labels"),
    [(name, labels) for name, _, labels in ROUND_TRIPS],
    ids=[f"{name}-{kind}" for name, kind, _ in ROUND_TRIPS],
)
def test_predict_labels_inverts_encode_targets(name, labels):
    spec = losses.get(name)
    n_classes = int(labels.max()) + 1
    encoded = losses.encode_targets(spec, labels, n_classes)
    outputs = _outputs_like_a_model(spec, encoded, n_classes)
    predicted = losses.predict_labels(spec, outputs)
    assert predicted.shape == labels.shape
    np.testing.assert_array_equal(predicted, labels)


def test_thresholds_follow_the_encoding():
    outputs = np.array([[-0.2], [0.2], [0.4], [0.6]], dtype="float32")
    np.testing.assert_array_equal(losses.predict_labels(losses.get("hinge"), outputs), [0, 1, 1, 1])
    np.testing.assert_array_equal(losses.predict_labels(losses.get("bce"), outputs), [0, 0, 0, 1])


# --- accepts --------------------------------------------------------------------------------

ACCEPTED = {R: {R}, B: {B}, M: {B, M}}


@pytest.mark.parametrize("name", EXPECTED)
@pytest.mark.parametrize("data_task", list(Task))
def test_accepts(name, data_task):
    loss_task = EXPECTED[name][0]
    assert losses.get(name).accepts(data_task) is (data_task in ACCEPTED[loss_task])


def test_accepts_rules_spelled_out():
    assert losses.get("cce").accepts(B)  # a 2-unit softmax fits two classes
    assert losses.get("sparse_cce").accepts(M)
    assert not losses.get("bce").accepts(M)
    assert not losses.get("hinge").accepts(M)
    assert not losses.get("mse").accepts(B)
    assert not losses.get("bce").accepts(R)
    assert not losses.get("cce").accepts(R)


# --- get ------------------------------------------------------------------------------------


def test_get_unknown_lists_known_names():
    with pytest.raises(KeyError) as excinfo:
        losses.get("nope")
    message = excinfo.value.args[0]
    assert "nope" in message
    for name in EXPECTED:
        assert name in message


# --- one YAML + one registry entry ----------------------------------------------------------


def _loss_yamls() -> dict[str, str]:
    return {path.stem: OmegaConf.load(path).name for path in sorted(LOSS_DIR.glob("*.yaml"))}


def test_every_loss_yaml_names_a_registered_loss():
    yamls = _loss_yamls()
    assert yamls
    for stem, name in yamls.items():
        assert name == stem, f"conf/loss/{stem}.yaml names '{name}'"
        assert name in losses.SCHEMAS, f"conf/loss/{stem}.yaml names unregistered loss '{name}'"


def test_every_registered_loss_has_a_yaml():
    missing = sorted(set(LOSSES) - set(_loss_yamls()))
    assert missing == []


FITTING_DATASET = {R: "regression", B: "circles_noisy", M: "blobs"}


@pytest.mark.parametrize("name", EXPECTED)
def test_every_loss_validates_on_a_fitting_dataset(compose_raw, name):
    dataset = FITTING_DATASET[EXPECTED[name][0]]
    cfg = validate(compose_raw(f"loss={name}", f"dataset={dataset}"))
    assert cfg.loss.name == name


def test_importing_losses_does_not_import_tensorflow():
    code = "import losslab.losses, sys; assert 'tensorflow' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
