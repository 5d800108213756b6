"""The compiled epoch loop learns exactly as Keras's ``fit`` does, whatever the grouping."""

from __future__ import annotations

import json

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


@pytest.mark.parametrize(
    ("first", "then", "kinds"),
    [
        (
            ("experiment=reg_mse",),
            ("experiment=reg_mse", "seed=1", "optimizer.learning_rate=0.05"),
            1,
        ),
        (
            ("experiment=separable_hinge",),
            ("experiment=separable_hinge", "seed=2", "optimizer.learning_rate=0.01"),
            1,
        ),
        (
            ("dataset=blobs", "loss=cce", "dataset.label_noise=0.2"),
            ("dataset=blobs", "loss=cce", "dataset.label_noise=0.4", "seed=1"),
            1,
        ),
        (
            ("loss=huber", "dataset=regression"),
            ("loss=huber", "dataset=regression", "loss.delta=0.1"),
            2,
        ),
    ],
    ids=["sgd", "adam", "label-fit", "loss-parameter"],
)
def test_a_reused_trainer_learns_exactly_as_a_fresh_one(tiny_cfg, first, then, kinds) -> None:
    """A process traces a kind of model once; a later job of that kind (another seed, learning
    rate or data) starts from its own initial state, optimizer moments included, and learns the
    same as in a fresh process. A loss parameter is part of the kind."""
    earlier, later = tiny_cfg(*first, epochs=12), tiny_cfg(*then, epochs=12)
    training._TRAINERS.clear()
    fresh = training.fit(later, datasets.make_dataset(later.dataset))
    training._TRAINERS.clear()
    training.fit(earlier, datasets.make_dataset(earlier.dataset))
    reused = training.fit(later, datasets.make_dataset(later.dataset))
    assert len(training._TRAINERS) == kinds
    assert [t.run.experimental_get_tracing_count() for t in training._TRAINERS.values()] == [
        1
    ] * kinds
    assert reused.history == fresh.history
    for mine, theirs in zip(reused.model.get_weights(), fresh.model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_process_keeps_the_last_kinds_it_trained(tiny_cfg, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(training, "TRAINERS_KEPT", 2)
    training._TRAINERS.clear()
    for hidden in ("[3]", "[4]", "[5]"):
        cfg = tiny_cfg("experiment=reg_mse", f"model.hidden={hidden}", epochs=1)
        training.fit(cfg, datasets.make_dataset(cfg.dataset))
    assert [json.loads(key)[0]["hidden"] for key in training._TRAINERS] == [[4], [5]]
