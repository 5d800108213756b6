"""Model building: hidden layers from the config, the output head from the loss registry."""

from __future__ import annotations

from typing import Any

import keras

from losslab.losses import LossSpec


def build_model(model_cfg: Any, n_features: int, spec: LossSpec, n_classes: int) -> keras.Model:
    """An MLP whose output units and activation fit ``spec`` (unless the config forces another)."""
    layers: list[keras.layers.Layer] = [keras.Input(shape=(n_features,), name="features")]
    for units in model_cfg.hidden:
        layers.append(
            keras.layers.Dense(
                units,
                activation=model_cfg.activation,
                kernel_initializer=model_cfg.kernel_initializer,
            )
        )
    activation = model_cfg.output_activation or spec.default_activation
    layers.append(keras.layers.Dense(spec.units(n_classes), activation=activation, name="output"))
    return keras.Sequential(layers, name=f"mlp_{spec.name}")
