"""Training and evaluation of one configured model on one dataset.

Data is fed through tf.data pipelines built once (cached, reshuffled every epoch with the run's
seed) and each epoch runs as one compiled execution: the same batches, epochs, optimizer and
per-epoch validation as a plain ``model.fit`` on NumPy arrays, without Keras rebuilding its data
adapter every epoch.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from losslab import losses
from losslab.config import Validation
from losslab.datasets import Dataset
from losslab.metrics import build_metrics
from losslab.models import build_model
from losslab.optimizers import build_optimizer
from losslab.storage import StageInputError

tf.get_logger().setLevel("ERROR")  # retracing notes when one process trains several models


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message says when and what to change."""


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and Keras and make TensorFlow ops deterministic."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle_seed: int | None) -> Any:
    data = tf.data.Dataset.from_tensor_slices((x, y)).cache()
    if shuffle_seed is not None:
        data = data.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def training_arrays(cfg: Any, data: Dataset) -> tuple[tuple, tuple]:
    """(x, y) to fit on and (x, y) to validate on, as the trainer config says, targets encoded."""
    spec = losses.get(cfg.loss.name)
    x, y = data.x_train, losses.encode_targets(spec, data.y_train, data.n_classes)
    if cfg.trainer.validation == Validation.test:
        return (x, y), (data.x_test, losses.encode_targets(spec, data.y_test, data.n_classes))
    split_at = int(math.floor(len(x) * (1.0 - cfg.trainer.validation_split)))
    return (x[:split_at], y[:split_at]), (x[split_at:], y[split_at:])


def compile_model(cfg: Any, data: Dataset, steps_per_execution: int = 1) -> keras.Model:
    spec = losses.get(cfg.loss.name)
    model = build_model(cfg.model, data.n_features, spec, data.n_classes)
    model.compile(
        optimizer=build_optimizer(cfg.optimizer),
        loss=spec.keras_name,
        metrics=build_metrics(spec),
        steps_per_execution=steps_per_execution,
    )
    return model


def fit(cfg: Any, data: Dataset, callbacks: list[keras.callbacks.Callback] = ()) -> TrainResult:
    """Train the configured model; raise TrainingDiverged if the loss stops being finite."""
    seed_everything(cfg.seed)
    (x, y), (x_val, y_val) = training_arrays(cfg, data)
    batch_size = cfg.trainer.batch_size
    steps_per_epoch = math.ceil(len(x) / batch_size)
    model = compile_model(cfg, data, steps_per_execution=steps_per_epoch)
    history = model.fit(
        _pipeline(x, y, batch_size, shuffle_seed=cfg.seed),
        validation_data=_pipeline(x_val, y_val, batch_size, shuffle_seed=None),
        epochs=cfg.trainer.epochs,
        shuffle=False,  # the pipeline reshuffles every epoch with the run's seed
        verbose=cfg.trainer.verbose,
        callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks],
    ).history
    history = {key: [float(v) for v in values] for key, values in history.items()}
    losses_seen = history.get("loss", [])
    if not losses_seen or not np.isfinite(losses_seen[-1]):
        raise TrainingDiverged(
            f"loss became non-finite at epoch {len(losses_seen)} of {cfg.trainer.epochs}; "
            f"lower optimizer.learning_rate (now {cfg.optimizer.learning_rate})"
        )
    return TrainResult(model, history)


def evaluate(cfg: Any, model: keras.Model, data: Dataset) -> dict[str, dict[str, float]]:
    """Loss and metrics on the training and test splits."""
    spec = losses.get(cfg.loss.name)
    results = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        encoded = losses.encode_targets(spec, y, data.n_classes)
        scores = model.evaluate(
            _pipeline(x, encoded, cfg.trainer.batch_size, shuffle_seed=None),
            verbose=0,
            return_dict=True,
        )
        results[split] = {name: float(value) for name, value in scores.items()}
    return results


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a saved ``.keras`` model in Keras's safe mode."""
    if not os.path.exists(path):
        raise StageInputError(f"{path}: missing; run the train stage first")
    if not zipfile.is_zipfile(path):
        raise StageInputError(f"{path}: not a Keras model archive; rerun train")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a file that is not a model
        raise StageInputError(
            f"{path}: not a loadable Keras model ({error}); rerun train"
        ) from None
