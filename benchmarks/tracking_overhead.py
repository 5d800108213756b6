"""What MLflow tracking adds to a run's wall time.

For each preset, in one warm process: (a) the library alone — generate, fit, evaluate, draw the
plots, no MLflow — and (b) the same through ``losslab.app.run``, which also logs params,
per-epoch metrics, artifacts and the model to a fresh SQLite store. Overhead = (b - a) / a.
Prints a table and writes JSON. Usage:

    python benchmarks/tracking_overhead.py [--presets reg_mse circles_bce ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from losslab.app import CONF_DIR, run
from losslab.config import validate


def untracked(cfg, out: Path) -> None:
    from losslab import plots, training
    from losslab.datasets import make_dataset

    data = make_dataset(cfg.dataset)
    result = training.fit(cfg, data)
    training.evaluate(cfg, result.model, data)
    plots.learning_curves(result.history, "t", out / "curves.png")
    plots.dataset_scatter(data, "t", out / "data.png")
    if plots.can_draw_boundary(data):
        plots.decision_boundary(result.model, cfg.loss.name, data, "t", out / "boundary.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    presets = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    parser.add_argument("--presets", nargs="*", default=presets)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tracking_overhead.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for preset in args.presets:
            raw = compose("config", overrides=[f"experiment={preset}"])
            with open_dict(raw):
                raw.trainer.verbose = 0
                raw.tracking.uri = f"sqlite:///{tmp}/mlflow.db"
            cfg = validate(raw)
            if not rows:  # warm up TensorFlow, MLflow and the store once
                run(cfg, Path(tmp) / "warm")
            start = time.perf_counter()
            untracked(cfg, Path(tmp) / f"{preset}-plain")
            plain = time.perf_counter() - start
            start = time.perf_counter()
            run(cfg, Path(tmp) / f"{preset}-tracked")
            tracked = time.perf_counter() - start
            rows.append({"preset": preset, "untracked_s": plain, "tracked_s": tracked})
            print(f"{preset:24s} untracked {plain:6.2f} s  tracked {tracked:6.2f} s  "
                  f"overhead {100 * (tracked - plain) / plain:5.1f} %", flush=True)
    total_plain = sum(r["untracked_s"] for r in rows)
    total_tracked = sum(r["tracked_s"] for r in rows)
    overhead = 100 * (total_tracked - total_plain) / total_plain
    print(f"{'total':24s} untracked {total_plain:6.2f} s  tracked {total_tracked:6.2f} s  "
          f"overhead {overhead:5.1f} %")
    args.out.write_text(json.dumps({"rows": rows, "overhead_percent": overhead}, indent=2) + "\n")


if __name__ == "__main__":
    main()
