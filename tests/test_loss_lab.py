"""The loss lab: parameterized and noise-robust losses, a user's own loss, corrupted training
data, gradient norms and label fit, calibration and margins.

Every expectation is recomputed here from its definition (NumPy formulas, a loop over bins, the
saved model's predictions), never read back from the code under test. Two ``losslab`` runs go end
to end through the CLI: a custom margin loss from a module losslab has never seen, and the
digits study with 40 % of the training labels flipped.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import all_runs, run_command
from mlflow.tracking import MlflowClient

from losslab import datasets, diagnostics, losses, steps, tracking, training
from losslab.config import ConfigError, validate
from losslab.losses import Encoding

LOSSLAB = str(Path(sys.executable).parent / "losslab")
BINS = 15
KERAS_EPSILON = 1e-7  # Keras's clip of probabilities before a log


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def softmax_rows(rows: int, k: int, seed: int, scale: float = 2.0) -> np.ndarray:
    logits = scale * np.random.default_rng(seed).normal(size=(rows, k))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype("float32")


def example(spec: losses.LossSpec, rows: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Targets as the loss expects them and outputs of its head, both float32."""
    rng = np.random.default_rng(seed)
    if spec.encoding is Encoding.FLOAT:
        y = rng.normal(size=(rows, 1)).astype("float32")
        errors = np.linspace(-2.0, 2.0, rows).reshape(-1, 1)  # both sides of any small delta
        return y, (y + errors).astype("float32")
    if spec.encoding is Encoding.ZERO_ONE:
        y = (np.arange(rows) % 2).reshape(-1, 1).astype("float32")
        return y, rng.uniform(0.02, 0.98, size=(rows, 1)).astype("float32")
    k = 4
    return np.eye(k, dtype="float32")[np.arange(rows) % k], softmax_rows(rows, k, seed)


def true_class_probability(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (y.astype("float64") * p).sum(axis=1)


def top_label(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and its probability: a 1-unit sigmoid says P(class 1), k units the
    probability of each class."""
    outputs = outputs.astype("float64")
    if outputs.shape[1] == 1:
        p = outputs[:, 0]
        predicted = (p > 0.5).astype("int64")
        return predicted, np.where(predicted == 1, p, 1.0 - p)
    return outputs.argmax(axis=1), outputs.max(axis=1)


def ece_by_loop(outputs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """Expected calibration error over ``bins`` equal-width bins (low, high] of confidence
    (the first also holding 0), row by row."""
    predicted, confidence = top_label(outputs)
    counts, mean_confidence, accuracy, ece = [], [], [], 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = [
            i
            for i in range(len(labels))
            if low < confidence[i] <= high or (b == 0 and confidence[i] == 0.0)
        ]
        counts.append(len(inside))
        if not inside:
            mean_confidence.append(np.nan)
            accuracy.append(np.nan)
            continue
        right = sum(int(predicted[i] == labels[i]) for i in inside) / len(inside)
        sure = sum(confidence[i] for i in inside) / len(inside)
        mean_confidence.append(sure)
        accuracy.append(right)
        ece += len(inside) / len(labels) * abs(right - sure)
    return {"counts": counts, "confidence": mean_confidence, "accuracy": accuracy, "ece": ece}


def one_line_error(done: subprocess.CompletedProcess, *parts: str) -> str:
    """losslab's refusal of a config: exit 2, one line on stderr naming every part, no
    traceback."""
    told = f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 2, told
    assert "Traceback" not in done.stdout + done.stderr, told
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, told
    (line,) = lines
    assert line.startswith("losslab: error: "), line
    for part in parts:
        assert part in line, f"{part!r} not in {line!r}"
    return line


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def metric_history(client: MlflowClient, run_id: str, name: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def saved_predictions(out: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The run's dataset arrays and its saved model's outputs on the test split."""
    with np.load(out / "data" / "dataset.npz") as archive:
        arrays = {name: archive[name] for name in archive.files}
    model = keras.models.load_model(out / "model" / "model.keras", compile=False)
    return arrays, keras.ops.convert_to_numpy(model(arrays["x_test"], training=False))


def made(compose_raw, *overrides: str) -> datasets.Dataset:
    return datasets.make_dataset(validate(compose_raw(*overrides)).dataset)


# a margin loss of the user's own on {-1,+1} targets; also a name that is not a function
MY_LOSSES = textwrap.dedent(
    '''
    """A hinge loss of the user's own."""
    import keras


    def my_hinge(y_true, y_pred):
        return keras.ops.mean(keras.ops.maximum(0.0, 1.0 - y_true * y_pred), axis=-1)


    NOT_A_FUNCTION = 3
    '''
)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    """``user_module(source)``: the name of a new module holding ``source`` in the working
    directory (a temp dir), a name no other test imports; sys.path and sys.modules are put back
    after the test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"user_losses_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


# --------------------------------------------------------------------------------------------
# 1. The registry's new losses: their values, their parameters' ranges
# --------------------------------------------------------------------------------------------


def _softmax_mae(y, p, params):
    return np.abs(y.astype("float64") - p).sum(axis=1)


def _gce(y, p, params):
    return (1.0 - true_class_probability(y, p) ** params.q) / params.q


def _sce(y, p, params):
    # one-hot targets: RCE = -sum_j p_j log(clip(y_j, 1e-4)) = -log(1e-4) (1 - p_y)
    p_y = true_class_probability(y, p)
    return params.alpha * -np.log(p_y) + params.beta * -np.log(1e-4) * (1.0 - p_y)


def _categorical_focal(y, p, params):
    p_y = np.clip(true_class_probability(y, p), KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    return params.alpha * (1.0 - p_y) ** params.gamma * -np.log(p_y)


def _focal(y, p, params):
    y, p = y[:, 0].astype("float64"), np.clip(p[:, 0], KERAS_EPSILON, 1.0 - KERAS_EPSILON)
    p_t = y * p + (1.0 - y) * (1.0 - p)
    return (1.0 - p_t) ** params.gamma * -np.log(p_t)


def _huber(y, p, params):
    error, delta = np.abs(p[:, 0].astype("float64") - y[:, 0]), params.delta
    return np.where(error <= delta, 0.5 * error**2, delta * error - 0.5 * delta**2)


# name: (a dataset it fits, overrides of its parameters, its per-row value in NumPy)
FORMULAS = {
    "softmax_mae": ("blobs", (), _softmax_mae),
    "gce": ("blobs", ("loss.q=0.3",), _gce),
    "sce": ("blobs", ("loss.alpha=0.5", "loss.beta=2.0"), _sce),
    "categorical_focal": ("blobs", ("loss.gamma=1.5", "loss.alpha=0.4"), _categorical_focal),
    "focal": ("circles_noisy", ("loss.gamma=3",), _focal),
    "huber": ("regression", ("loss.delta=0.5",), _huber),
}


@pytest.mark.parametrize("given", ["defaults", "overrides"])
@pytest.mark.parametrize("name", FORMULAS)
def test_new_losses_equal_their_formulas(compose_raw, name: str, given: str) -> None:
    """Built from a composed config (conf/loss/<name>.yaml's defaults, or command-line
    values), per row and averaged over the batch."""
    dataset, overrides, formula = FORMULAS[name]
    overrides = overrides if given == "overrides" else ()
    cfg = validate(compose_raw(f"loss={name}", f"dataset={dataset}", *overrides))
    for override in overrides:
        key, value = override.split("=")
        assert cfg.loss[key.removeprefix("loss.")] == float(value)
    spec = losses.of(cfg.loss)
    y, p = example(spec)
    expected = formula(y, p, cfg.loss)
    per_row = keras.ops.convert_to_numpy(losses.build(cfg.loss, reduction=None)(y, p))
    np.testing.assert_allclose(per_row, expected, rtol=2e-5, atol=1e-6)
    mean = float(losses.build(cfg.loss)(y, p))
    np.testing.assert_allclose(mean, expected.mean(), rtol=2e-5)


def test_softmax_mae_is_twice_one_minus_the_true_class_probability() -> None:
    y, p = example(losses.get("softmax_mae"))
    value = keras.ops.convert_to_numpy(losses.build({"name": "softmax_mae"}, reduction=None)(y, p))
    np.testing.assert_allclose(value, 2.0 * (1.0 - true_class_probability(y, p)), rtol=1e-5)


def test_gce_at_q_one_is_half_softmax_mae_and_near_zero_cross_entropy() -> None:
    y, p = example(losses.get("gce"), rows=20, seed=3)
    at_one = losses.build({"name": "gce", "q": 1.0}, reduction=None)(y, p)
    mae = losses.build({"name": "softmax_mae"}, reduction=None)(y, p)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(at_one), keras.ops.convert_to_numpy(mae) / 2.0, rtol=1e-5
    )
    # (1 - p^q)/q = -log p - q (log p)^2 / 2 + ...: within q |log p| / 2 of cross-entropy
    near_zero = losses.build({"name": "gce", "q": 1e-3}, reduction=None)(y, p)
    cross_entropy = -np.log(true_class_probability(y, p))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(near_zero), cross_entropy, rtol=5e-3, atol=5e-4
    )


# losslab's name and parameters: Keras's class with the same parameters
AS_KERAS = {
    "focal": ({"gamma": 3.0}, keras.losses.BinaryFocalCrossentropy),
    "categorical_focal": ({"gamma": 1.5, "alpha": 0.4}, keras.losses.CategoricalFocalCrossentropy),
    "huber": ({"delta": 0.5}, keras.losses.Huber),
}


@pytest.mark.parametrize("name", AS_KERAS)
def test_keras_backed_losses_pass_their_parameters(name: str) -> None:
    parameters, keras_class = AS_KERAS[name]
    spec = losses.get(name)
    assert set(spec.parameters) == set(parameters)
    y, p = example(spec, rows=16, seed=5)
    ours = losses.build({"name": name, **parameters}, reduction=None)(y, p)
    theirs = keras_class(**parameters, reduction=None)(y, p)
    default = keras_class(reduction=None)(y, p)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), rtol=1e-6
    )
    assert not np.allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(default))


# (loss, dataset, key, value, the allowed range as the message writes it)
OUT_OF_RANGE = [
    ("gce", "blobs", "q", 0, "(0, 1]"),
    ("gce", "blobs", "q", 1.5, "(0, 1]"),
    ("gce", "blobs", "q", -0.2, "(0, 1]"),
    ("sce", "blobs", "alpha", -0.1, "[0, ∞)"),
    ("sce", "blobs", "beta", -1, "[0, ∞)"),
    ("categorical_focal", "blobs", "gamma", -0.5, "[0, ∞)"),
    ("categorical_focal", "blobs", "alpha", 0, "(0, ∞)"),
    ("focal", "circles_noisy", "gamma", -2, "[0, ∞)"),
    ("huber", "regression", "delta", 0, "(0, ∞)"),
    ("huber", "regression", "delta", -1, "(0, ∞)"),
]


@pytest.mark.parametrize(
    ("name", "dataset", "key", "value", "allowed"),
    OUT_OF_RANGE,
    ids=[f"{name}.{key}={value}" for name, _, key, value, _ in OUT_OF_RANGE],
)
def test_out_of_range_loss_parameters_are_refused(compose_raw, name, dataset, key, value, allowed):
    raw = compose_raw(f"loss={name}", f"dataset={dataset}", f"loss.{key}={value}")
    with pytest.raises(ConfigError) as refused:
        validate(raw)
    expected = f"loss.{key}: must be in {allowed} for loss '{name}', got {float(value)}"
    assert str(refused.value) == expected


@pytest.mark.parametrize(
    "overrides",
    [
        ("loss=gce", "dataset=blobs", "loss.q=1"),
        ("loss=sce", "dataset=blobs", "loss.alpha=0"),
        ("loss=sce", "dataset=blobs", "loss.beta=0"),
        ("loss=categorical_focal", "dataset=blobs", "loss.gamma=0"),
        ("loss=focal", "dataset=circles_noisy", "loss.gamma=0"),
        ("loss=huber", "dataset=regression", "loss.delta=1e-6"),
    ],
    ids=lambda overrides: " ".join(overrides),
)
def test_loss_parameters_on_the_edge_of_their_range_are_accepted(compose_raw, overrides):
    cfg = validate(compose_raw(*overrides))
    losses.build(cfg.loss)  # and the loss builds with them


def test_cli_refuses_an_out_of_range_parameter_in_one_line(tmp_path: Path, tracking_uri: str):
    out = tmp_path / "out"
    done = run_command(
        [LOSSLAB, "dataset=blobs", "loss=gce", "loss.q=0", f"hydra.run.dir={out}"],
        tmp_path,
        tracking_uri,
        timeout=120,
    )
    line = one_line_error(done)
    assert line == "losslab: error: loss.q: must be in (0, 1] for loss 'gce', got 0.0"
    assert all_runs(tracking_uri) == []
    assert not (out / "data").exists()


# --------------------------------------------------------------------------------------------
# 2. Corrupted training data
# --------------------------------------------------------------------------------------------

SMALL = ("dataset.n_samples=120", "dataset.n_test=40")
NOISY = {  # dataset: the overrides that make a small one of it, with a loss that fits
    "blobs": ("dataset=blobs", "loss=cce", *SMALL),
    "circles_noisy": ("dataset=circles_noisy", "loss=bce", *SMALL),
    "digits": ("dataset=digits", "loss=cce"),
}


@pytest.mark.parametrize("name", NOISY)
def test_label_noise_flips_a_share_of_training_labels_to_other_classes(compose_raw, name: str):
    clean = made(compose_raw, *NOISY[name])
    noisy = made(compose_raw, *NOISY[name], "dataset.label_noise=0.4")
    n_train = len(clean.y_train)
    mask = noisy.corrupted
    assert mask.dtype == bool and mask.shape == (n_train,)
    assert int(mask.sum()) == round(0.4 * n_train)
    np.testing.assert_array_equal(noisy.y_train != clean.y_train, mask)  # each to another class
    assert set(np.unique(noisy.y_train)) <= set(range(clean.n_classes))
    offsets = (noisy.y_train[mask] - clean.y_train[mask]) % clean.n_classes
    assert set(offsets.tolist()) == set(range(1, clean.n_classes))  # every other class drawn
    for key in ("x_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(noisy, key), getattr(clean, key), err_msg=key)
    assert not clean.corrupted.any()


def test_label_noise_follows_random_state(compose_raw):
    first = made(compose_raw, *NOISY["blobs"], "dataset.label_noise=0.4")
    again = made(compose_raw, *NOISY["blobs"], "dataset.label_noise=0.4")
    other = made(compose_raw, *NOISY["blobs"], "dataset.label_noise=0.4", "dataset.random_state=7")
    np.testing.assert_array_equal(again.corrupted, first.corrupted)
    np.testing.assert_array_equal(again.y_train, first.y_train)
    assert again.content_hash() == first.content_hash()
    assert other.corrupted.sum() == first.corrupted.sum()
    assert (other.corrupted != first.corrupted).any()


def test_outliers_shift_exactly_the_masked_targets(compose_raw):
    small = ("dataset=regression", "loss=mse", "dataset.n_samples=60", "dataset.n_test=20")
    clean = made(compose_raw, *small)
    shifted = made(compose_raw, *small, "dataset.outliers=0.25")
    mask = shifted.corrupted
    assert int(mask.sum()) == round(0.25 * 40)
    np.testing.assert_array_equal(shifted.y_train[~mask], clean.y_train[~mask])
    moved = shifted.y_train[mask].astype("float64") - clean.y_train[mask]
    std = clean.y_train.astype("float64").std()
    np.testing.assert_allclose(np.abs(moved), datasets.OUTLIER_SHIFT * std, rtol=1e-5)
    for key in ("x_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(shifted, key), getattr(clean, key), err_msg=key)
    assert shifted.target_scale == clean.target_scale  # the test metric keeps its units


@pytest.mark.parametrize(
    ("overrides", "ratio"),
    [
        (("dataset=blobs", "loss=cce", "dataset.n_samples=150", "dataset.n_test=30"), 0.3),
        (("dataset=digits", "loss=cce"), 0.1),
    ],
    ids=["blobs", "digits"],
)
def test_imbalance_keeps_the_largest_class_and_about_r_of_the_others(compose_raw, overrides, ratio):
    plain = made(compose_raw, *overrides, "dataset.standardize=false")
    thinned = made(
        compose_raw, *overrides, "dataset.standardize=false", f"dataset.imbalance={ratio}"
    )
    counts = np.bincount(plain.y_train, minlength=plain.n_classes)
    kept = np.bincount(thinned.y_train, minlength=plain.n_classes)
    largest = int(counts.argmax())
    assert kept[largest] == counts[largest]
    for label in range(plain.n_classes):
        if label != largest:
            assert kept[label] >= 1
            assert abs(kept[label] - ratio * counts[label]) <= 0.5, (label, counts, kept)
        # the rows kept are rows of that class, in their order
        rows = {row.tobytes(): i for i, row in enumerate(plain.x_train[plain.y_train == label])}
        where = [rows[row.tobytes()] for row in thinned.x_train[thinned.y_train == label]]
        assert where == sorted(where) and len(set(where)) == len(where)
    assert not thinned.corrupted.any() and thinned.corrupted.shape == thinned.y_train.shape
    np.testing.assert_array_equal(thinned.x_test, plain.x_test)
    np.testing.assert_array_equal(thinned.y_test, plain.y_test)


# (overrides, what the one-line message says)
REFUSED = [
    (
        ("dataset=regression", "loss=mse", "dataset.label_noise=0.2"),
        ("dataset.label_noise: ", "dataset 'regression' is a regression task", "dataset.outliers"),
    ),
    (
        ("dataset=diabetes", "loss=mse", "dataset.label_noise=0.1"),
        ("dataset.label_noise: ", "dataset 'diabetes' is a regression task"),
    ),
    (
        ("dataset=regression", "loss=mse", "dataset.imbalance=0.5"),
        ("dataset.imbalance: ", "dataset 'regression' is a regression task"),
    ),
    (
        ("dataset=blobs", "loss=cce", "dataset.outliers=0.1"),
        ("dataset.outliers: ", "dataset 'blobs' is a multiclass task", "dataset.label_noise"),
    ),
    (
        ("dataset=circles_noisy", "loss=hinge", "dataset.outliers=0.1"),
        ("dataset.outliers: ", "dataset 'circles_noisy' is a binary task"),
    ),
    (
        ("dataset=blobs", "loss=cce", "dataset.label_noise=1.0"),
        ("dataset.label_noise: must be in [0, 1), got 1.0",),
    ),
    (
        ("dataset=blobs", "loss=cce", "dataset.label_noise=-0.1"),
        ("dataset.label_noise: must be in [0, 1), got -0.1",),
    ),
    (
        ("dataset=regression", "loss=mse", "dataset.outliers=1.5"),
        ("dataset.outliers: must be in [0, 1), got 1.5",),
    ),
    (
        ("dataset=blobs", "loss=cce", "dataset.imbalance=0"),
        ("dataset.imbalance: must be in (0, 1], got 0.0",),
    ),
    (
        ("dataset=blobs", "loss=cce", "dataset.imbalance=1.5"),
        ("dataset.imbalance: must be in (0, 1], got 1.5",),
    ),
]


@pytest.mark.parametrize(
    ("overrides", "parts"), REFUSED, ids=[" ".join(overrides[::2]) for overrides, _ in REFUSED]
)
def test_corruptions_that_do_not_fit_are_refused(compose_raw, overrides, parts):
    with pytest.raises(ConfigError) as refused:
        validate(compose_raw(*overrides))
    message = str(refused.value)
    assert message.startswith(parts[0]), message
    for part in parts[1:]:
        assert part in message, message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ((*NOISY["blobs"], "dataset.label_noise=0.25"), "noisy_train"),
        (("dataset=regression", "loss=mse", *SMALL, "dataset.outliers=0.1"), "outlier_train"),
    ],
    ids=["label_noise", "outliers"],
)
def test_generate_stores_the_corruption_mask(compose_raw, tmp_path: Path, overrides, name):
    cfg = validate(compose_raw(*overrides))
    layout = steps.Layout(tmp_path)
    data = steps.generate(cfg, layout)
    with np.load(layout.data) as archive:
        assert set(archive.files) == {"x_train", "y_train", "x_test", "y_test", name}
        mask = archive[name]
    n_train = cfg.dataset.n_samples - cfg.dataset.n_test
    share = cfg.dataset.label_noise or cfg.dataset.outliers
    assert mask.dtype == bool and int(mask.sum()) == round(share * n_train)
    np.testing.assert_array_equal(mask, data.corrupted)
    meta = json.loads(layout.data_meta.read_text())
    assert meta[name] == int(mask.sum())
    loaded, _ = steps.load_dataset(layout)
    np.testing.assert_array_equal(loaded.corrupted, mask)


# --------------------------------------------------------------------------------------------
# 3. Training: gradient norms, label fit, the train step
# --------------------------------------------------------------------------------------------


def gradient_norm(model: keras.Model, loss: Callable, x: np.ndarray, y: np.ndarray) -> float:
    """The global L2 norm of the loss's gradient with respect to the trainable weights."""
    with tf.GradientTape() as tape:
        value = loss(y, model(x, training=True))
    gradients = tape.gradient(value, model.trainable_weights)
    return float(np.sqrt(sum(np.sum(np.square(g.numpy().astype("float64"))) for g in gradients)))


def test_fit_logs_the_gradient_norm_of_each_epoch(tiny_cfg):
    """One batch per epoch: the first epoch's norm is the gradient's at the initial weights."""
    cfg = tiny_cfg("dataset=blobs", "loss=gce", "trainer.batch_size=1000", epochs=3, n_samples=90)
    data = datasets.make_dataset(cfg.dataset)
    history = training.fit(cfg, data).history
    assert len(history["grad_norm"]) == 3
    assert all(value > 0 for value in history["grad_norm"])
    assert "noisy_fit" not in history and "clean_fit" not in history  # no noise, no label fit

    training.seed_everything(cfg.seed)
    (x, y), _ = training.training_arrays(cfg, data)
    initial = training.compile_model(cfg, data)
    expected = gradient_norm(initial, losses.build(cfg.loss), x, y)
    np.testing.assert_allclose(history["grad_norm"][0], expected, rtol=1e-4)


def test_own_train_step_equals_keras_fit_without_shuffling(tiny_cfg):
    """losslab's step over consecutive batches (the last one short) from the same weights:
    the weights, loss and metrics Keras's ``fit(shuffle=False)`` reaches, and ``grad_norm``
    the mean of the batches' gradient norms, each taken before its batch's update."""
    cfg = tiny_cfg("dataset=blobs", "loss=gce", "trainer.batch_size=16", epochs=1, n_samples=120)
    data = datasets.make_dataset(cfg.dataset)
    (x, y), _ = training.training_arrays(cfg, data)
    assert len(x) % 16 != 0  # a short last batch
    training.seed_everything(cfg.seed)
    ours = training.compile_model(cfg, data)
    theirs = training.compile_model(cfg, data)
    by_batch = training.compile_model(cfg, data)
    theirs.set_weights(ours.get_weights())
    by_batch.set_weights(ours.get_weights())

    ours.test_step((x[:16], y[:16]))  # builds the metrics, as the compiled epochs do
    ours.reset_metrics()
    grad_norm = keras.metrics.Mean(name="grad_norm")
    training._in_batches(training._train_step(ours, grad_norm), tf.constant(x), tf.constant(y), 16)
    history = theirs.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history

    loss, norms = losses.build(cfg.loss), []
    for start in range(0, len(x), 16):
        batch = x[start : start + 16], y[start : start + 16]
        norms.append(gradient_norm(by_batch, loss, *batch))
        by_batch.train_on_batch(*batch)

    for mine, keras_fit, stepwise in zip(
        ours.get_weights(), theirs.get_weights(), by_batch.get_weights(), strict=True
    ):
        np.testing.assert_allclose(mine, keras_fit, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mine, stepwise, rtol=1e-5, atol=1e-7)
    results = ours.get_metrics_result()
    for name, values in history.items():
        np.testing.assert_allclose(float(results[name]), values[0], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(float(grad_norm.result()), np.mean(norms), rtol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        ("dataset=blobs", "loss=cce", "dataset.label_noise=0.4"),
        ("experiment=circles_hinge", "dataset.label_noise=0.3", "trainer.validation=split"),
    ],
    ids=["argmax", "threshold-validation-split"],
)
def test_noisy_and_clean_fit_are_shares_of_the_training_labels(tiny_cfg, overrides):
    """After one epoch, the returned model's predictions of the training rows it fitted (all of
    them, or the first 80 % with a validation split) against their stored, noisy labels."""
    cfg = tiny_cfg(*overrides, epochs=1, n_samples=160)
    data = datasets.make_dataset(cfg.dataset)
    result = training.fit(cfg, data)
    history = result.history
    assert len(history["noisy_fit"]) == len(history["clean_fit"]) == 1
    rows = len(data.y_train)
    if cfg.trainer.validation.value == "split":
        rows = int(np.floor(rows * (1 - cfg.trainer.validation_split)))
    outputs = training.predict(result.model, data.x_train[:rows]).astype("float64")
    if outputs.shape[1] > 1:
        predicted = outputs.argmax(axis=1)
    else:  # a tanh head on {-1,+1} targets: the sign decides
        predicted = (outputs[:, 0] > 0).astype("int64")
    hits = predicted == data.y_train[:rows]
    noisy = data.corrupted[:rows]
    assert 0 < noisy.sum() < rows
    np.testing.assert_allclose(history["noisy_fit"][0], hits[noisy].mean(), atol=1e-6)
    np.testing.assert_allclose(history["clean_fit"][0], hits[~noisy].mean(), atol=1e-6)
    for name in ("noisy_fit", "clean_fit"):
        assert 0.0 <= history[name][0] <= 1.0
    assert history["grad_norm"][0] > 0


# --------------------------------------------------------------------------------------------
# 4. Calibration and margins
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "k"), [("bce", 1), ("focal", 1), ("cce", 3), ("gce", 5)], ids=str)
def test_calibration_equals_a_loop_over_bins(name: str, k: int) -> None:
    rng = np.random.default_rng(11)
    rows = 300
    if k == 1:
        outputs = rng.uniform(0.0, 1.0, size=(rows, 1)).astype("float32")
        labels = (rng.uniform(size=rows) < outputs[:, 0] ** 2).astype("int64")  # overconfident
    else:
        outputs = softmax_rows(rows, k, seed=12, scale=3.0)
        labels = rng.integers(0, k, rows)
    found = diagnostics.calibration(losses.get(name), outputs, labels)
    expected = ece_by_loop(outputs, labels)
    np.testing.assert_allclose(found.edges, np.arange(BINS + 1) / BINS)
    np.testing.assert_array_equal(found.counts, expected["counts"])
    np.testing.assert_allclose(found.confidence, expected["confidence"], rtol=1e-6)
    np.testing.assert_allclose(found.accuracy, expected["accuracy"], rtol=1e-12)
    assert found.ece == pytest.approx(expected["ece"], rel=1e-6)
    assert expected["ece"] > 0.01


def test_a_perfectly_calibrated_head_has_ece_zero_and_an_overconfident_one_does_not():
    # sigmoid: 10 rows at 0.8 with 8 positives; 5 at 0.4 (class 0, confidence 0.6) with 3
    # negatives; 4 at 1.0, all positive
    outputs = np.array([[0.8]] * 10 + [[0.4]] * 5 + [[1.0]] * 4)
    labels = np.array([1] * 8 + [0] * 2 + [0] * 3 + [1] * 2 + [1] * 4)
    calibrated = diagnostics.calibration(losses.get("bce"), outputs, labels)
    assert calibrated.ece == pytest.approx(0.0, abs=1e-12)
    assert calibrated.counts.sum() == len(labels)
    # softmax: 4 rows at 0.75 with 3 right; 2 at 0.5 with 1 right
    rows = np.array([[0.75, 0.125, 0.125]] * 4 + [[0.5, 0.3, 0.2]] * 2)
    assert diagnostics.calibration(
        losses.get("cce"), rows, np.array([0, 0, 0, 1, 0, 2])
    ).ece == pytest.approx(0.0, abs=1e-12)
    # every row right at confidence 0.6: off by 0.4
    sure = diagnostics.calibration(losses.get("bce"), np.full((6, 1), 0.6), np.ones(6, int))
    assert sure.ece == pytest.approx(0.4)


def test_margins_equal_a_direct_recomputation() -> None:
    rng = np.random.default_rng(21)
    outputs = rng.uniform(-1.5, 1.5, size=(40, 1))
    labels = rng.integers(0, 2, 40)
    expected = [
        (1.0 if label == 1 else -1.0) * out[0] for out, label in zip(outputs, labels, strict=True)
    ]
    for name in ("hinge", "squared_hinge"):
        np.testing.assert_allclose(
            diagnostics.margins(losses.get(name), outputs, labels), expected, rtol=1e-12
        )

    outputs = rng.normal(size=(40, 4))
    labels = rng.integers(0, 4, 40)
    expected = [
        out[label] - max(out[j] for j in range(4) if j != label)
        for out, label in zip(outputs, labels, strict=True)
    ]
    found = diagnostics.margins(losses.get("categorical_hinge"), outputs, labels)
    np.testing.assert_allclose(found, expected, rtol=1e-12)
    assert (found > 0).mean() == pytest.approx((outputs.argmax(axis=1) == labels).mean())
    assert not np.isinf(outputs).any()  # the caller's outputs are left as they were


def test_diagnostics_follow_the_head() -> None:
    assert losses.get("cce").probabilistic(None) and not losses.get("cce").margin
    assert losses.get("focal").probabilistic(None)
    for name in ("hinge", "squared_hinge", "categorical_hinge"):
        assert losses.get(name).margin and not losses.get(name).probabilistic(None)
    assert not losses.get("categorical_hinge").probabilistic("softmax")  # a margin loss
    assert not losses.get("mse").probabilistic(None)


# --------------------------------------------------------------------------------------------
# 5a. A loss of the user's own, in process
# --------------------------------------------------------------------------------------------


def custom_loss(function: str, task: str = "binary", targets: str = "plus_minus_one", **more):
    return (
        "loss=custom",
        f"loss.function={function}",
        f"loss.task={task}",
        f"loss.targets={targets}",
        *(f"loss.{key}={value}" for key, value in more.items()),
    )


@pytest.mark.parametrize(
    ("targets", "activation", "head", "margin", "probabilistic"),
    [
        ("plus_minus_one", "null", "tanh", True, False),
        ("plus_minus_one", "linear", "linear", True, False),
        ("zero_one", "null", "sigmoid", False, True),
        ("zero_one", "linear", "linear", False, False),
    ],
)
def test_custom_loss_spec_follows_its_config(
    compose_raw, user_module, targets, activation, head, margin, probabilistic
):
    name = user_module(MY_LOSSES)
    cfg = validate(
        compose_raw(*custom_loss(f"{name}:my_hinge", targets=targets, activation=activation))
    )
    spec = losses.of(cfg.loss)
    assert (spec.name, spec.task, spec.encoding) == ("custom", losses.Task.BINARY, targets)
    assert spec.activations == (head,)
    assert spec.metrics == ("accuracy",)
    assert spec.margin is margin
    assert spec.probabilistic(cfg.model.output_activation) is probabilistic
    assert spec.builder == f"{name}:my_hinge"
    built = losses.build(cfg.loss)
    assert built is sys.modules[name].my_hinge
    y = np.array([[1.0], [-1.0], [1.0]], dtype="float32")
    f = np.array([[0.25], [0.5], [2.0]], dtype="float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(built(y, f)), [0.75, 1.5, 0.0])


@pytest.mark.parametrize("activation", ["null", "linear"])
def test_a_custom_loss_spec_is_the_same_from_the_runs_logged_params(
    compose_raw, user_module, activation
):
    """The report reads a run's spec back from its params, which MLflow keeps as strings."""
    name = user_module(MY_LOSSES)
    cfg = validate(compose_raw(*custom_loss(f"{name}:my_hinge", activation=activation)))
    logged = tracking.config_params(cfg)
    assert losses.from_params(logged) == losses.of(cfg.loss)


def test_import_function_finds_modules_in_the_working_directory(user_module) -> None:
    name = user_module("def f(y_true, y_pred):\n    return y_true - y_pred\n")
    assert losses.import_function(f"{name}:f")(3, 1) == 2
    assert losses.import_function("losslab.noise_robust:GeneralizedCrossEntropy").__name__ == (
        "GeneralizedCrossEntropy"
    )


# id: (changes to a working custom loss, what the message says; {module}: the module's name)
CUSTOM_REFUSALS = {
    "unimportable": (
        {"function": "no_such_module_for_losslab:f"},
        ("loss.function: module 'no_such_module_for_losslab' cannot be imported",),
    ),
    "no-name": ({"function": "{module}"}, ("loss.function: '{module}' is not MODULE:NAME",)),
    "no-module": ({"function": ":my_hinge"}, ("loss.function: ':my_hinge' is not MODULE:NAME",)),
    "undefined": (
        {"function": "{module}:absent"},
        ("loss.function: 'absent' in module '{module}' is not defined", "there: my_hinge"),
    ),
    "not-callable": (
        {"function": "{module}:NOT_A_FUNCTION"},
        ("loss.function: 'NOT_A_FUNCTION' in module '{module}' is", "not callable", "my_hinge"),
    ),
    "unknown-task": (
        {"task": "ranking"},
        ("loss.task: 'ranking' is not known; choose one of: regression, binary, multiclass",),
    ),
    "unknown-targets": ({"targets": "signs"}, ("loss.targets: 'signs' is not known",)),
    "targets-not-fitting": (
        {"task": "multiclass"},
        ("loss.targets: 'plus_minus_one' does not fit loss.task 'multiclass'", "one_hot"),
    ),
    "regression-targets": (
        {"task": "regression", "targets": "zero_one"},
        ("loss.targets: 'zero_one' does not fit loss.task 'regression'; choose one of: float",),
    ),
    "unknown-activation": (
        {"activation": "softmaxx"},
        ("loss.activation: 'softmaxx' is not known; choose one of: linear",),
    ),
}


@pytest.mark.parametrize("case", CUSTOM_REFUSALS)
def test_custom_loss_configs_that_cannot_work_are_refused(compose_raw, user_module, case):
    changes, parts = CUSTOM_REFUSALS[case]
    name = user_module(MY_LOSSES)
    values = {"function": "{module}:my_hinge", "task": "binary", "targets": "plus_minus_one"}
    values |= changes
    values["function"] = values["function"].format(module=name)
    with pytest.raises(ConfigError) as refused:
        validate(compose_raw(*custom_loss(**values)))
    message = str(refused.value)
    for part in parts:
        assert part.format(module=name) in message, message
    assert "\n" not in message


@pytest.mark.parametrize("function", ["my_hinge", "scaled_hinge", "keras_hinge"])
def test_a_custom_loss_source_is_the_module_its_reference_names(user_module, function):
    """The run logs the file of MODULE in MODULE:NAME, whatever kind of callable NAME is: a
    function, a ``functools.partial`` of one, an instance of a Keras loss class."""
    name = user_module(
        MY_LOSSES
        + textwrap.dedent(
            """
            import functools

            scaled_hinge = functools.partial(my_hinge)
            keras_hinge = keras.losses.Hinge()
            """
        )
    )
    params = {
        "name": "custom",
        "function": f"{name}:{function}",
        "task": "binary",
        "targets": "plus_minus_one",
    }
    assert Path(losses.source_file(params)) == Path.cwd() / f"{name}.py"


# --------------------------------------------------------------------------------------------
# 5b. A loss of the user's own, end to end through the CLI
# --------------------------------------------------------------------------------------------

CUSTOM_RUN = (
    *custom_loss("my_losses:my_hinge", activation="linear"),
    "dataset=circles_noisy",
    "dataset.n_samples=60",
    "dataset.n_test=30",
    "trainer.epochs=3",
    "trainer.verbose=0",
)


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("def loss(y_true):\n    return y_true\n", "TypeError"),
        (
            "import keras\n\ndef loss(y_true, y_pred):\n"
            "    return keras.ops.matmul(y_true, y_pred)\n",
            "InvalidArgumentError",
        ),
    ],
    ids=["wrong-arguments", "wrong-shapes"],
)
def test_a_custom_loss_that_fails_when_called_is_a_config_error(
    tiny_cfg, user_module, source: str, error: str
) -> None:
    """Found by one eager call before training, and said in one line naming the function, the
    targets and the shapes it was given, not raised from inside the compiled loop."""
    name = user_module(source)
    cfg = tiny_cfg(*custom_loss(f"{name}:loss"), epochs=1)
    with pytest.raises(ConfigError) as raised:
        training.fit(cfg, datasets.make_dataset(cfg.dataset))
    message = str(raised.value)
    assert message.startswith(f"loss.function: {name}:loss failed on plus_minus_one targets")
    assert f": {error}: " in message and "\n" not in message


@dataclass
class CliRun:
    done: subprocess.CompletedProcess
    uri: str
    cwd: Path  # where losslab ran
    out: Path  # its Hydra run dir

    @property
    def told(self) -> str:
        done = self.done
        return f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"

    @property
    def run(self):
        assert self.done.returncode == 0, self.told
        (run,) = all_runs(self.uri)
        return run

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)


def cli_run(folder: Path, uri: str, *overrides: str) -> CliRun:
    cwd, out = folder / "work", folder / "out"
    cwd.mkdir(exist_ok=True)
    done = run_command([LOSSLAB, *overrides, f"hydra.run.dir={out}"], cwd, uri, timeout=600)
    return CliRun(done, uri, cwd, out)


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory: pytest.TempPathFactory, empty_store) -> CliRun:
    """``losslab loss=custom ...`` in a folder holding my_losses.py, tracked in a store of
    its own."""
    folder = tmp_path_factory.mktemp("custom_loss")
    (folder / "work").mkdir()
    (folder / "work" / "my_losses.py").write_text(MY_LOSSES)
    return cli_run(folder, empty_store(folder), *CUSTOM_RUN)


@pytest.mark.xdist_group("custom_run")  # the module fixture, made once
def test_custom_loss_run_finishes_and_scores_sign_agreement(custom_run: CliRun) -> None:
    run = custom_run.run
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.function"] == "my_losses:my_hinge"
    arrays, outputs = saved_predictions(custom_run.out)
    assert outputs.shape == (len(arrays["y_test"]), 1)
    truth = 2.0 * arrays["y_test"] - 1.0
    agreement = float(np.mean(np.sign(outputs[:, 0]) == truth))
    hinge = float(np.mean(np.maximum(0.0, 1.0 - truth * outputs[:, 0].astype("float64"))))
    metrics = run.data.metrics
    assert metrics["test_accuracy"] == pytest.approx(agreement, abs=1e-6)
    assert metrics["test_loss"] == pytest.approx(hinge, rel=1e-5)  # the user's loss scored it
    assert "test_ece" not in metrics  # a margin head has no probabilities to calibrate
    saved = json.loads((custom_run.out / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == pytest.approx(agreement, abs=1e-6)
    assert "ece" not in saved["test"]
    assert "noisy_train" in arrays and not arrays["noisy_train"].any()


@pytest.mark.xdist_group("custom_run")
def test_custom_loss_run_logs_the_loss_source_and_its_hash(
    custom_run: CliRun, tmp_path: Path
) -> None:
    run, client = custom_run.run, custom_run.client
    found = artifact_paths(client, run.info.run_id)
    assert "loss/my_losses.py" in found, sorted(found)
    assert "plots/margins.png" in found and "plots/reliability.png" not in found
    assert (custom_run.out / "plots" / "margins.png").is_file()
    source = (custom_run.cwd / "my_losses.py").read_bytes()
    assert run.data.tags["losslab.loss_sha256"] == hashlib.sha256(source).hexdigest()
    logged = client.download_artifacts(run.info.run_id, "loss/my_losses.py", str(tmp_path))
    assert Path(logged).read_bytes() == source


CHILD_LOAD = textwrap.dedent(
    """
    import importlib.util, sys
    assert importlib.util.find_spec("my_losses") is None, "my_losses is importable"
    sys.modules["my_losses"] = None  # and stays so
    import keras
    import mlflow
    import numpy as np

    tracking_uri, run_id, model_file, data, target = sys.argv[1:]
    mlflow.set_tracking_uri(tracking_uri)
    x_test = np.load(data)["x_test"]
    by_pyfunc = np.asarray(mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(x_test))
    by_keras = keras.models.load_model(model_file).predict(x_test, verbose=0)
    np.savez(target, pyfunc=by_pyfunc, keras=by_keras)
    """
)


@pytest.mark.xdist_group("custom_run")
def test_custom_loss_models_load_where_the_module_is_not_importable(
    custom_run: CliRun, tmp_path: Path
) -> None:
    arrays, expected = saved_predictions(custom_run.out)
    target = tmp_path / "predicted.npz"
    args = [
        custom_run.uri,
        custom_run.run.info.run_id,
        str(custom_run.out / "model" / "model.keras"),
        str(custom_run.out / "data" / "dataset.npz"),
        str(target),
    ]
    done = run_command([sys.executable, "-c", CHILD_LOAD, *args], tmp_path, custom_run.uri)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(target) as predicted:
        for how in ("pyfunc", "keras"):
            np.testing.assert_allclose(predicted[how], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("function", "task", "parts"),
    [
        ("absent_losses:my_hinge", "binary", ("loss.function: module 'absent_losses'",)),
        ("my_losses:NOT_A_FUNCTION", "binary", ("'NOT_A_FUNCTION'", "not callable", "my_hinge")),
        ("my_losses:my_hinge", "ranking", ("loss.task: 'ranking'", "regression, binary")),
    ],
    ids=["unimportable", "not-callable", "bad-task"],
)
def test_cli_refuses_a_custom_loss_that_cannot_work_in_one_line(
    tmp_path: Path, tracking_uri: str, function: str, task: str, parts: tuple[str, ...]
) -> None:
    # no Keras import at the top: refusing the config need not wait for TensorFlow
    (tmp_path / "my_losses.py").write_text(
        "def my_hinge(y_true, y_pred):\n    return 1 - y_true * y_pred\n\n\nNOT_A_FUNCTION = 3\n"
    )
    out = tmp_path / "out"
    command = [LOSSLAB, *custom_loss(function, task=task), f"hydra.run.dir={out}"]
    one_line_error(run_command(command, tmp_path, tracking_uri, timeout=120), *parts)
    assert all_runs(tracking_uri) == []
    assert not (out / "data").exists()


# --------------------------------------------------------------------------------------------
# 6. The digits study with 40 % of its training labels flipped, end to end
# --------------------------------------------------------------------------------------------

NOISY_RUN = (
    "experiment=real_multiclass_cce",
    "dataset.label_noise=0.4",
    "trainer.epochs=2",
    "trainer.verbose=0",
)


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory: pytest.TempPathFactory, empty_store) -> CliRun:
    folder = tmp_path_factory.mktemp("label_noise")
    return cli_run(folder, empty_store(folder), *NOISY_RUN)


@pytest.mark.xdist_group("noisy_run")  # the module fixture, made once
def test_noisy_digits_run_logs_calibration_and_label_fit(noisy_run: CliRun) -> None:
    run, client = noisy_run.run, noisy_run.client
    assert run.info.status == "FINISHED"
    arrays, outputs = saved_predictions(noisy_run.out)
    expected = ece_by_loop(outputs, arrays["y_test"])["ece"]
    saved = json.loads((noisy_run.out / "metrics.json").read_text())
    assert saved["test"]["ece"] == pytest.approx(expected, abs=1e-6)
    assert run.data.metrics["test_ece"] == pytest.approx(expected, abs=1e-6)
    for name in ("noisy_fit", "clean_fit", "grad_norm"):
        history = metric_history(client, run.info.run_id, name)
        assert [step for step, _ in history] == [1, 2], (name, history)
        high = np.inf if name == "grad_norm" else 1.0
        assert all(0 <= value <= high for _, value in history), (name, history)
    assert all(value > 0 for _, value in metric_history(client, run.info.run_id, "grad_norm"))
    found = artifact_paths(client, run.info.run_id)
    assert "plots/reliability.png" in found and "plots/margins.png" not in found, sorted(found)


@pytest.mark.xdist_group("noisy_run")
def test_noisy_digits_run_flipped_40_percent_of_the_training_labels(
    noisy_run: CliRun, compose_raw
) -> None:
    assert noisy_run.done.returncode == 0, noisy_run.told
    arrays, _ = saved_predictions(noisy_run.out)
    mask = arrays["noisy_train"]
    n_train = len(arrays["y_train"])
    assert int(mask.sum()) == round(0.4 * n_train)
    meta = json.loads((noisy_run.out / "data" / "dataset.json").read_text())
    assert meta["noisy_train"] == int(mask.sum()) and meta["n_train"] == n_train
    clean = made(compose_raw, "experiment=real_multiclass_cce")
    np.testing.assert_array_equal(arrays["y_train"] != clean.y_train, mask)
    np.testing.assert_array_equal(arrays["y_test"], clean.y_test)
    columns = (noisy_run.out / "model" / "history.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm", "noisy_fit", "clean_fit"} <= set(columns)
