"""Figures of one run: learning curves, the dataset, and what the model predicts: the decision
boundary in 2-D, else a confusion matrix (classification) or predicted vs true (regression)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from losslab import losses  # noqa: E402
from losslab.datasets import Dataset  # noqa: E402
from losslab.diagnostics import Calibration  # noqa: E402
from losslab.losses import Task  # noqa: E402
from losslab.storage import atomic_path  # noqa: E402

GRID_STEPS = 200


def subplots(*args: Any, **kwargs: Any) -> tuple[plt.Figure, Any]:
    """``plt.subplots`` with titles at a fixed height. Left to place them, Matplotlib measures
    every tick label again at each draw to lift titles over labels on top, which these figures
    never have: the same images, in about 8 % less of a run's plotting time."""
    with plt.rc_context({"axes.titley": 1.0}):
        return plt.subplots(*args, **kwargs)


def save_figure(figure: plt.Figure, target: Path) -> Path:
    with atomic_path(target) as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(figure)
    return target


def spans_decades(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values) & (values > 0)]
    return finite.size == values.size and finite.size > 0 and finite.max() / finite.min() > 100


LABEL_FIT = ("clean_fit", "noisy_fit")  # the memorization curves share one panel


def learning_curves(history: dict[str, list[float]], title: str, target: Path) -> Path:
    """Loss and each metric per epoch, train vs validation, the gradient norm, and the share of
    clean and of noisy training labels fitted; log scale where values span decades."""
    names = sorted((k for k in history if not k.startswith("val_")), key=lambda k: k != "loss")
    panels = [[name, f"val_{name}"] for name in names if name not in LABEL_FIT]
    panels += [[name for name in LABEL_FIT if name in history]] if LABEL_FIT[0] in history else []
    figure, axes = subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        shown = [name for name in panel if name in history]
        for name in shown:
            label = (
                name.replace("_fit", " labels")
                if name in LABEL_FIT
                else ("validation" if name.startswith("val_") else "train")
            )
            axis.plot(np.arange(1, len(history[name]) + 1), history[name], label=label)
        if spans_decades(np.concatenate([history[name] for name in shown])):
            axis.set_yscale("log")
        heading = "training labels fitted" if panel[0] in LABEL_FIT else panel[0]
        axis.set(xlabel="epoch", ylabel=heading, title=heading)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    return save_figure(figure, target)


def _projection(data: Dataset) -> tuple[np.ndarray, np.ndarray, str]:
    """The features in 2-D: as they are, or their first two principal components."""
    if data.n_features == 2:
        return data.x_train, data.x_test, "x"
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(data.x_train)
    return pca.transform(data.x_train), pca.transform(data.x_test), "PC"


_DRAWN_DATASETS: dict[tuple[str, str], bytes] = {}
"""The dataset figures this process drew, by (data hash, title): a sweep worker trains several
models on the same data and copies the figure instead of drawing it again."""


def dataset_scatter(data: Dataset, title: str, target: Path) -> Path:
    """Train and test points, coloured by class (or by target value for regression)."""
    key = (data.content_hash(), title)
    if key not in _DRAWN_DATASETS:
        _draw_dataset(data, title, target)
        _DRAWN_DATASETS[key] = target.read_bytes()
        return target
    with atomic_path(target) as tmp:
        tmp.write_bytes(_DRAWN_DATASETS[key])
    return target


def _draw_dataset(data: Dataset, title: str, target: Path) -> Path:
    train, test, axis_name = _projection(data)
    figure, axis = subplots(figsize=(5.5, 4.5))
    colour = "viridis" if data.task is Task.REGRESSION else "coolwarm"
    shown = axis.scatter(*train.T, c=data.y_train, cmap=colour, s=12, marker="o", label="train")
    axis.scatter(*test.T, c=data.y_test, cmap=colour, s=16, marker="x", label="test")
    figure.colorbar(shown, ax=axis, label="target" if data.task is Task.REGRESSION else "class")
    axis.set(xlabel=f"{axis_name}1", ylabel=f"{axis_name}2", title=title)
    axis.legend()
    return save_figure(figure, target)


def decision_boundary(
    model: Any, spec: losses.LossSpec, data: Dataset, title: str, target: Path
) -> Path:
    """Predicted class over the plane of a 2-feature dataset, with the test points on top."""
    from sklearn.inspection import DecisionBoundaryDisplay  # scikit-learn takes 1.4 s to import

    points = np.vstack([data.x_train, data.x_test])
    low, high = points.min(axis=0) - 0.25, points.max(axis=0) + 0.25
    xx0, xx1 = np.meshgrid(*(np.linspace(low[i], high[i], GRID_STEPS) for i in (0, 1)))
    grid = np.column_stack([xx0.ravel(), xx1.ravel()]).astype("float32")
    from losslab.training import predict

    outputs = predict(model, grid)
    response = losses.predict_labels(spec, outputs).reshape(xx0.shape)
    figure, axis = subplots(figsize=(5.5, 4.5))
    binary = data.n_classes == 2
    display = DecisionBoundaryDisplay(
        xx0=xx0,
        xx1=xx1,
        n_classes=data.n_classes,
        response=response,
        multiclass_colors=None if binary else "coolwarm",
        xlabel="x1",
        ylabel="x2",
    )
    display.plot(ax=axis, alpha=0.35, **({"cmap": "coolwarm"} if binary else {}))
    axis.scatter(
        *data.x_test.T, c=data.y_test, cmap="coolwarm", s=12, edgecolors="k", linewidths=0.3
    )
    axis.set_title(title)
    return save_figure(figure, target)


def can_draw_boundary(data: Dataset) -> bool:
    return data.n_features == 2 and data.task is not Task.REGRESSION


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], title: str, target: Path
) -> Path:
    """Test predictions per true class, labelled with the data's own class names."""
    from sklearn.metrics import ConfusionMatrixDisplay

    size = 3.5 + 0.4 * len(classes)
    figure, axis = subplots(figsize=(size, size))
    ConfusionMatrixDisplay.from_predictions(
        y_true,
        y_pred,
        labels=list(range(len(classes))),
        display_labels=classes,
        cmap="Blues",
        colorbar=False,
        xticks_rotation="vertical" if len(classes) * max(map(len, classes)) > 40 else "horizontal",
        ax=axis,
    )
    axis.set_title(title)
    return save_figure(figure, target)


def predicted_vs_true(y_true: np.ndarray, y_pred: np.ndarray, title: str, target: Path) -> Path:
    """Test predictions against the true values; a perfect model lies on the diagonal."""
    from sklearn.metrics import PredictionErrorDisplay

    figure, axis = subplots(figsize=(5.5, 4.5))
    PredictionErrorDisplay.from_predictions(
        y_true,
        y_pred,
        kind="actual_vs_predicted",
        subsample=None,  # every test point, so the figure is the same run after run
        ax=axis,
        scatter_kwargs={"s": 12, "alpha": 0.6},
    )
    axis.set_title(title)
    return save_figure(figure, target)


def reliability_diagram(calibration: Calibration, title: str, target: Path) -> Path:
    """Accuracy against confidence per bin, the diagonal being a calibrated head, and how many
    test rows each bin holds."""
    edges, filled = calibration.edges, calibration.counts > 0
    width = np.diff(edges)
    figure, (axis, counts) = subplots(
        2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    axis.bar(
        edges[:-1][filled],
        calibration.accuracy[filled],
        width[filled],
        align="edge",
        edgecolor="k",
        linewidth=0.4,
        alpha=0.8,
        label="accuracy",
    )
    axis.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    axis.set(ylabel="accuracy", ylim=(0, 1), title=f"{title}\nECE {calibration.ece:.3f}")
    axis.legend(loc="upper left")
    counts.bar(edges[:-1], calibration.counts, width, align="edge", color="tab:gray")
    counts.set(
        xlabel="confidence (probability of the predicted class)", ylabel="test rows", xlim=(0, 1)
    )
    for each in (axis, counts):
        each.grid(alpha=0.3)
    return save_figure(figure, target)


def margin_histogram(margins: np.ndarray, title: str, target: Path) -> Path:
    """Test margins y·f(x): left of 0 misclassified, between 0 and 1 inside the margin."""
    figure, axis = subplots(figsize=(5.5, 3.8))
    axis.hist(margins, bins=40, color="tab:blue", alpha=0.8)
    axis.axvline(0.0, color="k", linewidth=1, label="0: wrong | right")
    axis.axvline(1.0, color="k", linestyle="--", linewidth=1, label="1: the margin")
    axis.legend(fontsize=8)
    inside = float(np.mean(margins < 1.0))
    axis.set(
        xlabel="margin y·f(x)",
        ylabel="test rows",
        title=f"{title}\n{inside:.0%} of test rows below margin 1",
    )
    axis.grid(alpha=0.3)
    return save_figure(figure, target)


def loss_shapes(target: Path) -> Path:
    """Each binary loss against the model's raw output for a positive example (through each
    output activation the registry allows), and each regression loss against the error."""
    import keras

    from losslab.losses import LOSSES

    scores = np.linspace(-3, 3, 301).astype("float32")
    figure, (binary, regression) = subplots(1, 2, figsize=(11, 4))
    for spec in LOSSES.values():
        if spec.task is Task.BINARY:
            truth = losses.encode_targets(spec, np.ones(len(scores)), 2)
            for activation in spec.activations:
                outputs = keras.activations.get(activation)(scores.reshape(-1, 1))
                value = losses.build({"name": spec.name}, reduction=None)(truth, outputs)
                style = "-" if activation == spec.default_activation else "--"
                binary.plot(
                    scores,
                    keras.ops.convert_to_numpy(value),
                    style,
                    label=f"{spec.name} ({activation})",
                )
        elif spec.task is Task.REGRESSION:
            truth = np.ones((len(scores), 1), dtype="float32")  # positive, so msle is defined
            value = losses.build({"name": spec.name}, reduction=None)(
                truth, truth + scores.reshape(-1, 1)
            )
            regression.plot(scores, keras.ops.convert_to_numpy(value), label=spec.name)
    binary.set(
        xlabel="raw output z (before the head's activation); target +1",
        ylabel="loss",
        title="binary losses",
        ylim=(0, 4),
    )
    regression.set(
        xlabel="error (prediction − target), target 1",
        ylabel="loss",
        title="regression losses",
        ylim=(0, 4),
    )
    for axis in (binary, regression):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(figure, target)
