"""What MLflow tracking adds to a run's wall time.

For each preset, in one warm process, ``losslab.app.run`` twice: with ``tracking.enabled=false``
(the same steps and files, no MLflow run) and with tracking into a fresh SQLite store (params,
tags, per-epoch metrics, artifacts, dataset input, the logged model). Overhead = the difference
over the untracked time. Prints a table and writes JSON. Usage:

    python benchmarks/tracking_overhead.py [--presets reg_mse circles_bce ...] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from losslab.app import CONF_DIR, run
from losslab.config import validate


def timed(cfg, out: Path) -> float:
    start = time.perf_counter()
    run(cfg, out)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    presets = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    presets = [p for p in presets if not p.startswith("real_")]
    parser.add_argument("--presets", nargs="*", default=presets)
    parser.add_argument("--repeat", type=int, default=3, help="runs per preset and mode (median)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/tracking_overhead.json"))
    args = parser.parse_args()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        initialize_config_dir(str(CONF_DIR), version_base="1.3"),
    ):
        configs = {}
        for enabled in (False, True):
            for preset in args.presets:
                raw = compose("config", overrides=[f"experiment={preset}"])
                with open_dict(raw):
                    raw.trainer.verbose = 0
                    raw.tracking.uri = f"sqlite:///{tmp}/mlflow.db"
                    raw.tracking.enabled = enabled
                configs[preset, enabled] = validate(raw)
        timed(configs[args.presets[0], True], Path(tmp) / "warm")  # TensorFlow, MLflow, the store
        for preset in args.presets:
            times = {False: [], True: []}
            for i in range(args.repeat):
                for enabled in (False, True):
                    out = Path(tmp) / f"{preset}-{enabled}-{i}"
                    times[enabled].append(timed(configs[preset, enabled], out))
            plain, tracked = statistics.median(times[False]), statistics.median(times[True])
            rows.append({"preset": preset, "untracked_s": plain, "tracked_s": tracked})
            print(
                f"{preset:24s} untracked {plain:6.2f} s  tracked {tracked:6.2f} s  "
                f"overhead {100 * (tracked - plain) / plain:5.1f} %",
                flush=True,
            )
    total_plain = sum(r["untracked_s"] for r in rows)
    total_tracked = sum(r["tracked_s"] for r in rows)
    overhead = 100 * (total_tracked - total_plain) / total_plain
    print(
        f"{'total':24s} untracked {total_plain:6.2f} s  tracked {total_tracked:6.2f} s  "
        f"overhead {overhead:5.1f} %"
    )
    result = {"rows": rows, "overhead_percent": overhead, "repeat": args.repeat}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
