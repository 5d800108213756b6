"""``losslab-stage STEP``: one DVC stage, reading ``params.yaml`` and writing its declared outputs.

``generate`` runs without MLflow; ``train`` starts the pipeline's MLflow run, tagged with the
model file's hash; ``evaluate`` and ``plot`` find that run by the hash of the model they read and
add to it (or, if the store holds no such run, start one of their own).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from losslab.cli import reported_errors
from losslab.config import load_params

STEP_NAMES = ("generate", "train", "evaluate", "plot")


def run_stage(step: str, params: Path, root: Path) -> None:
    from losslab import steps
    from losslab.storage import file_md5

    cfg = load_params(params)
    layout = steps.Layout(root)
    if step == "generate":  # no MLflow run yet: the train stage starts it
        steps.generate(cfg, layout)
        return
    from losslab import tracking

    if step == "train":
        with tracking.run(cfg, "dvc"):
            steps.train(cfg, layout)
        return
    md5 = file_md5(layout.model)
    run_id = tracking.run_of_model(cfg, md5) if cfg.tracking.enabled else None
    tags = {tracking.MODEL_TAG: md5}
    with tracking.run(cfg, "dvc", run_id=run_id, describe=run_id is None, extra_tags=tags):
        steps.STEPS[step](cfg, layout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="losslab-stage", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=STEP_NAMES)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--root", type=Path, default=Path("."), help="folder of the outputs")
    args = parser.parse_args(argv)
    with reported_errors(f"losslab-stage {args.step}"):
        run_stage(args.step, args.params, args.root)


if __name__ == "__main__":
    main()
