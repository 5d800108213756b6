"""The compiled epoch loop learns exactly as Keras's ``fit`` does, whatever the grouping."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from losslab import datasets, training


@pytest.mark.parametrize("experiment", ["reg_mse", "circles_hinge", "blobs_cce"])
def test_full_batch_epochs_match_keras_fit(tiny_cfg, experiment: str) -> None:
    """With one batch per epoch the row order cannot matter, so every per-epoch log (loss,
    metrics and their validation twins) must equal what ``model.fit`` reports; the loop adds
    the gradient's norm, which ``fit`` does not report."""
    cfg = tiny_cfg(f"experiment={experiment}", "trainer.batch_size=1000", epochs=4, n_samples=120)
    data = datasets.make_dataset(cfg.dataset)
    ours = training.fit(cfg, data).history

    training.seed_everything(cfg.seed)
    (x, y), validation = training.training_arrays(cfg, data)
    model = training.compile_model(cfg, data)
    theirs = model.fit(
        x, y, validation_data=validation, batch_size=1000, epochs=4, shuffle=False, verbose=0
    ).history
    assert ours.pop("grad_norm")
    assert ours.keys() == theirs.keys()
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_grouping_of_epochs_into_calls_does_not_change_the_result(
    tiny_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_cfg("experiment=reg_mse", epochs=7)
    data = datasets.make_dataset(cfg.dataset)
    grouped = training.fit(cfg, data).history
    monkeypatch.setattr(training, "EPOCHS_PER_CALL", 3)
    assert training.fit(cfg, data).history == grouped
    assert len(grouped["val_loss"]) == 7


def test_each_epoch_reshuffles(tiny_cfg) -> None:
    """On frozen weights, an epoch's loss is a mean over the same rows whatever their order, but
    float32 sums of differently composed batches differ in the last bits: equal bits would mean
    the second epoch saw the first epoch's batches again."""
    cfg = tiny_cfg(
        "experiment=reg_mse", "optimizer.learning_rate=1e-30", "optimizer.momentum=0", epochs=2
    )
    history = training.fit(cfg, datasets.make_dataset(cfg.dataset)).history
    np.testing.assert_allclose(history["loss"][0], history["loss"][1], rtol=1e-5)
    assert history["loss"][0] != history["loss"][1]
    assert history["val_loss"][0] == history["val_loss"][1]  # validation is never shuffled


def test_callbacks_see_every_epoch_and_can_stop_training(tiny_cfg) -> None:
    cfg = tiny_cfg("experiment=reg_mse", epochs=25)
    seen: list[int] = []

    class StopAfterTwelve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seen.append(epoch)
            self.model.stop_training = epoch + 1 >= 12

    history = training.fit(cfg, datasets.make_dataset(cfg.dataset), [StopAfterTwelve()]).history
    assert seen == list(range(training.EPOCHS_PER_CALL * 2))
    assert len(history["loss"]) == len(seen)
