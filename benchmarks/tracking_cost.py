"""The CPU time MLflow tracking needs in a sweep worker, for the benchmark.

    python benchmarks/tracking_cost.py RESULT.json PRESET...   (MLFLOW_TRACKING_URI: a store)

In one process warmed up as a sweep worker is (``losslab.sweep._warm_up``: MLflow,
scikit-learn, Matplotlib, TensorFlow):

- ``start_cpu_s``: MLflow's import and opening the store, what every process that logs pays
  once;
- ``job_cpu_s``: each experiment preset run as a job (``app.run``), tracked and untracked,
  alternated, 5 times each after an untimed run of each kind; the medians of the process's CPU
  time, whose difference is that job's tracking (params, per-epoch metrics, artifacts, model);
- ``per_process``: how many times the process imported MLflow and opened a store over all of
  those jobs.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from losslab import tracking
from losslab.app import CONF_DIR, run
from losslab.sweep import _warm_up

REPEATS = 5


def job_cpu(cfg: DictConfig, tracked: bool, folder: Path) -> float:
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.tracking.enabled = tracked
        cfg.trainer.verbose = 0
    started = time.process_time()
    run(cfg, Path(tempfile.mkdtemp(dir=folder)), "multirun", [], {"losslab.job": "0"})
    return time.process_time() - started


class _ImportCounter:
    """Counts how often MLflow's package is imported (executed), as a meta path finder."""

    def __init__(self) -> None:
        self.count = 0

    def find_spec(self, name: str, path: object, target: object = None) -> None:
        if name == "mlflow":
            self.count += 1


def main(result_path: str, *presets: str) -> None:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        configs = {p: compose("config", overrides=[f"experiment={p}"]) for p in presets}
    imports = _ImportCounter()
    sys.meta_path.insert(0, imports)
    started = time.process_time()
    import mlflow
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    stores = []
    opened = SqlAlchemyStore.__init__

    def counted(self, *args, **kwargs) -> None:
        stores.append(args)
        opened(self, *args, **kwargs)

    SqlAlchemyStore.__init__ = counted
    tracking.prepare(configs[presets[0]])
    start_cpu = time.process_time() - started
    _warm_up()
    del mlflow
    samples: dict[str, dict[bool, list[float]]] = {p: {True: [], False: []} for p in presets}
    with tempfile.TemporaryDirectory(prefix="losslab-tracking-cost-") as tmp:
        for tracked in (True, False):  # the first run of each kind: tracing, caches
            job_cpu(configs[presets[0]], tracked, Path(tmp))
        for _ in range(REPEATS):
            for preset, cfg in configs.items():
                for tracked in (True, False):
                    samples[preset][tracked].append(job_cpu(cfg, tracked, Path(tmp)))
    jobs = {
        preset: {
            "tracked": statistics.median(kinds[True]),
            "untracked": statistics.median(kinds[False]),
        }
        for preset, kinds in samples.items()
    }
    per_process = {
        "jobs": sum(len(k[True]) + len(k[False]) for k in samples.values()) + 2,
        "mlflow_imports": imports.count,
        "stores_opened": len(stores),
    }
    with open(result_path, "w") as handle:
        json.dump({"start_cpu_s": start_cpu, "job_cpu_s": jobs, "per_process": per_process}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
