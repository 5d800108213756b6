"""The optimizer registry: each optimizer's parameter schema and its Keras class."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import MISSING


@dataclass
class OptimizerParams:
    name: str = MISSING
    learning_rate: float = 0.01


@dataclass
class SGDParams(OptimizerParams):
    momentum: float = 0.0
    nesterov: bool = False


@dataclass
class AdamParams(OptimizerParams):
    beta_1: float = 0.9
    beta_2: float = 0.999


@dataclass
class RMSpropParams(OptimizerParams):
    rho: float = 0.9
    momentum: float = 0.0


@dataclass(frozen=True)
class OptimizerSpec:
    schema: type[OptimizerParams]
    keras_class: str


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "sgd": OptimizerSpec(SGDParams, "SGD"),
    "adam": OptimizerSpec(AdamParams, "Adam"),
    "rmsprop": OptimizerSpec(RMSpropParams, "RMSprop"),
}


def build_optimizer(params: Any) -> Any:
    """A fresh Keras optimizer for validated ``params`` (imports Keras)."""
    import keras

    kwargs = asdict(params) if not hasattr(params, "items") else dict(params.items())
    keras_class = getattr(keras.optimizers, OPTIMIZERS[kwargs.pop("name")].keras_class)
    return keras_class(**kwargs)
