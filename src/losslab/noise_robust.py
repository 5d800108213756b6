"""Losses from the noisy-label literature that Keras does not ship, on one-hot targets and a
softmax head, written as Keras loss classes so the registry builds them as it builds Keras's own.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

_EPSILON = 1e-7


def _true_class_probability(y_true: Any, y_pred: Any) -> Any:
    return ops.clip(ops.sum(y_true * y_pred, axis=-1), _EPSILON, 1.0)


class SoftmaxMAE(keras.losses.Loss):
    """MAE as Ghosh et al. (2017) use it: sum |y - p| over the classes, which is 2(1 - p_y).
    Keras's MeanAbsoluteError averages over the k outputs instead, 1/k of this."""

    def __init__(self, name: str = "softmax_mae", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return ops.sum(ops.abs(y_true - y_pred), axis=-1)


class GeneralizedCrossEntropy(keras.losses.Loss):
    """Zhang & Sabuncu (2018): (1 - p_y^q) / q, cross-entropy as q → 0 and MAE/2 at q = 1."""

    def __init__(self, q: float = 0.7, name: str = "gce", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.q = q

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return (1.0 - ops.power(_true_class_probability(y_true, y_pred), self.q)) / self.q

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "q": self.q}


class SymmetricCrossEntropy(keras.losses.Loss):
    """Wang et al. (2019): alpha·CE(y, p) + beta·RCE, the reverse cross-entropy -Σ p log y with
    log 0 taken as log 1e-4, as in the authors' code."""

    def __init__(
        self, alpha: float = 0.1, beta: float = 1.0, name: str = "sce", **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.alpha, self.beta = alpha, beta

    def call(self, y_true: Any, y_pred: Any) -> Any:
        probabilities = ops.clip(y_pred, _EPSILON, 1.0)
        cross_entropy = -ops.sum(y_true * ops.log(probabilities), axis=-1)
        reverse = -ops.sum(probabilities * ops.log(ops.clip(y_true, 1e-4, 1.0)), axis=-1)
        return self.alpha * cross_entropy + self.beta * reverse

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "beta": self.beta}
