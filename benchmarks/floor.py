"""The floor: each reference experiment's whole training as ONE compiled XLA program.

Same model, optimizer, batches, per-epoch reshuffling and per-epoch validation loss as the
experiment, but all epochs run inside a single ``tf.function(jit_compile=True)`` call: what is
left is the arithmetic, without per-step or per-epoch overhead. The median time of the calls
after the first (which compiles) is the floor losslab's training is compared with: one call of a
small experiment lasts well under a second, and this machine's speed drifts by a quarter.

    python benchmarks/floor.py CONFIG.json [CONFIG.json ...] RESULT.json
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time

import keras
import tensorflow as tf
from omegaconf import OmegaConf

from losslab import losses
from losslab.config import validate
from losslab.datasets import make_dataset
from losslab.models import build_model
from losslab.optimizers import build_optimizer
from losslab.training import training_arrays


def compiled_training(cfg, repeats: int = 5) -> tuple[float, float, float]:
    """(compile and first run seconds, median of ``repeats`` steady runs' seconds, last
    validation loss)."""
    keras.utils.set_random_seed(cfg.seed)
    data = make_dataset(cfg.dataset)
    spec = losses.of(cfg.loss)
    (x, y), (x_val, y_val) = (tuple(map(tf.constant, pair)) for pair in training_arrays(cfg, data))
    model = build_model(cfg.model, data.n_features, spec, data.n_classes)
    optimizer = build_optimizer(cfg.optimizer)
    optimizer.build(model.trainable_variables)
    loss_fn = losses.build(cfg.loss)
    rows, batch, epochs = int(x.shape[0]), cfg.trainer.batch_size, cfg.trainer.epochs
    steps = math.ceil(rows / batch)

    @tf.function(jit_compile=True)
    def train(seed: tf.Tensor) -> tf.Tensor:
        def epoch(e: tf.Tensor, history: tf.TensorArray) -> tuple:
            order = tf.argsort(tf.random.stateless_uniform([rows], seed=tf.stack([seed, e])))
            xs, ys = tf.gather(x, order), tf.gather(y, order)

            def step(i: tf.Tensor) -> tuple:
                end = tf.minimum((i + 1) * batch, rows)
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(loss_fn(ys[i * batch : end], model(xs[i * batch : end])))
                gradients = tape.gradient(loss, model.trainable_variables)
                optimizer.apply(gradients, model.trainable_variables)
                return (i + 1,)

            tf.while_loop(lambda i: i < steps, step, (0,))
            val_loss = tf.reduce_mean(loss_fn(y_val, model(x_val)))
            return e + 1, history.write(e, val_loss)

        _, history = tf.while_loop(
            lambda e, h: e < epochs, epoch, (0, tf.TensorArray(tf.float32, epochs))
        )
        return history.stack()

    seed = tf.constant(cfg.seed)
    started = time.perf_counter()
    history = train(seed).numpy()
    first = time.perf_counter() - started
    steady = []
    for _ in range(repeats):  # each trains on from the last one's weights: the same work
        started = time.perf_counter()
        train(seed).numpy()
        steady.append(time.perf_counter() - started)
    return first, statistics.median(steady), float(history[-1])


def main(*paths: str) -> None:
    results = {}
    for path in paths[:-1]:
        with open(path) as handle:
            cfg = validate(OmegaConf.create(json.load(handle)))
        first, steady, val_loss = compiled_training(cfg)
        results[cfg.preset] = {"compile_s": first, "train_s": steady, "val_loss": val_loss}
    with open(paths[-1], "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
