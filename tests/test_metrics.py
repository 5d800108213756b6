"""Metrics per target encoding: accuracy means the share of correct predictions for every loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from losslab import losses
from losslab.metrics import build_metrics, sign_accuracy

# {-1,+1} targets and tanh-like outputs: the sign is right for rows 0, 1, 2, 3 and wrong for row 4.
Y_PM = np.array([[1.0], [-1.0], [1.0], [-1.0], [1.0]], dtype="float32")
P_TANH = np.array([[0.9], [-0.8], [0.3], [-0.2], [-0.4]], dtype="float32")


def _result(metric, y_true, y_pred) -> float:
    metric.update_state(y_true, y_pred)
    return float(metric.result())


def _sign_share(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.sign(y_true) == np.sign(y_pred)))


def test_sign_accuracy_by_hand():
    assert _sign_share(Y_PM, P_TANH) == 0.8  # 4 of 5, as the comment on the arrays says
    wrapped = keras.metrics.MeanMetricWrapper(sign_accuracy, name="accuracy")
    assert _result(wrapped, Y_PM, P_TANH) == pytest.approx(0.8)


def test_sign_accuracy_per_sample():
    per_sample = np.asarray(sign_accuracy(Y_PM, P_TANH)).reshape(-1)
    np.testing.assert_array_equal(per_sample, [1.0, 1.0, 1.0, 1.0, 0.0])


def test_sign_accuracy_all_wrong_and_all_right():
    assert _result(keras.metrics.MeanMetricWrapper(sign_accuracy), Y_PM, -P_TANH) == (
        pytest.approx(0.2)
    )
    assert _result(keras.metrics.MeanMetricWrapper(sign_accuracy), Y_PM, Y_PM * 0.1) == (
        pytest.approx(1.0)
    )


def test_keras_binary_accuracy_is_wrong_on_plus_minus_one_targets():
    # BinaryAccuracy thresholds at 0.5 and compares with {0,1}: a -1 target never matches, and
    # +1 matches only where the output exceeds 0.5 (row 0). So 1 of 5, not the true 4 of 5.
    threshold_hits = sum(
        1 for y, p in zip(Y_PM.ravel(), P_TANH.ravel(), strict=True) if y == 1 and p > 0.5
    )
    expected_keras = threshold_hits / len(Y_PM)
    keras_says = _result(keras.metrics.BinaryAccuracy(), Y_PM, P_TANH)
    assert keras_says == pytest.approx(expected_keras)
    assert keras_says != pytest.approx(_sign_share(Y_PM, P_TANH))


@pytest.mark.parametrize("name", ["hinge", "squared_hinge"])
def test_hinge_losses_report_sign_accuracy(name):
    (metric,) = build_metrics(losses.get(name))
    assert metric.name == "accuracy"
    assert _result(metric, Y_PM, P_TANH) == pytest.approx(_sign_share(Y_PM, P_TANH))


ACCURACY_CLASS = {
    "bce": keras.metrics.BinaryAccuracy,
    "cce": keras.metrics.CategoricalAccuracy,
    "categorical_focal": keras.metrics.CategoricalAccuracy,
    "softmax_mae": keras.metrics.CategoricalAccuracy,
    "gce": keras.metrics.CategoricalAccuracy,
    "sce": keras.metrics.CategoricalAccuracy,
    "focal": keras.metrics.BinaryAccuracy,
    "kld": keras.metrics.CategoricalAccuracy,
    "categorical_hinge": keras.metrics.CategoricalAccuracy,
    "sparse_cce": keras.metrics.SparseCategoricalAccuracy,
    "hinge": keras.metrics.MeanMetricWrapper,  # wrapping sign_accuracy
    "squared_hinge": keras.metrics.MeanMetricWrapper,
}
REGRESSION = ["mse", "msle", "mae", "huber", "log_cosh"]


def test_every_loss_is_covered():
    assert sorted(losses.LOSSES) == sorted([*ACCURACY_CLASS, *REGRESSION])


@pytest.mark.parametrize("name", ACCURACY_CLASS)
def test_accuracy_class_follows_the_encoding(name):
    built = build_metrics(losses.get(name))
    assert [metric.name for metric in built] == ["accuracy"]
    assert type(built[0]) is ACCURACY_CLASS[name]


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_losses_report_mse(name):
    built = build_metrics(losses.get(name))
    assert [metric.name for metric in built] == ["mse"]
    assert type(built[0]) is keras.metrics.MeanSquaredError


def test_build_metrics_returns_fresh_objects():
    spec = losses.get("hinge")
    first, second = build_metrics(spec)[0], build_metrics(spec)[0]
    assert first is not second
    first.update_state(Y_PM, -P_TANH)
    assert _result(second, Y_PM, P_TANH) == pytest.approx(0.8)


def test_accuracy_on_class_encodings():
    labels = np.array([2, 0, 1, 1])
    probs = np.array(
        [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.5, 0.3, 0.2]], dtype="float32"
    )
    expected = float(np.mean(probs.argmax(axis=1) == labels))  # 3 of 4
    (one_hot,) = build_metrics(losses.get("cce"))
    (integer,) = build_metrics(losses.get("sparse_cce"))
    assert _result(one_hot, np.eye(3, dtype="float32")[labels], probs) == pytest.approx(expected)
    assert _result(integer, labels, probs) == pytest.approx(expected)
