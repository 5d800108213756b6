"""One reference experiment written as the tutorials write it: a Keras Sequential model,
``model.fit`` on NumPy arrays with per-epoch validation, ``model.evaluate``, a learning-curve
plot. No tracking. The benchmark runs it once per experiment, each in a fresh process.

    python benchmarks/tutorial_style.py CONFIG.json RESULT.json

CONFIG.json is a resolved losslab config (the preset's settings); the data comes from losslab's
generators so both sides train on identical arrays. Like the tutorials, the script sets no
random seed: with ``keras.utils.set_random_seed``, Keras 3's ``fit`` on NumPy arrays would draw
the same permutation every epoch instead of reshuffling, which changes the learning dynamics.
"""

from __future__ import annotations

import json
import sys
import time

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as pyplot  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from losslab import losses  # noqa: E402
from losslab.config import validate  # noqa: E402
from losslab.datasets import make_dataset  # noqa: E402
from losslab.optimizers import build_optimizer  # noqa: E402


def main(config_path: str, result_path: str) -> None:
    with open(config_path) as handle:
        cfg = validate(OmegaConf.create(json.load(handle)))
    data = make_dataset(cfg.dataset)
    spec = losses.of(cfg.loss)
    trainy = losses.encode_targets(spec, data.y_train, data.n_classes)
    testy = losses.encode_targets(spec, data.y_test, data.n_classes)
    classification = spec.task is not losses.Task.REGRESSION

    model = keras.Sequential([keras.Input(shape=(data.n_features,))])
    for units in cfg.model.hidden:
        model.add(keras.layers.Dense(units, activation="relu", kernel_initializer="he_uniform"))
    model.add(keras.layers.Dense(spec.units(data.n_classes), activation=spec.default_activation))
    model.compile(
        loss=losses.build(cfg.loss),  # the class of the name the tutorials pass
        optimizer=build_optimizer(cfg.optimizer),
        metrics=["accuracy"] if classification else ["mse"],
    )
    started = time.perf_counter()
    if cfg.trainer.validation.value == "split":
        validation = {"validation_split": cfg.trainer.validation_split}
    else:
        validation = {"validation_data": (data.x_test, testy)}
    history = model.fit(
        data.x_train,
        trainy,
        epochs=cfg.trainer.epochs,
        batch_size=cfg.trainer.batch_size,
        verbose=0,
        **validation,
    )
    fit_seconds = time.perf_counter() - started
    _, train_metric = model.evaluate(data.x_train, trainy, verbose=0)
    test_loss, test_metric = model.evaluate(data.x_test, testy, verbose=0)
    print(f"Train: {train_metric:.3f}, Test: {test_metric:.3f}")

    pyplot.subplot(211)
    pyplot.title("Loss")
    pyplot.plot(history.history["loss"], label="train")
    pyplot.plot(history.history["val_loss"], label="test")
    pyplot.legend()
    pyplot.subplot(212)
    metric = "accuracy" if classification else "mse"
    pyplot.title(metric)
    pyplot.plot(history.history[metric], label="train")
    pyplot.plot(history.history[f"val_{metric}"], label="test")
    pyplot.legend()
    pyplot.savefig(result_path.removesuffix(".json") + ".png")

    result = {"fit_seconds": fit_seconds, "test_loss": float(test_loss)}
    if classification:  # the labels the loss's encoding means, not Keras's 0.5 threshold
        predicted = losses.predict_labels(spec, model.predict(data.x_test, verbose=0))
        result["test_accuracy"] = float((predicted == data.y_test).mean())
        result["keras_accuracy"] = float(test_metric)
    else:
        result["test_mse"] = float(test_metric)
    with open(result_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
