"""The loss registry: for every loss, what it needs from the data and the model.

Each entry states the contract Keras leaves to the user: the task the loss serves, how targets
must be encoded, which output activations make sense, which metrics to report, and the loss's
parameters with their allowed ranges. Data preparation, model building, training, evaluation and
plotting all ask this module; none of them repeats its knowledge. A loss of the user's own
(``loss=custom``) states the same contract in its config. Importing this module does not import
TensorFlow.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from omegaconf import MISSING

from losslab.ranges import NON_NEGATIVE, POSITIVE, Interval


class Task(StrEnum):
    REGRESSION = "regression"
    BINARY = "binary"
    MULTICLASS = "multiclass"


class Encoding(StrEnum):
    """How targets are presented to the loss; the values are what ``loss.targets`` takes."""

    FLOAT = "float"
    ZERO_ONE = "zero_one"
    PLUS_MINUS_ONE = "plus_minus_one"
    ONE_HOT = "one_hot"
    INTEGER = "integer"

    @property
    def notation(self) -> str:
        """How a reader writes these targets: {-1,+1}, one-hot, ..."""
        return _NOTATION[self]

    @property
    def usual_activation(self) -> str:
        """The output activation these targets usually meet."""
        return _USUAL_ACTIVATION[self]


_NOTATION = {
    Encoding.FLOAT: "float",
    Encoding.ZERO_ONE: "{0,1}",
    Encoding.PLUS_MINUS_ONE: "{-1,+1}",
    Encoding.ONE_HOT: "one-hot",
    Encoding.INTEGER: "integer",
}
_USUAL_ACTIVATION = {
    Encoding.FLOAT: "linear",
    Encoding.ZERO_ONE: "sigmoid",
    Encoding.PLUS_MINUS_ONE: "tanh",
    Encoding.ONE_HOT: "softmax",
    Encoding.INTEGER: "softmax",
}
TASK_ENCODINGS = {
    Task.REGRESSION: (Encoding.FLOAT,),
    Task.BINARY: (Encoding.ZERO_ONE, Encoding.PLUS_MINUS_ONE, Encoding.ONE_HOT, Encoding.INTEGER),
    Task.MULTICLASS: (Encoding.ONE_HOT, Encoding.INTEGER),
}
PROBABILISTIC_ACTIVATIONS = ("sigmoid", "softmax")


@dataclass
class LossParams:
    """What every loss config holds; a loss with parameters has its own subclass."""

    name: str = MISSING


@dataclass
class HuberParams(LossParams):
    delta: float = 1.0  # where the loss turns from quadratic to linear


@dataclass
class GceParams(LossParams):
    q: float = 0.7  # q → 0 is cross-entropy, q = 1 is MAE (Zhang & Sabuncu 2018)


@dataclass
class SceParams(LossParams):
    alpha: float = 0.1  # weight of cross-entropy (Wang et al. 2019's CIFAR-10 values)
    beta: float = 1.0  # weight of reverse cross-entropy


@dataclass
class FocalParams(LossParams):
    gamma: float = 2.0  # down-weights well-classified rows; 0 is cross-entropy


@dataclass
class CategoricalFocalParams(FocalParams):
    alpha: float = 0.25  # Keras's default weight of every class


@dataclass
class CustomParams(LossParams):
    """A loss function of the user's own, with the contract a registry entry would state."""

    function: str = MISSING  # MODULE:NAME, importable from the working directory
    task: str = MISSING  # regression, binary or multiclass
    targets: str = MISSING  # float, zero_one, plus_minus_one, one_hot or integer
    activation: str | None = None  # None: the usual head for the targets


@dataclass(frozen=True)
class LossSpec:
    """One loss's contract.

    ``builder`` is the ``MODULE:NAME`` of the Keras loss class, called with the loss's parameters
    (``schema``'s fields but ``name``), each within its ``bounds``. ``activations`` lists the
    output activations that fit the loss; the first is the default. ``metrics`` are task metrics
    by name; :mod:`losslab.metrics` builds the implementation that is correct for ``encoding``
    (e.g. ``accuracy`` on {-1,+1} targets is sign agreement). A ``margin`` loss scores y·f(x),
    so its diagnostics are margins rather than calibration.
    """

    name: str
    builder: str
    task: Task
    encoding: Encoding
    activations: tuple[str, ...]
    metrics: tuple[str, ...]
    description: str
    schema: type[LossParams] = LossParams
    bounds: dict[str, Interval] = field(default_factory=dict)
    margin: bool = False

    @property
    def default_activation(self) -> str:
        return self.activations[0]

    @property
    def parameters(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.schema) if f.name != "name")

    @property
    def label_threshold(self) -> float | None:
        """Where a one-unit output splits the classes; None: the largest of k outputs wins."""
        if self.encoding in (Encoding.ONE_HOT, Encoding.INTEGER):
            return None
        return 0.0 if self.encoding is Encoding.PLUS_MINUS_ONE else 0.5

    def accepts(self, data_task: Task) -> bool:
        """Multiclass losses also fit two classes (a 2-unit softmax); the others need their task."""
        if self.task is Task.MULTICLASS:
            return data_task in (Task.BINARY, Task.MULTICLASS)
        return self.task is data_task

    def units(self, n_classes: int) -> int:
        return n_classes if self.encoding in (Encoding.ONE_HOT, Encoding.INTEGER) else 1

    def probabilistic(self, activation: str | None) -> bool:
        """Whether the head (``activation``, or the default) outputs probabilities to calibrate."""
        return not self.margin and (activation or self.default_activation) in (
            PROBABILISTIC_ACTIVATIONS
        )


METRIC_GOALS = {"accuracy": "max", "mse": "min"}  # which way is better, for reports
CUSTOM = "custom"

_REGRESSION = dict(task=Task.REGRESSION, encoding=Encoding.FLOAT, metrics=("mse",))
_SIGMOID = dict(
    task=Task.BINARY, encoding=Encoding.ZERO_ONE, activations=("sigmoid",), metrics=("accuracy",)
)
_BINARY_MARGIN = dict(
    task=Task.BINARY,
    encoding=Encoding.PLUS_MINUS_ONE,
    activations=("tanh", "linear"),
    metrics=("accuracy",),
    margin=True,
)
_MULTICLASS = dict(
    task=Task.MULTICLASS, encoding=Encoding.ONE_HOT, activations=("softmax",), metrics=("accuracy",)
)

LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "mse",
            "keras.losses:MeanSquaredError",
            activations=("linear",),
            description="mean squared error; the default for regression",
            **_REGRESSION,
        ),
        LossSpec(
            "msle",
            "keras.losses:MeanSquaredLogarithmicError",
            activations=("linear", "softplus", "relu"),
            description="squared error of log(1+y); relative errors on positive targets",
            **_REGRESSION,
        ),
        LossSpec(
            "mae",
            "keras.losses:MeanAbsoluteError",
            activations=("linear",),
            description="mean absolute error; robust to outliers",
            **_REGRESSION,
        ),
        LossSpec(
            "huber",
            "keras.losses:Huber",
            activations=("linear",),
            description="quadratic within delta of the target, linear beyond",
            schema=HuberParams,
            bounds={"delta": POSITIVE},
            **_REGRESSION,
        ),
        LossSpec(
            "log_cosh",
            "keras.losses:LogCosh",
            activations=("linear",),
            description="log(cosh(error)); smooth like MSE near zero, like MAE far away",
            **_REGRESSION,
        ),
        LossSpec(
            "bce",
            "keras.losses:BinaryCrossentropy",
            description="binary cross-entropy on a sigmoid probability",
            **_SIGMOID,
        ),
        LossSpec(
            "focal",
            "keras.losses:BinaryFocalCrossentropy",
            description="binary cross-entropy scaled by (1-p)^gamma; for imbalanced classes",
            schema=FocalParams,
            bounds={"gamma": NON_NEGATIVE},
            **_SIGMOID,
        ),
        LossSpec(
            "hinge",
            "keras.losses:Hinge",
            description="max(0, 1 - y*f); margin loss on {-1,+1} targets",
            **_BINARY_MARGIN,
        ),
        LossSpec(
            "squared_hinge",
            "keras.losses:SquaredHinge",
            description="max(0, 1 - y*f)^2; smoother hinge on {-1,+1} targets",
            **_BINARY_MARGIN,
        ),
        LossSpec(
            "cce",
            "keras.losses:CategoricalCrossentropy",
            description="categorical cross-entropy on one-hot targets",
            **_MULTICLASS,
        ),
        LossSpec(
            "sparse_cce",
            "keras.losses:SparseCategoricalCrossentropy",
            task=Task.MULTICLASS,
            encoding=Encoding.INTEGER,
            activations=("softmax",),
            metrics=("accuracy",),
            description="categorical cross-entropy on integer class labels",
        ),
        LossSpec(
            "kld",
            "keras.losses:KLDivergence",
            description="Kullback-Leibler divergence between one-hot targets and the softmax",
            **_MULTICLASS,
        ),
        LossSpec(
            "categorical_hinge",
            "keras.losses:CategoricalHinge",
            task=Task.MULTICLASS,
            encoding=Encoding.ONE_HOT,
            activations=("softmax", "linear"),
            metrics=("accuracy",),
            description="multiclass margin loss on one-hot targets",
            margin=True,
        ),
        LossSpec(
            "categorical_focal",
            "keras.losses:CategoricalFocalCrossentropy",
            description="categorical cross-entropy scaled by alpha*(1-p)^gamma",
            schema=CategoricalFocalParams,
            bounds={"gamma": NON_NEGATIVE, "alpha": POSITIVE},
            **_MULTICLASS,
        ),
        LossSpec(
            "softmax_mae",
            "losslab.noise_robust:SoftmaxMAE",
            description="sum |y - p| over the classes, 2(1 - p_y); robust to symmetric label noise",
            **_MULTICLASS,
        ),
        LossSpec(
            "gce",
            "losslab.noise_robust:GeneralizedCrossEntropy",
            description="(1 - p_y^q)/q: between cross-entropy (q→0) and MAE (q=1)",
            schema=GceParams,
            bounds={"q": Interval(0, 1, open_low=True)},
            **_MULTICLASS,
        ),
        LossSpec(
            "sce",
            "losslab.noise_robust:SymmetricCrossEntropy",
            description="alpha·cross-entropy + beta·reverse cross-entropy",
            schema=SceParams,
            bounds={"alpha": NON_NEGATIVE, "beta": NON_NEGATIVE},
            **_MULTICLASS,
        ),
    )
}
SCHEMAS: dict[str, type[LossParams]] = {
    **{name: spec.schema for name, spec in LOSSES.items()},
    CUSTOM: CustomParams,
}


def get(name: str) -> LossSpec:
    """The spec of a registered loss; a KeyError names the known losses."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss '{name}'; known losses: {', '.join(LOSSES)}") from None


def of(params: Mapping[str, Any]) -> LossSpec:
    """The spec of a validated loss config: the registry's entry, or the contract a custom
    loss's config states."""
    if params["name"] != CUSTOM:
        return get(params["name"])
    encoding = Encoding(params["targets"])
    task = Task(params["task"])
    return LossSpec(
        CUSTOM,
        params["function"],
        task=task,
        encoding=encoding,
        activations=(params.get("activation") or encoding.usual_activation,),
        metrics=("mse",) if task is Task.REGRESSION else ("accuracy",),
        description=f"the user's {params['function']}",
        schema=CustomParams,
        margin=encoding is Encoding.PLUS_MINUS_ONE,
    )


def from_params(params: Mapping[str, str]) -> LossSpec:
    """The spec of a run from its flattened MLflow params (``loss.name``, ``loss.task``, ...),
    which MLflow keeps as strings: a null logged as ``None``."""
    loss = {key[5:]: value for key, value in params.items() if key.startswith("loss.")}
    return of({key: None if value == "None" else value for key, value in loss.items()})


def import_function(reference: str) -> Callable:
    """The callable ``MODULE:NAME`` names, the working directory importable as a user expects;
    a ValueError says what was given and what is allowed."""
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise ValueError(f"'{reference}' is not MODULE:NAME, e.g. my_losses:my_hinge")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"module '{module_name}' cannot be imported ({error}); put {module_name}.py in "
            f"{os.getcwd()} or on PYTHONPATH"
        ) from None
    found = getattr(module, name, None)
    if not callable(found):
        defined = sorted(
            k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
        )
        what = "not defined" if found is None else f"of type {type(found).__name__}, not callable"
        raise ValueError(
            f"'{name}' in module '{module_name}' is {what}; "
            f"callables there: {', '.join(defined) or 'none'}"
        )
    return found


def source_file(params: Mapping[str, Any]) -> str | None:
    """The file a custom loss was read from, to log with the run; None for registered losses."""
    if params["name"] != CUSTOM:
        return None
    import_function(params["function"])
    return getattr(sys.modules[params["function"].partition(":")[0]], "__file__", None)


def build(params: Mapping[str, Any], **options: Any) -> Callable:
    """The Keras loss for a validated loss config (imports Keras, or a custom loss's module):
    a custom loss's function as it is, which ``compile`` accepts; a registered loss's class
    with the config's parameters (the schema's defaults for those left out) and ``options``
    for Keras's ``Loss`` (e.g. ``reduction=None`` for one value per row)."""
    spec = of(params)
    if spec.name == CUSTOM:
        return import_function(params["function"])
    defaults = spec.schema(name=spec.name)
    arguments = {key: params.get(key, getattr(defaults, key)) for key in spec.parameters}
    return import_function(spec.builder)(**arguments, **options)


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
    if spec.label_threshold is None:
        return outputs.argmax(axis=1)
    return (outputs.reshape(-1) > spec.label_threshold).astype("int64")
