"""The experiment's config schema and its validation.

Hydra composes ``conf/`` for the ``losslab`` app and DVC writes the same composition to
``params.yaml`` for the stages; both paths go through :func:`validate`, so every config error is
found in one place, before any data is made, and reported as a :class:`ConfigError` that names
what is wrong and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from losslab import losses
from losslab.datasets import GENERATORS
from losslab.losses import CUSTOM, LOSSES, SCHEMAS, TASK_ENCODINGS, Encoding, Task
from losslab.optimizers import OPTIMIZERS
from losslab.ranges import FRACTION, Interval

HIDDEN_ACTIVATIONS = (
    "relu",
    "tanh",
    "sigmoid",
    "elu",
    "selu",
    "gelu",
    "silu",
    "softplus",
    "linear",
)
OUTPUT_ACTIVATIONS = ("linear", "sigmoid", "tanh", "softmax", "softplus", "relu")
INITIALIZERS = (
    "he_uniform",
    "he_normal",
    "glorot_uniform",
    "glorot_normal",
    "lecun_uniform",
    "lecun_normal",
    "random_normal",
    "random_uniform",
    "orthogonal",
)


class ConfigError(ValueError):
    """A config the user wrote that cannot run; the message says what is allowed."""


class Validation(Enum):
    """Where per-epoch validation data comes from."""

    test = "test"  # the test split, as the reference studies pass validation_data
    split = "split"  # the last fraction of the training split, as Keras's validation_split


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [50])
    activation: str = "relu"
    kernel_initializer: str = "he_uniform"
    output_activation: str | None = None  # None: the loss registry decides


@dataclass
class TrainerConfig:
    epochs: int = 100
    batch_size: int = 32
    validation: Validation = Validation.test
    validation_split: float = 0.2
    verbose: int = 1


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite at the repo root
    experiment: str = "losslab"
    enabled: bool = True  # false: outputs only, no MLflow run (e.g. to measure what logging costs)


@dataclass
class Config:
    seed: int = 0
    preset: str | None = None
    dataset: Any = None
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: Any = None
    optimizer: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    optimized_metric: str | None = None  # what a sweeper optimizes, e.g. validation.loss


def _merge(schema: Any, node: Any, where: str) -> DictConfig:
    """Merge ``node`` onto a structured schema, turning OmegaConf errors into ConfigErrors."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as error:
        key = f"{where}.{error.full_key}" if where and error.full_key else error.full_key or where
        message = str(error.msg).splitlines()[0] if error.msg else type(error).__name__
        if "is not a ListConfig" in message:
            value = OmegaConf.select(OmegaConf.create(node), str(error.full_key), default=None)
            message = f"expected a list such as [50], got {value!r}"
        elif "not in" in message:
            parent = str(error.full_key).rpartition(".")[0]
            node = OmegaConf.structured(schema)
            node = OmegaConf.select(node, parent) if parent else node
            message = f"unknown key; allowed keys: {', '.join(node.keys())}"
        raise ConfigError(f"{key}: {message}") from None


def _pick(registry: dict[str, Any], node: Any, key: str, group: str) -> Any:
    name = node.get(key) if isinstance(node, DictConfig | dict) else None
    if name not in registry:
        raise ConfigError(
            f"{group}.{key}: '{name}' is not known; choose one of: {', '.join(registry)}"
        )
    return registry[name]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(raw: DictConfig | dict) -> DictConfig:
    """Return the typed, checked config, or raise ConfigError naming the problem."""
    raw = OmegaConf.create(raw) if isinstance(raw, dict) else raw
    if "hydra" in raw:
        raw = OmegaConf.masked_copy(raw, [k for k in raw if k != "hydra"])
    for group in ("dataset", "loss", "optimizer"):
        _check(isinstance(raw.get(group), DictConfig), f"{group}: missing; pick a {group} config")
    generator = _pick(GENERATORS, raw.dataset, "generator", "dataset")
    loss_schema = _pick(SCHEMAS, raw.loss, "name", "loss")
    optimizer = _pick(OPTIMIZERS, raw.optimizer, "name", "optimizer")
    cfg = _merge(
        Config,
        OmegaConf.masked_copy(raw, [k for k in raw if k not in ("dataset", "loss", "optimizer")]),
        "",
    )
    cfg.dataset = _merge(generator.schema, raw.dataset, "dataset")
    cfg.loss = _merge(loss_schema, raw.loss, "loss")
    cfg.optimizer = _merge(optimizer.schema, raw.optimizer, "optimizer")
    try:
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{error.full_key}: missing a value") from None
    _check_values(cfg)
    task = GENERATORS[cfg.dataset.generator].task(cfg.dataset)
    _check_corruption(cfg.dataset, task)
    _check_loss_fits(cfg, task)
    _check_optimized_metric(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _check_values(cfg: DictConfig) -> None:
    data, trainer = cfg.dataset, cfg.trainer
    if "test_size" in data:  # real data: a random split
        _check(
            0 < data.test_size < 1, f"dataset.test_size: must be in (0, 1), got {data.test_size}"
        )
    else:  # synthetic data: the last (or first) n_test of n_samples
        _check(data.n_samples > 0, f"dataset.n_samples: must be > 0, got {data.n_samples}")
        _check(
            0 < data.n_test < data.n_samples,
            f"dataset.n_test: must be in 1..{data.n_samples - 1} (n_samples - 1), "
            f"got {data.n_test}",
        )
    _check(trainer.epochs > 0, f"trainer.epochs: must be > 0, got {trainer.epochs}")
    _check(trainer.batch_size > 0, f"trainer.batch_size: must be > 0, got {trainer.batch_size}")
    _check(
        0 < trainer.validation_split < 1,
        f"trainer.validation_split: must be in (0, 1), got {trainer.validation_split}",
    )
    _check(
        cfg.optimizer.learning_rate > 0,
        f"optimizer.learning_rate: must be > 0, got {cfg.optimizer.learning_rate}",
    )
    model = cfg.model
    _check(model.name == "mlp", f"model.name: '{model.name}' is not known; choose one of: mlp")
    _check(
        all(units > 0 for units in model.hidden),
        f"model.hidden: layer sizes must be > 0, got {list(model.hidden)}",
    )
    _check(
        model.activation in HIDDEN_ACTIVATIONS,
        f"model.activation: '{model.activation}' is not known; choose one of: "
        + ", ".join(HIDDEN_ACTIVATIONS),
    )
    _check(
        model.kernel_initializer in INITIALIZERS,
        f"model.kernel_initializer: '{model.kernel_initializer}' is not known; choose one of: "
        + ", ".join(INITIALIZERS),
    )


def _check_in(value: float, allowed: Interval, key: str, why: str = "") -> None:
    _check(value in allowed, f"{key}: must be in {allowed}{why}, got {value}")


def _check_corruption(data: DictConfig, task: Task) -> None:
    """Label noise and imbalance need classes, outliers a regression target."""
    kind = f"dataset '{data.name}' is a {task.value} task"
    _check_in(data.label_noise, FRACTION, "dataset.label_noise")
    _check_in(data.outliers, FRACTION, "dataset.outliers")
    _check_in(data.imbalance, Interval(0, 1, open_low=True), "dataset.imbalance")
    if task is Task.REGRESSION:
        _check(
            data.label_noise == 0,
            f"dataset.label_noise: flips class labels, but {kind}; use dataset.outliers",
        )
        _check(data.imbalance == 1, f"dataset.imbalance: thins out classes, but {kind}")
    else:
        _check(
            data.outliers == 0,
            f"dataset.outliers: shifts regression targets, but {kind}; use dataset.label_noise",
        )


def _check_custom_loss(loss: DictConfig) -> None:
    """A custom loss's function must import and be callable; its contract must be one the
    registry could state."""
    tasks, encodings = [t.value for t in Task], [e.value for e in Encoding]
    _check(
        loss.task in tasks,
        f"loss.task: '{loss.task}' is not known; choose one of: {', '.join(tasks)}",
    )
    _check(
        loss.targets in encodings,
        f"loss.targets: '{loss.targets}' is not known; choose one of: {', '.join(encodings)}",
    )
    fitting = [e.value for e in TASK_ENCODINGS[Task(loss.task)]]
    _check(
        loss.targets in fitting,
        f"loss.targets: '{loss.targets}' does not fit loss.task '{loss.task}'; "
        f"choose one of: {', '.join(fitting)}",
    )
    _check(
        loss.activation is None or loss.activation in OUTPUT_ACTIVATIONS,
        f"loss.activation: '{loss.activation}' is not known; choose one of: "
        f"{', '.join(OUTPUT_ACTIVATIONS)} (or null for the targets' usual head)",
    )
    try:
        losses.import_function(loss.function)
    except ValueError as error:
        raise ConfigError(f"loss.function: {error}") from None


def _check_loss_fits(cfg: DictConfig, task: Task) -> None:
    """Refuse loss parameters out of range, and loss/dataset/head combinations that cannot
    learn, naming all three."""
    if cfg.loss.name == CUSTOM:
        _check_custom_loss(cfg.loss)
    spec = losses.of(cfg.loss)
    for key, allowed in spec.bounds.items():
        _check_in(cfg.loss[key], allowed, f"loss.{key}", f" for loss '{spec.name}'")
    if not spec.accepts(task):
        fitting = [name for name, other in LOSSES.items() if other.accepts(task)]
        raise ConfigError(
            f"loss '{spec.name}' is for {spec.task.value} tasks, but dataset "
            f"'{cfg.dataset.name}' is a {task.value} task; losses for it: {', '.join(fitting)}"
        )
    forced = cfg.model.output_activation
    if forced is not None and forced not in spec.activations:
        raise ConfigError(
            f"model.output_activation: '{forced}' contradicts loss '{spec.name}' on dataset "
            f"'{cfg.dataset.name}' ({spec.encoding.notation} targets); allowed: "
            f"{', '.join(spec.activations)} (or null for {spec.default_activation})"
        )


def load_params(path: str | Path = "params.yaml") -> DictConfig:
    """Read and validate a params file as the DVC stages see it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; run from the repo root")
    try:
        raw = OmegaConf.load(path)
    except Exception as error:  # yaml's own errors carry the line and column
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config groups, got a list")
    return validate(raw)


def as_plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain Python values (enums as their values), for YAML, JSON and MLflow."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def _check_optimized_metric(cfg: DictConfig) -> None:
    if cfg.optimized_metric is None:
        return
    names = ("loss", *losses.of(cfg.loss).metrics)
    allowed = [f"{split}.{name}" for split in ("validation", "test", "train") for name in names]
    _check(
        cfg.optimized_metric in allowed,
        f"optimized_metric: '{cfg.optimized_metric}' is not reported for loss '{cfg.loss.name}'; "
        f"choose one of: {', '.join(allowed)}",
    )
