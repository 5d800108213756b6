"""``losslab``: compose an experiment with Hydra and run all four steps in one process.

A thin ``@hydra.main`` over :func:`run`, which tests and other entry points call directly.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from losslab.cli import reported_errors
from losslab.config import validate

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def run(
    cfg: DictConfig, output_dir: Path, entry_point: str = "cli", overrides: list[str] = ()
) -> dict[str, dict[str, float]]:
    """Validate ``cfg``, then generate, train, evaluate and plot into ``output_dir``.

    Data generation happens before the MLflow run starts; the other three steps share one run.
    """
    cfg = validate(cfg)
    from losslab import steps, tracking

    layout = steps.Layout(Path(output_dir))
    steps.generate(cfg, layout)
    with tracking.run(cfg, entry_point, overrides):
        steps.train(cfg, layout)
        results = steps.evaluate(cfg, layout)
        steps.plot(cfg, layout)
    return results


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    entry_point = "multirun" if hydra_cfg.mode == RunMode.MULTIRUN else "cli"
    output_dir = Path(hydra_cfg.runtime.output_dir)
    with reported_errors("losslab"):
        results = run(cfg, output_dir, entry_point, list(hydra_cfg.overrides.task))
        print(f"losslab: outputs in {output_dir}")
        for split, scores in results.items():
            print(f"  {split}: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
