"""The loss registry: for every loss, what it needs from the data and the model.

Each entry states the contract Keras leaves to the user: the task the loss serves, how targets
must be encoded, which output activations make sense and which metrics to report. Data
preparation, model building, training, evaluation and plotting all ask this module; none of
them repeats its knowledge. Importing it does not import TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Task(StrEnum):
    REGRESSION = "regression"
    BINARY = "binary"
    MULTICLASS = "multiclass"


class Encoding(StrEnum):
    """How targets are presented to the loss."""

    FLOAT = "float"
    ZERO_ONE = "{0,1}"
    PLUS_MINUS_ONE = "{-1,+1}"
    ONE_HOT = "one-hot"
    INTEGER = "integer"


@dataclass(frozen=True)
class LossSpec:
    """One loss's contract.

    ``activations`` lists the output activations that fit the loss; the first is the default.
    ``metrics`` are task metrics by name; :mod:`losslab.metrics` builds the implementation that is
    correct for ``encoding`` (e.g. ``accuracy`` on {-1,+1} targets is sign agreement).
    """

    name: str
    keras_name: str
    task: Task
    encoding: Encoding
    activations: tuple[str, ...]
    metrics: tuple[str, ...]
    description: str

    @property
    def default_activation(self) -> str:
        return self.activations[0]

    def accepts(self, data_task: Task) -> bool:
        """Multiclass losses also fit two classes (a 2-unit softmax); the others need their task."""
        if self.task is Task.MULTICLASS:
            return data_task in (Task.BINARY, Task.MULTICLASS)
        return self.task is data_task

    def units(self, n_classes: int) -> int:
        return n_classes if self.encoding in (Encoding.ONE_HOT, Encoding.INTEGER) else 1


METRIC_GOALS = {"accuracy": "max", "mse": "min"}  # which way is better, for reports

_REGRESSION = dict(task=Task.REGRESSION, encoding=Encoding.FLOAT, metrics=("mse",))

LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "mse",
            "mean_squared_error",
            activations=("linear",),
            description="mean squared error; the default for regression",
            **_REGRESSION,
        ),
        LossSpec(
            "msle",
            "mean_squared_logarithmic_error",
            activations=("linear", "softplus", "relu"),
            description="squared error of log(1+y); relative errors on positive targets",
            **_REGRESSION,
        ),
        LossSpec(
            "mae",
            "mean_absolute_error",
            activations=("linear",),
            description="mean absolute error; robust to outliers",
            **_REGRESSION,
        ),
        LossSpec(
            "huber",
            "huber",
            activations=("linear",),
            description="quadratic near zero, linear beyond delta=1",
            **_REGRESSION,
        ),
        LossSpec(
            "log_cosh",
            "log_cosh",
            activations=("linear",),
            description="log(cosh(error)); smooth like MSE near zero, like MAE far away",
            **_REGRESSION,
        ),
        LossSpec(
            "bce",
            "binary_crossentropy",
            task=Task.BINARY,
            encoding=Encoding.ZERO_ONE,
            activations=("sigmoid",),
            metrics=("accuracy",),
            description="binary cross-entropy on a sigmoid probability",
        ),
        LossSpec(
            "hinge",
            "hinge",
            task=Task.BINARY,
            encoding=Encoding.PLUS_MINUS_ONE,
            activations=("tanh", "linear"),
            metrics=("accuracy",),
            description="max(0, 1 - y*f); margin loss on {-1,+1} targets",
        ),
        LossSpec(
            "squared_hinge",
            "squared_hinge",
            task=Task.BINARY,
            encoding=Encoding.PLUS_MINUS_ONE,
            activations=("tanh", "linear"),
            metrics=("accuracy",),
            description="max(0, 1 - y*f)^2; smoother hinge on {-1,+1} targets",
        ),
        LossSpec(
            "cce",
            "categorical_crossentropy",
            task=Task.MULTICLASS,
            encoding=Encoding.ONE_HOT,
            activations=("softmax",),
            metrics=("accuracy",),
            description="categorical cross-entropy on one-hot targets",
        ),
        LossSpec(
            "sparse_cce",
            "sparse_categorical_crossentropy",
            task=Task.MULTICLASS,
            encoding=Encoding.INTEGER,
            activations=("softmax",),
            metrics=("accuracy",),
            description="categorical cross-entropy on integer class labels",
        ),
        LossSpec(
            "kld",
            "kl_divergence",
            task=Task.MULTICLASS,
            encoding=Encoding.ONE_HOT,
            activations=("softmax",),
            metrics=("accuracy",),
            description="Kullback-Leibler divergence between one-hot targets and the softmax",
        ),
        LossSpec(
            "categorical_hinge",
            "categorical_hinge",
            task=Task.MULTICLASS,
            encoding=Encoding.ONE_HOT,
            activations=("softmax", "linear"),
            metrics=("accuracy",),
            description="multiclass margin loss on one-hot targets",
        ),
    )
}


def get(name: str) -> LossSpec:
    """The spec of ``name``; a KeyError names the known losses."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss '{name}'; known losses: {', '.join(LOSSES)}") from None


def encode_targets(spec: LossSpec, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Turn stored targets (floats, or class indices 0..k-1) into what ``spec`` expects."""
    if spec.encoding is Encoding.FLOAT:
        return y.astype("float32").reshape(-1, 1)
    labels = y.astype("int64")
    if spec.encoding is Encoding.ZERO_ONE:
        return labels.astype("float32").reshape(-1, 1)
    if spec.encoding is Encoding.PLUS_MINUS_ONE:
        return (2.0 * labels - 1.0).astype("float32").reshape(-1, 1)
    if spec.encoding is Encoding.ONE_HOT:
        return np.eye(n_classes, dtype="float32")[labels]
    return labels.astype("int32")


def predict_labels(spec: LossSpec, outputs: np.ndarray) -> np.ndarray:
    """Class indices (0..k-1) from raw model outputs, the inverse of :func:`encode_targets`."""
    if spec.encoding in (Encoding.ONE_HOT, Encoding.INTEGER):
        return outputs.argmax(axis=1)
    threshold = 0.0 if spec.encoding is Encoding.PLUS_MINUS_ONE else 0.5
    return (outputs.reshape(-1) > threshold).astype("int64")
