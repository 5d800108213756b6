"""Keras metrics that are correct for each target encoding.

Keras's string ``'accuracy'`` on a one-unit output becomes BinaryAccuracy (threshold 0.5 against
{0,1} targets); on {-1,+1} targets with a tanh head that caps near 50 %. Here ``accuracy`` is
built from the loss registry's encoding, so every loss reports the accuracy a person means.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from losslab.losses import Encoding, LossSpec


@keras.saving.register_keras_serializable(package="losslab")
def sign_accuracy(y_true, y_pred):
    """1 where the prediction has the target's sign ({-1,+1} targets), else 0."""
    agree = keras.ops.greater(keras.ops.multiply(y_true, y_pred), 0.0)
    return keras.ops.cast(agree, "float32")


_ACCURACY: dict[Encoding, Callable[[], keras.metrics.Metric]] = {
    Encoding.ZERO_ONE: lambda: keras.metrics.BinaryAccuracy(name="accuracy"),
    Encoding.PLUS_MINUS_ONE: lambda: keras.metrics.MeanMetricWrapper(
        sign_accuracy, name="accuracy"
    ),
    Encoding.ONE_HOT: lambda: keras.metrics.CategoricalAccuracy(name="accuracy"),
    Encoding.INTEGER: lambda: keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
}


def build_metrics(spec: LossSpec) -> list[keras.metrics.Metric]:
    """Fresh metric objects for the metrics the registry lists for ``spec``."""
    built = []
    for name in spec.metrics:
        if name == "accuracy":
            built.append(_ACCURACY[spec.encoding]())
        elif name == "mse":
            built.append(keras.metrics.MeanSquaredError(name="mse"))
        else:
            raise ValueError(f"no implementation for metric '{name}' of loss '{spec.name}'")
    return built
