"""The four pipeline steps, each reading and writing the files of a :class:`Layout`.

The DVC stages run one step per process; the ``losslab`` app runs all four in one process; both
call these functions, so a run looks the same in MLflow whichever way it was started. Each step
logs to the active MLflow run. Heavy imports (TensorFlow, matplotlib, MLflow) happen inside the
steps that need them, so config errors and data generation do without them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from losslab import losses
from losslab.config import as_plain
from losslab.datasets import Dataset, make_dataset
from losslab.losses import Task
from losslab.storage import (
    StageInputError,
    file_md5,
    read_history_csv,
    read_json,
    read_npz,
    write_history_csv,
    write_json,
    write_keras,
    write_npz,
)


@dataclass(frozen=True)
class Layout:
    """Where a run's files live, relative to one root (the repo, or a Hydra run directory)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data" / "dataset.npz"

    @property
    def data_meta(self) -> Path:
        return self.root / "data" / "dataset.json"

    @property
    def model(self) -> Path:
        return self.root / "model" / "model.keras"

    @property
    def history(self) -> Path:
        return self.root / "model" / "history.csv"

    @property
    def train(self) -> Path:
        return self.root / "model" / "train.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"


def generate(cfg: DictConfig, layout: Layout) -> Dataset:
    """Make the dataset and write the arrays plus metadata: the content hash, the original label
    of each class index and the scale of standardized regression targets."""
    data = make_dataset(cfg.dataset)
    meta = {
        "name": cfg.dataset.name,
        "task": data.task.value,
        "n_classes": data.n_classes,
        "n_features": data.n_features,
        "n_train": len(data.x_train),
        "n_test": len(data.x_test),
        "sha256": data.content_hash(),
        "classes": data.classes,
        "target_scale": data.target_scale,
        "params": as_plain(cfg.dataset),
    }
    write_npz(layout.data, data.arrays())
    write_json(layout.data_meta, meta)
    return data


def load_dataset(layout: Layout) -> tuple[Dataset, dict[str, Any]]:
    """Read the generated dataset, refusing one whose content does not match its metadata."""
    meta = read_json(layout.data_meta)
    arrays = read_npz(layout.data, ("x_train", "y_train", "x_test", "y_test"))
    try:
        data = Dataset(
            **arrays,
            task=Task(meta["task"]),
            classes=list(meta["classes"]),
            target_scale=meta["target_scale"],
        )
        expected = meta["sha256"]
    except (KeyError, ValueError, TypeError) as error:
        raise StageInputError(
            f"{layout.data_meta}: incomplete metadata ({error}); rerun generate"
        ) from None
    if data.content_hash() != expected:
        raise StageInputError(
            f"{layout.data}: content does not match the hash in {layout.data_meta}; rerun generate"
        )
    return data, meta


def train(cfg: DictConfig, layout: Layout) -> Any:
    """Train, write the model, its per-epoch history and the training time, log them to the
    active run (if any) with the model file's hash, and return the trained model."""
    data, meta = load_dataset(layout)  # before importing TensorFlow: a bad input fails at once
    import keras

    from losslab import tracking, training

    tracking.log_dataset(meta, layout.data, data.x_train, data.y_train)
    epochs = tracking.epoch_metrics()
    callbacks = []
    if epochs is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: epochs.add(e + 1, logs))
        )
    started = time.perf_counter()
    try:
        result = training.fit(cfg, data, callbacks=callbacks)
    finally:
        if epochs is not None:
            epochs.flush()
    timing = {"train_seconds": time.perf_counter() - started}
    tracking.log_metrics(timing)
    write_keras(result.model, layout.model)
    write_history_csv(layout.history, result.history)
    write_json(layout.train, timing)
    tracking.tag_model(file_md5(layout.model))
    tracking.log_artifact(layout.history, "history")
    tracking.log_artifact(layout.data_meta, "data")
    tracking.log_model(result.model, data.x_test)
    return result.model


def evaluate(cfg: DictConfig, layout: Layout, model: Any = None) -> dict[str, dict[str, float]]:
    """Score the model (by default the saved one) on both splits; write and log the results.

    Standardized regression targets also get ``mse_original`` and ``mae_original``: the errors in
    the data's own units, which a reader can judge.
    """
    from losslab import tracking, training

    data, _ = load_dataset(layout)
    model = model or training.load_model(layout.model)
    results = training.evaluate(cfg, model, data)
    if data.target_scale is not None:
        for split, x, y in (
            ("train", data.x_train, data.y_train),
            ("test", data.x_test, data.y_test),
        ):
            predicted = training.predict(model, x).reshape(-1)
            error = (data.original_units(predicted) - data.original_units(y)).astype("float64")
            results[split]["mse_original"] = float(np.mean(error**2))
            results[split]["mae_original"] = float(np.mean(np.abs(error)))
    write_json(layout.metrics, results)
    tracking.log_final_metrics(results)
    tracking.log_artifact(layout.metrics, "evaluation")
    return results


def plot(cfg: DictConfig, layout: Layout, model: Any = None) -> list[Path]:
    """Draw the run's figures of the model (by default the saved one) and log them."""
    from losslab import plots, tracking, training

    data, _ = load_dataset(layout)
    title = f"{cfg.dataset.name} · {cfg.loss.name} · {cfg.optimizer.name} · seed {cfg.seed}"
    drawn = [
        plots.learning_curves(
            read_history_csv(layout.history), title, layout.plots / "learning_curves.png"
        ),
        plots.dataset_scatter(data, cfg.dataset.name, layout.plots / "dataset.png"),
        _predictions_figure(
            cfg, data, model or training.load_model(layout.model), title, layout.plots
        ),
    ]
    for figure in drawn:
        tracking.log_artifact(figure, "plots")
    return drawn


def _predictions_figure(
    cfg: DictConfig, data: Dataset, model: Any, title: str, folder: Path
) -> Path:
    """The decision boundary where the data is a plane of classes; otherwise the test predictions
    as a confusion matrix or, for regression, against the true values (in the data's units)."""
    from losslab import plots, training

    if plots.can_draw_boundary(data):
        return plots.decision_boundary(
            model, cfg.loss.name, data, title, folder / "decision_boundary.png"
        )
    outputs = training.predict(model, data.x_test)
    if data.task is Task.REGRESSION:
        return plots.predicted_vs_true(
            data.original_units(data.y_test),
            data.original_units(outputs.reshape(-1)),
            title,
            folder / "predicted_vs_true.png",
        )
    return plots.confusion_matrix(
        data.y_test,
        losses.predict_labels(losses.get(cfg.loss.name), outputs),
        data.classes,
        title,
        folder / "confusion_matrix.png",
    )


STEPS = {"generate": generate, "train": train, "evaluate": evaluate, "plot": plot}
