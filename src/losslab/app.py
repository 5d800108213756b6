"""``losslab``: compose an experiment with Hydra and run all four steps in one process.

A thin ``@hydra.main`` over :func:`run`, which tests and other entry points call directly.
"""

from __future__ import annotations

import os
import string
import sys
import warnings
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from losslab.cli import JobFailed, reported_errors, sigterm_as_exception
from losslab.config import validate

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# conf/hydra/launcher/ray.yaml replaces hydra-ray-launcher's config of that name on purpose
warnings.filterwarnings("ignore", r"\s*'hydra/launcher/ray' is validated against ConfigStore")


def run(
    cfg: DictConfig,
    output_dir: Path,
    entry_point: str = "cli",
    overrides: list[str] = (),
    extra_tags: dict[str, str] | None = None,
) -> dict[str, dict[str, float]]:
    """Validate ``cfg``, then generate, train, evaluate and plot into ``output_dir``.

    All four steps share one MLflow run; opening it first checks the tracking store, so an
    unreachable server is reported before anything is written. Returns the train and test
    scores, and the last epoch's validation scores.
    """
    cfg = validate(cfg)
    from losslab import steps, tracking
    from losslab.storage import read_history_csv

    layout = steps.Layout(Path(output_dir))
    with tracking.run(cfg, entry_point, overrides, extra_tags=extra_tags):
        steps.generate(cfg, layout)
        model = steps.train(cfg, layout)
        results = steps.evaluate(cfg, layout, model)
        steps.plot(cfg, layout, model)
    history = read_history_csv(layout.history)
    results["validation"] = {k[4:]: v[-1] for k, v in history.items() if k.startswith("val_")}
    return results


class CheckBeforeWriting(Callback):
    """A run's config and tracking store checked before Hydra makes the run's output folder,
    so that bad input leaves nothing behind. (A sweep's jobs are checked one by one: a bad job
    fails alone, in its own folder.)"""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        from losslab import tracking

        with reported_errors("losslab"):  # exits: Hydra would only warn about an exception
            cfg = validate(config)
            if cfg.tracking.enabled:
                tracking.check_store(tracking.tracking_uri(cfg))


def objective(results: dict[str, dict[str, float]], metric: str) -> float:
    """The value a sweeper optimizes, e.g. ``validation.loss`` or ``test.accuracy``."""
    split, _, name = metric.partition(".")
    return results[split][name]


def help_text(overrides: list[str]) -> str:
    """Hydra's ``--help`` page (its template, the groups, the composed config) built without
    Hydra's group listing, which copies its whole config repository once per config group:
    about a second with the launcher and sweeper plugins installed. The groups are the folders
    of ``conf/``, exactly what Hydra lists for an app whose configs are all files."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    groups = "".join(
        f"{folder.name}: {', '.join(sorted(p.stem for p in folder.glob('*.yaml')))}\n"
        for folder in sorted(CONF_DIR.iterdir())
        if folder.is_dir() and folder.name != "hydra"
    )
    config = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    return string.Template(cfg.hydra.help.template).safe_substitute(
        APP_CONFIG_GROUPS=groups, CONFIG=config
    )


def main() -> float | None:
    """The ``losslab`` command: ``--help`` answers at once, everything else is the Hydra app."""
    arguments = sys.argv[1:]
    if {"-h", "--help"} & set(arguments):
        with reported_errors("losslab"):
            print(help_text([a for a in arguments if a not in ("-h", "--help")]))
        return None
    # Ctrl-C or SIGTERM to a sweep's own process: one line, exit 130, the parent run KILLED
    with reported_errors("losslab"), sigterm_as_exception():
        return hydra_app()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_app(cfg: DictConfig) -> float | None:
    """A sweep's job logs a child of the sweep's parent run and trains without a progress bar
    (the sweep prints jobs done and time left); a failing job fails alone."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from losslab.sweep import PARENT_RUN_ENV

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    output_dir = Path(hydra_cfg.runtime.output_dir)
    extra_tags = None
    if multirun:
        extra_tags = {"losslab.job": str(hydra_cfg.job.num)}
        if os.environ.get(PARENT_RUN_ENV):
            extra_tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
        with open_dict(cfg):
            cfg.trainer.verbose = 0
    with reported_errors("losslab", raise_instead=JobFailed if multirun else None):
        results = run(
            cfg,
            output_dir,
            "multirun" if multirun else "cli",
            list(hydra_cfg.overrides.task),
            extra_tags,
        )
        print(f"losslab: outputs in {output_dir}")
        for split in ("train", "test"):
            scores = ", ".join(f"{k}={v:.4f}" for k, v in results[split].items())
            print(f"  {split}: {scores}")
        if cfg.get("optimized_metric"):
            return objective(results, cfg.optimized_metric)
    return None


if __name__ == "__main__":
    main()
