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
from losslab.datasets import Dataset, corrupted_name, make_dataset
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
        data.corrupted_name: int(data.corrupted.sum()),
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
    try:
        task, classes, scale, expected = (
            Task(meta["task"]),
            list(meta["classes"]),
            meta["target_scale"],
            meta["sha256"],
        )
    except (KeyError, ValueError, TypeError) as error:
        raise StageInputError(
            f"{layout.data_meta}: incomplete metadata ({error}); rerun generate"
        ) from None
    mask = corrupted_name(task)
    arrays = read_npz(layout.data, ("x_train", "y_train", "x_test", "y_test", mask))
    corrupted = arrays.pop(mask)
    data = Dataset(**arrays, task=task, classes=classes, target_scale=scale, corrupted=corrupted)
    if data.content_hash() != expected:
        raise StageInputError(
            f"{layout.data}: content does not match the hash in {layout.data_meta}; rerun generate"
        )
    return data, meta


def train(cfg: DictConfig, layout: Layout) -> Any:
    """Train, write the model (its layers and weights: the loss and metrics come from the
    config, so a custom loss's module is not needed to load it), its per-epoch history and the
    training time, log them to the active run (if any) with the model file's hash and a custom
    loss's source file, and return the trained, compiled model."""
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
    layers = training.layers_only(result.model)
    write_keras(layers, layout.model)
    write_history_csv(layout.history, result.history)
    write_json(layout.train, timing)
    tracking.tag_model(file_md5(layout.model))
    tracking.log_artifact(layout.history, "history")
    tracking.log_artifact(layout.data_meta, "data")
    source = losses.source_file(cfg.loss)
    if source is not None:
        tracking.log_loss_source(Path(source))
    tracking.log_model(layers, data.x_test)
    return result.model


def evaluate(cfg: DictConfig, layout: Layout, model: Any = None) -> dict[str, dict[str, float]]:
    """Score the model (by default the saved one) on both splits; write and log the results.

    Standardized regression targets also get ``mse_original`` and ``mae_original``: the errors in
    the data's own units, which a reader can judge. A probabilistic head also gets the test
    split's expected calibration error, ``ece``.
    """
    from losslab import diagnostics, tracking, training

    data, _ = load_dataset(layout)
    model = model or training.compile_model(cfg, data, training.load_model(layout.model))
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
    spec = losses.of(cfg.loss)
    if data.task is not Task.REGRESSION and spec.probabilistic(cfg.model.output_activation):
        outputs = training.predict(model, data.x_test)
        results["test"]["ece"] = diagnostics.calibration(spec, outputs, data.y_test).ece
    write_json(layout.metrics, results)
    tracking.log_final_metrics(results)
    tracking.log_artifact(layout.metrics, "evaluation")
    return results


def plot(cfg: DictConfig, layout: Layout, model: Any = None) -> list[Path]:
    """Draw the run's figures of the model (by default the saved one) and log them."""
    from losslab import plots, tracking, training

    data, _ = load_dataset(layout)
    model = model or training.load_model(layout.model)
    title = f"{cfg.dataset.name} · {cfg.loss.name} · {cfg.optimizer.name} · seed {cfg.seed}"
    outputs = training.predict(model, data.x_test)
    drawn = [
        plots.learning_curves(
            read_history_csv(layout.history), title, layout.plots / "learning_curves.png"
        ),
        plots.dataset_scatter(data, cfg.dataset.name, layout.plots / "dataset.png"),
        _predictions_figure(cfg, data, model, outputs, title, layout.plots),
    ]
    diagnostic = _diagnostic_figure(cfg, data, outputs, title, layout.plots)
    if diagnostic is not None:
        drawn.append(diagnostic)
    for figure in drawn:
        tracking.log_artifact(figure, "plots")
    return drawn


def _predictions_figure(
    cfg: DictConfig, data: Dataset, model: Any, outputs: np.ndarray, title: str, folder: Path
) -> Path:
    """The decision boundary where the data is a plane of classes; otherwise the test predictions
    as a confusion matrix or, for regression, against the true values (in the data's units)."""
    from losslab import plots

    if plots.can_draw_boundary(data):
        return plots.decision_boundary(
            model, losses.of(cfg.loss), data, title, folder / "decision_boundary.png"
        )
    if data.task is Task.REGRESSION:
        return plots.predicted_vs_true(
            data.original_units(data.y_test),
            data.original_units(outputs.reshape(-1)),
            title,
            folder / "predicted_vs_true.png",
        )
    return plots.confusion_matrix(
        data.y_test,
        losses.predict_labels(losses.of(cfg.loss), outputs),
        data.classes,
        title,
        folder / "confusion_matrix.png",
    )


def _diagnostic_figure(
    cfg: DictConfig, data: Dataset, outputs: np.ndarray, title: str, folder: Path
) -> Path | None:
    """A margin loss's test margins, or a probabilistic head's reliability diagram."""
    from losslab import diagnostics, plots

    spec = losses.of(cfg.loss)
    if data.task is Task.REGRESSION:
        return None
    if spec.margin:
        margins = diagnostics.margins(spec, outputs, data.y_test)
        return plots.margin_histogram(margins, title, folder / "margins.png")
    if spec.probabilistic(cfg.model.output_activation):
        calibration = diagnostics.calibration(spec, outputs, data.y_test)
        return plots.reliability_diagram(calibration, title, folder / "reliability.png")
    return None


STEPS = {"generate": generate, "train": train, "evaluate": evaluate, "plot": plot}
