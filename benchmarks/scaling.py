"""Training time against data size and epochs, in one warm process, for the benchmark.

    python benchmarks/scaling.py RESULT.json

Times ``losslab.training.fit`` (compiled epochs, as every losslab run trains) for reg_mse with
n_samples from 1e3 to 1e6 (2 epochs) and with 25 to 200 epochs (1000 samples): the second of two
calls, so that every point is the training of a shape already traced in the process.
"""

from __future__ import annotations

import json
import sys
import time

from hydra import compose, initialize_config_dir

from losslab.app import CONF_DIR
from losslab.config import validate
from losslab.datasets import make_dataset
from losslab.training import fit

SAMPLES = [1_000, 10_000, 100_000, 1_000_000]
EPOCHS = [25, 50, 100, 200]


def timed_fit(n_samples: int, epochs: int) -> float:
    overrides = [
        "experiment=reg_mse",
        f"dataset.n_samples={n_samples}",
        f"dataset.n_test={n_samples // 2}",
        f"trainer.epochs={epochs}",
        "trainer.verbose=0",
    ]
    cfg = validate(compose("config", overrides=overrides))
    data = make_dataset(cfg.dataset)
    fit(cfg, data)  # traces the loop for these shapes, unless an earlier call did
    started = time.perf_counter()
    fit(cfg, data)
    return time.perf_counter() - started


def main(result_path: str) -> None:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        by_samples = {n: timed_fit(n, 2) for n in SAMPLES}
        by_epochs = {e: timed_fit(1_000, e) for e in EPOCHS}
    with open(result_path, "w") as handle:
        json.dump({"seconds_by_n_samples": by_samples, "seconds_by_epochs": by_epochs}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
