"""scikit-learn's MLP against losslab's training, at equal settings, on losslab's own data.

For each reference experiment, ``MLPRegressor`` or ``MLPClassifier`` with the same hidden
layers (relu), optimizer (sgd with lr and momentum, no Nesterov; or adam with lr), batch size
and epochs, no weight decay, no early stopping and no tolerance stop, so it runs every epoch on
the same training rows; the median of 3 ``fit`` calls. Against it, ``losslab.training.fit`` in
a process that has trained another model, with model build and per-epoch validation: once for a
kind of model new to the process (``first``: tracing, and compiling with
``trainer.jit_compile``), then the median of 3 more calls (``again``: a sweep worker's later jobs
of that kind). scikit-learn has no per-epoch validation, and its classifiers always minimise
log-loss.

    python benchmarks/sklearn_mlp.py [PRESET ...] [--set KEY=VALUE ...] [--out RESULT.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import psutil
from hydra import compose, initialize_config_dir
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier, MLPRegressor

from losslab.app import CONF_DIR
from losslab.config import validate
from losslab.datasets import make_dataset
from losslab.losses import Task
from losslab.training import fit, training_arrays

REPEATS = 3


def reference_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if "real_" not in p.stem)


def sklearn_mlp(cfg) -> MLPClassifier | MLPRegressor:
    """scikit-learn's MLP at the experiment's settings, made to run every epoch."""
    optimizer = cfg.optimizer
    solver = {"solver": optimizer.name, "learning_rate_init": optimizer.learning_rate}
    if optimizer.name == "sgd":
        solver.update(momentum=optimizer.momentum, nesterovs_momentum=optimizer.nesterov)
    elif optimizer.name == "adam":
        solver.update(beta_1=optimizer.beta_1, beta_2=optimizer.beta_2)
    else:
        raise ValueError(f"scikit-learn has no {optimizer.name} optimizer")
    classifier = make_dataset(cfg.dataset).task is not Task.REGRESSION
    return (MLPClassifier if classifier else MLPRegressor)(
        hidden_layer_sizes=tuple(cfg.model.hidden),
        activation=cfg.model.activation,
        alpha=0.0,
        batch_size=cfg.trainer.batch_size,
        max_iter=cfg.trainer.epochs,
        shuffle=True,
        tol=0.0,
        n_iter_no_change=cfg.trainer.epochs + 1,
        early_stopping=False,
        random_state=cfg.seed,
        **solver,
    )


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def compare(cfg) -> dict[str, float]:
    data = make_dataset(cfg.dataset)
    (x, _), _ = training_arrays(cfg, data)
    y = data.y_train[: len(x)]  # labels as scikit-learn takes them, on the same rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sklearn_s = statistics.median(
            timed(lambda: sklearn_mlp(cfg).fit(x, y)) for _ in range(REPEATS)
        )
    started = time.perf_counter()
    val_loss = fit(cfg, data).history["val_loss"][-1]
    first = time.perf_counter() - started
    again = statistics.median(timed(lambda: fit(cfg, data)) for _ in range(REPEATS))
    return {
        "sklearn_s": sklearn_s,
        "first_s": first,
        "again_s": again,
        "ratio": again / sklearn_s,
        "val_loss": val_loss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for both")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        overrides = ["trainer.verbose=0", *args.set]
        configs = {
            preset: validate(compose("config", [f"experiment={preset}", *overrides]))
            for preset in args.presets or reference_presets()
        }
        other = validate(compose("config", ["model.hidden=[3]", "trainer.epochs=2", *overrides]))
        fit(other, make_dataset(other.dataset))  # TensorFlow's one-time start-up
    print(f"{'preset':24s} {'sklearn s':>9s} {'losslab first':>13s} {'again':>6s} {'ratio':>6s}")
    for preset, cfg in configs.items():
        results[preset] = r = compare(cfg)
        print(
            f"{preset:24s} {r['sklearn_s']:9.3f} {r['first_s']:13.3f} {r['again_s']:6.3f} "
            f"{r['ratio']:6.2f} {r['val_loss']:9.6f}",
            flush=True,
        )
    print(f"load average {' '.join(f'{v:.2f}' for v in psutil.getloadavg())}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
