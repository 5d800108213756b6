"""The model learns: for one reference preset of each family (regression, binary, multiclass,
separable), training lowers the loss and the test score beats what guessing gets.

Each preset keeps its own model, loss, optimizer and epochs, on a smaller sample; no expected
value is written down: the bar is computed from the test data (its variance, its class counts).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shrink

from losslab import datasets, losses, training

# (preset, samples): enough for the preset's epochs to learn, few enough to be quick
FAMILIES = {
    "regression": ("reg_mse", 400),
    "binary": ("circles_bce", 400),
    "multiclass": ("blobs_cce", 400),
    "separable": ("separable_hinge", 400),
}
# how much better than guessing: a regression's test MSE under this share of the targets'
# variance (what predicting their mean scores); an accuracy this far above the majority class's
# share of the test split
MSE_SHARE = 0.5
ACCURACY_MARGIN = 0.15


@pytest.fixture(scope="module", params=list(FAMILIES), ids=list(FAMILIES))
def trained(request, compose_raw):
    preset, samples = FAMILIES[request.param]
    raw = compose_raw(f"experiment={preset}", "tracking.enabled=false")
    cfg = shrink(raw, "sqlite:///unused", raw.trainer.epochs, samples)  # the preset's epochs
    data = datasets.make_dataset(cfg.dataset)
    result = training.fit(cfg, data)
    return cfg, data, result.history, training.evaluate(cfg, result.model, data)["test"]


def test_training_lowers_the_loss(trained):
    cfg, _, history, _ = trained
    loss = history["loss"]
    assert len(loss) == cfg.trainer.epochs
    assert all(np.isfinite(loss))
    assert loss[-1] < loss[0], f"first epoch {loss[0]:.4f}, last {loss[-1]:.4f}"


def test_test_score_beats_guessing(trained):
    cfg, data, _, scores = trained
    if data.task is losses.Task.REGRESSION:
        # in the units the model was trained in (standardized targets, as the loss sees them)
        spec = losses.get(cfg.loss.name)
        targets = losses.encode_targets(spec, data.y_test, data.n_classes).reshape(-1)
        variance = float(np.var(targets))
        assert scores["mse"] < MSE_SHARE * variance, (scores["mse"], variance)
    else:
        counts = np.bincount(data.y_test.astype("int64"), minlength=data.n_classes)
        majority = counts.max() / counts.sum()  # at least 1 / n_classes
        assert majority >= 1 / data.n_classes
        assert scores["accuracy"] > majority + ACCURACY_MARGIN, (scores["accuracy"], majority)
