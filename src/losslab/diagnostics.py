"""What a trained model's test outputs say beyond accuracy: how well a probabilistic head's
confidence matches how often it is right, and how far a margin loss's outputs clear the margin.
NumPy only; the loss registry says how outputs turn into labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from losslab.losses import LossSpec

CALIBRATION_BINS = 15


@dataclass(frozen=True)
class Calibration:
    """Test rows in equal-width bins of confidence over [0, 1]: per bin, the rows, their mean
    confidence and their accuracy (NaN where a bin is empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error: the row-weighted mean gap between confidence and accuracy."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.counts[filled] * gaps) / self.counts.sum())


def top_label(spec: LossSpec, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The predicted class of each row and the probability the head gives it."""
    if spec.label_threshold is None:
        return outputs.argmax(axis=1), outputs.max(axis=1)
    positive = outputs.reshape(-1)
    predicted = positive > spec.label_threshold
    return predicted.astype("int64"), np.where(predicted, positive, 1.0 - positive)


def calibration(
    spec: LossSpec, outputs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS
) -> Calibration:
    predicted, confidence = top_label(spec, outputs)
    correct = (predicted == labels).astype("float64")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / counts
        accuracy = np.bincount(which, correct, bins) / counts
    return Calibration(edges, counts, mean_confidence, accuracy)


def margins(spec: LossSpec, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """y·f(x) on {-1,+1} targets; with k outputs, the true class's output less the largest
    other one. Positive is right, and a margin loss is content from 1 on."""
    if spec.label_threshold is not None:
        return (2.0 * labels - 1.0) * outputs.reshape(-1)
    rows = np.arange(len(labels))
    true = outputs[rows, labels]
    others = outputs.copy()
    others[rows, labels] = -np.inf
    return true - others.max(axis=1)
