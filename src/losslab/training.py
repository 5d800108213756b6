"""Training and evaluation of one configured model on one dataset.

Keras's ``fit`` pays a fixed cost per epoch (a new data iterator, a separate validation pass,
logs converted to Python) that dwarfs a small model's arithmetic. Here whole groups of epochs run
as one compiled graph of Keras's ``train_step`` (written out, to see the gradients) and its own
``test_step``: the same batches, per-epoch reshuffling, optimizer, loss tracking and per-epoch
validation metrics as ``model.fit(x, y, validation_data=..., shuffle=True)``, plus the gradient's
norm and, on noisy labels, how many of them the model fits, handed to Keras callbacks epoch by
epoch.

The graph is traced once per kind of model (architecture, loss, optimizer settings, batch size)
in a process, its data and seed being arguments: a sweep worker's later jobs of a kind copy their
fresh model's initial state into the traced one instead of tracing it again.
"""

from __future__ import annotations

import atexit
import gc
import json
import math
import os
import random
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

# One thread for TensorFlow's op pools unless the user sets them: a small model's ops are too
# short to share out, and handing them between threads doubled the CPU time of the reference
# runs (benchmarks/speed.py); a sweep gets its parallelism from one worker process per core.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from losslab import losses  # noqa: E402
from losslab.cli import raise_if_terminated  # noqa: E402
from losslab.config import ConfigError, Validation, as_plain  # noqa: E402
from losslab.datasets import Dataset  # noqa: E402
from losslab.losses import Task  # noqa: E402
from losslab.metrics import build_metrics  # noqa: E402
from losslab.models import build_model  # noqa: E402
from losslab.optimizers import build_optimizer  # noqa: E402
from losslab.progress import EpochProgress  # noqa: E402
from losslab.storage import StageInputError  # noqa: E402

tf.get_logger().setLevel("ERROR")  # retracing notes when one process trains several models

# A process that trains holds millions of Python objects (TensorFlow, Keras, MLflow); the
# interpreter's last garbage collection over them took 1.2 to 2.2 s of every such process's exit
# (each DVC stage, each sweep worker, each run), only to free memory the operating system frees
# anyway. Frozen objects are left out of it; exit handlers still run as before.
atexit.register(gc.freeze)

EPOCHS_PER_CALL = 10
"""Epochs per compiled call: callbacks, the progress line and ``model.stop_training`` act at
this granularity, and a call costs about a millisecond."""


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the message says when and what to change."""


@dataclass
class TrainResult:
    model: keras.Model
    history: dict[str, list[float]]


def seed_everything(seed: int) -> None:
    """Seed Python (Keras's initializers draw their seeds from it) and NumPy, and make
    TensorFlow's ops deterministic. Not TensorFlow's global seed, which no op here uses (each
    epoch's shuffle has its own seed): setting it empties TensorFlow's cache of instantiated
    functions, which each job in a sweep worker then paid again, 0.2 to 0.4 s."""
    random.seed(seed)
    np.random.seed(seed)
    tf.config.experimental.enable_op_determinism()


def training_arrays(cfg: Any, data: Dataset) -> tuple[tuple, tuple]:
    """(x, y) to fit on and (x, y) to validate on, as the trainer config says, targets encoded."""
    spec = losses.of(cfg.loss)
    x, y = data.x_train, losses.encode_targets(spec, data.y_train, data.n_classes)
    if cfg.trainer.validation == Validation.test:
        return (x, y), (data.x_test, losses.encode_targets(spec, data.y_test, data.n_classes))
    split_at = int(math.floor(len(x) * (1.0 - cfg.trainer.validation_split)))
    return (x[:split_at], y[:split_at]), (x[split_at:], y[split_at:])


def compile_model(cfg: Any, data: Dataset, model: keras.Model | None = None) -> keras.Model:
    """A new model (or ``model``, e.g. one loaded from a file) compiled with the configured
    loss, optimizer and the metrics correct for the loss's targets."""
    spec = losses.of(cfg.loss)
    model = model or build_model(cfg.model, data.n_features, spec, data.n_classes)
    model.compile(
        optimizer=build_optimizer(cfg.optimizer),
        loss=losses.build(cfg.loss),
        metrics=build_metrics(spec),
    )
    return model


def _in_batches(step: Any, x: tf.Tensor, y: tf.Tensor, batch_size: int) -> None:
    """Run ``step`` on consecutive batches, the last one possibly short, as ``fit`` does."""
    rows = int(x.shape[0])

    def one_batch(i: tf.Tensor) -> tuple[tf.Tensor]:
        end = tf.minimum((i + 1) * batch_size, rows)
        step((x[i * batch_size : end], y[i * batch_size : end]))
        return (i + 1,)

    tf.while_loop(lambda i: i < math.ceil(rows / batch_size), one_batch, (tf.constant(0),))


@dataclass(frozen=True)
class LabelFit:
    """The training rows' stored labels and which of them were flipped: each epoch then logs
    ``noisy_fit``, the share of flipped rows predicted as their (wrong) label, and ``clean_fit``,
    the share of the others predicted as theirs, by the registry's label decision. Memorizing
    the noise shows as a rising ``noisy_fit``."""

    labels: np.ndarray
    noisy: np.ndarray

    NAMES = ("noisy_fit", "clean_fit")


def _label_fit(data: Dataset, rows: int) -> LabelFit | None:
    noisy = data.corrupted[:rows]
    if data.task is Task.REGRESSION or not noisy.any():
        return None
    return LabelFit(data.y_train[:rows].astype("int64"), noisy)


def _train_step(model: keras.Model, grad_norm: keras.metrics.Mean) -> Any:
    """Keras's own ``train_step`` (forward pass, ``compute_loss``, the optimizer, the loss
    tracker weighted by batch size, the compiled metrics) written out to see the gradients: it
    also averages their global L2 norm into ``grad_norm``."""
    loss_tracker = next(metric for metric in model.metrics if metric.name == "loss")

    def step(batch: tuple[tf.Tensor, tf.Tensor]) -> None:
        x, y = batch
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, training=True)
        gradients = tape.gradient(loss, model.trainable_weights)
        model.optimizer.apply(gradients, model.trainable_weights)
        loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        model.compute_metrics(x, y, y_pred)
        grad_norm.update_state(tf.linalg.global_norm(gradients))

    return step


def _fit_shares(
    model: keras.Model, x: tf.Tensor, labels: tf.Tensor, noisy: tf.Tensor, threshold: float | None
) -> list[tf.Tensor]:
    outputs = model(x, training=False)
    if threshold is None:
        predicted = tf.argmax(outputs, axis=1)
    else:
        predicted = tf.cast(tf.reshape(outputs, [-1]) > threshold, tf.int64)
    hits = tf.cast(tf.equal(predicted, labels), tf.float32)
    return [
        tf.reduce_mean(tf.boolean_mask(hits, noisy)),
        tf.reduce_mean(tf.boolean_mask(hits, tf.logical_not(noisy))),
    ]


@dataclass
class _Trainer:
    """A compiled model of one kind and its traced epochs: ``run(x, y, x_val, y_val, labels,
    noisy, seed, first, count)`` trains epochs ``first .. first+count-1`` on it and returns one
    row of logs per epoch (fewer if the loss stops being finite: training ends with that epoch),
    named by ``names``: the training loss and metrics, ``grad_norm``, the label-fit shares if the
    kind has them, then the validation loss and metrics."""

    model: keras.Model
    names: list[str]
    run: Any


TRAINERS_KEPT = 4
"""Traced trainers a process keeps, the least recently used dropped first: a study's worker
meets several kinds of model in turn, and each holds a graph of a few megabytes."""

_TRAINERS: OrderedDict[str, _Trainer] = OrderedDict()


def _trainer_key(cfg: Any, data: Dataset, label_fit: LabelFit | None) -> str:
    """What a trainer's graph depends on: not the learning rate (an optimizer variable that
    :func:`_load_state` sets), the seed or the data (arguments of the traced function)."""
    optimizer = {k: v for k, v in as_plain(cfg.optimizer).items() if k != "learning_rate"}
    kind = [as_plain(cfg.model), as_plain(cfg.loss), optimizer, cfg.trainer.batch_size]
    return json.dumps([*kind, data.n_features, data.n_classes, label_fit is not None])


def _trainer(cfg: Any, data: Dataset, label_fit: LabelFit | None) -> _Trainer:
    """This process's trainer of the configured kind, traced on first use."""
    key = _trainer_key(cfg, data, label_fit)
    if key not in _TRAINERS:
        _TRAINERS[key] = _new_trainer(cfg, data, label_fit)
        while len(_TRAINERS) > TRAINERS_KEPT:
            _TRAINERS.popitem(last=False)
    _TRAINERS.move_to_end(key)
    return _TRAINERS[key]


def _load_state(source: keras.Model, target: keras.Model) -> None:
    """Weights and optimizer variables (step count, learning rate, moments) from one compiled
    model into another of the same kind."""
    target.set_weights(source.get_weights())
    for value, variable in zip(source.optimizer.variables, target.optimizer.variables, strict=True):
        variable.assign(value)


def _new_trainer(cfg: Any, data: Dataset, label_fit: LabelFit | None) -> _Trainer:
    """Each epoch reshuffles the training rows by a permutation drawn from (seed, epoch), so a run
    is reproducible and the order does not depend on how epochs are grouped into calls. The
    validation rows are scored in one batch: the same sums as batch by batch, in fewer steps."""
    model = compile_model(cfg, data)
    model.optimizer.build(model.trainable_variables)
    batch_size, threshold = cfg.trainer.batch_size, losses.of(cfg.loss).label_threshold
    (x, y), _ = training_arrays(cfg, data)
    names = list(model.test_step((x[:1], y[:1])))  # builds the metrics
    model.reset_metrics()
    grad_norm = keras.metrics.Mean(name="grad_norm")
    train_step = _train_step(model, grad_norm)

    def results() -> list[tf.Tensor]:
        logs = model.get_metrics_result()
        return [tf.cast(logs[name], tf.float32) for name in names]

    # no AutoGraph: the loops are explicit ``tf.while_loop``s, and converting Keras's steps cost
    # a third of each run's tracing
    @tf.function(autograph=False)
    def run(x, y, x_val, y_val, labels, noisy, seed, first, count):  # noqa: ANN001, ANN202
        def epoch(e: tf.Tensor, finite: tf.Tensor, rows: tf.TensorArray) -> tuple:
            shuffle = tf.random.stateless_uniform(tf.shape(x)[:1], seed=tf.stack([seed, e]))
            order = tf.argsort(shuffle)
            model.reset_metrics()
            grad_norm.reset_state()
            _in_batches(train_step, tf.gather(x, order), tf.gather(y, order), batch_size)
            trained = [*results(), grad_norm.result()]
            with tf.control_dependencies(trained):
                if label_fit is not None:
                    trained += _fit_shares(model, x, labels, noisy, threshold)
            model.reset_metrics()
            with tf.control_dependencies(trained):
                model.test_step((x_val, y_val))
            row = tf.stack(trained + results())
            return e + 1, tf.math.is_finite(trained[0]), rows.write(e - first, row)

        _, _, rows = tf.while_loop(
            lambda e, finite, rows: tf.logical_and(e < first + count, finite),
            epoch,
            (first, tf.constant(True), tf.TensorArray(tf.float32, size=0, dynamic_size=True)),
        )
        return rows.stack()

    extra = ["grad_norm", *(LabelFit.NAMES if label_fit is not None else ())]
    return _Trainer(model, names + extra + [f"val_{name}" for name in names], run)


def fit(cfg: Any, data: Dataset, callbacks: list[keras.callbacks.Callback] = ()) -> TrainResult:
    """Train the configured model; raise TrainingDiverged if the loss stops being finite."""
    progress = EpochProgress(cfg.trainer.epochs, cfg.trainer.verbose, per_call=EPOCHS_PER_CALL)
    try:
        return _fit(cfg, data, [*callbacks, progress] if cfg.trainer.verbose else callbacks)
    finally:
        progress.close()


def _check_custom_loss(cfg: Any, model: keras.Model, train: tuple) -> None:
    """Call a custom loss once, eagerly, on two training rows: a function that cannot take the
    targets and outputs its contract gives is the user's input to fix, said in one line, not a
    traceback from inside the compiled loop."""
    x, y = train[0][:2], train[1][:2]
    try:
        model.compute_loss(x, y, model(x))
    except Exception as error:  # the user's code may raise anything
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ConfigError(
            f"loss.function: {cfg.loss.function} failed on {cfg.loss.targets} targets of shape "
            f"{tuple(y.shape)} and outputs of shape {tuple(model(x).shape)}: "
            f"{type(error).__name__}: {detail}"
        ) from None


def _fit(cfg: Any, data: Dataset, callbacks: list[keras.callbacks.Callback]) -> TrainResult:
    """Train a fresh model's initial state on this process's trainer of its kind (traced once
    per kind, so a sweep worker's later jobs of a kind skip tracing); callbacks see the trainer's
    model while it trains, and the fresh model gets the trained state at the end."""
    seed_everything(cfg.seed)
    train, validation = training_arrays(cfg, data)
    batch_size, epochs = cfg.trainer.batch_size, cfg.trainer.epochs
    model = compile_model(cfg, data)
    model.optimizer.build(model.trainable_variables)
    if cfg.loss.name == losses.CUSTOM:
        _check_custom_loss(cfg, model, train)
    label_fit = _label_fit(data, len(train[0]))
    trainer = _trainer(cfg, data, label_fit)
    _load_state(model, trainer.model)
    fit_arrays = (
        (label_fit.labels, label_fit.noisy)
        if label_fit is not None
        else (np.zeros(0, "int64"), np.zeros(0, bool))
    )
    arrays = [tf.constant(a) for a in (*train, *validation, *fit_arrays)]
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        [history, *callbacks],
        model=trainer.model,
        verbose=cfg.trainer.verbose,
        epochs=epochs,
        steps=math.ceil(len(train[0]) / batch_size),
    )
    callback_list.on_train_begin()
    trainer.model.stop_training, epoch, logs = False, 0, {}
    while epoch < epochs and not trainer.model.stop_training:
        count = min(EPOCHS_PER_CALL, epochs - epoch)
        rows = trainer.run(*arrays, tf.constant(cfg.seed), tf.constant(epoch), tf.constant(count))
        for row in rows.numpy():
            callback_list.on_epoch_begin(epoch)
            logs = dict(zip(trainer.names, row.tolist(), strict=True))
            callback_list.on_epoch_end(epoch, logs)
            raise_if_terminated()  # Keras's callbacks swallow what the SIGTERM handler raises
            epoch += 1
        if not np.isfinite(logs["loss"]):
            raise TrainingDiverged(
                f"loss became non-finite at epoch {epoch} of {epochs}; "
                f"lower optimizer.learning_rate (now {cfg.optimizer.learning_rate})"
            )
    callback_list.on_train_end(logs)
    _load_state(trainer.model, model)
    return TrainResult(model, {key: list(values) for key, values in history.history.items()})


def evaluate(cfg: Any, model: keras.Model, data: Dataset) -> dict[str, dict[str, float]]:
    """Loss and metrics on the training and test splits."""
    spec = losses.of(cfg.loss)
    results = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        encoded = losses.encode_targets(spec, y, data.n_classes)
        batches = tf.data.Dataset.from_tensor_slices((x, encoded)).batch(cfg.trainer.batch_size)
        scores = model.evaluate(batches, verbose=0, return_dict=True)
        results[split] = {name: float(value) for name, value in scores.items()}
    return results


def predict(model: keras.Model, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """The model's outputs for ``x``, called in batches. Not ``model.predict``: under op
    determinism its ``tf.data`` pipeline makes TensorFlow log a harmless ``E0000`` line."""
    batches = [model(x[i : i + batch_size], training=False) for i in range(0, len(x), batch_size)]
    return np.concatenate([keras.ops.convert_to_numpy(b) for b in batches])


def layers_only(model: keras.Model) -> keras.Model:
    """The model's layers and weights, never compiled: what is saved and logged. It predicts
    the same and loads anywhere, without losslab's metrics or a custom loss's module."""
    plain = type(model).from_config(model.get_config())
    plain.set_weights(model.get_weights())
    return plain


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a saved ``.keras`` model (layers and weights) in Keras's safe mode."""
    if not os.path.exists(path):
        raise StageInputError(f"{path}: missing; run the train stage first")
    if not zipfile.is_zipfile(path):
        raise StageInputError(f"{path}: not a Keras model archive; rerun train")
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a file that is not a model
        raise StageInputError(
            f"{path}: not a loadable Keras model ({error}); rerun train"
        ) from None
