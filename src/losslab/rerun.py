"""``losslab-rerun RUN_ID``: re-create a run from its MLflow record alone and compare.

The record holds the resolved config (``config/config.yaml``), the data's hash and the library
versions. Differences in versions or data are reported before training; afterwards every final
metric is compared with the original, and the exit status says whether all matched exactly.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any


def recorded_config(client: Any, run_id: str, tracking_uri: str) -> Any:
    """The run's resolved config, validated, pointed at ``tracking_uri`` (the recorded URI has
    its password masked)."""
    from omegaconf import OmegaConf

    from losslab.config import ConfigError, validate

    try:
        local = client.download_artifacts(run_id, "config/config.yaml", tempfile.mkdtemp())
    except Exception as error:  # MLflow raises its own types for a missing run or artifact
        raise ConfigError(f"run {run_id}: no recorded config/config.yaml ({error})") from None
    raw = OmegaConf.load(local)
    raw.tracking.uri = tracking_uri
    return validate(raw)


def version_differences(run: Any) -> list[str]:
    from losslab.tracking import library_versions

    now = library_versions()
    return [
        f"{key}: recorded {value}, installed {now.get(key, 'none')}"
        for key, value in run.data.tags.items()
        if key.startswith("version.") and now.get(key) != value
    ]


def compare(original: dict[str, float], again: dict[str, float]) -> list[tuple[str, float, float]]:
    names = sorted(
        k for k in original if k.startswith(("train_", "test_")) and k != "train_seconds"
    )
    return [(name, original[name], again.get(name, float("nan"))) for name in names]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="losslab-rerun", description=__doc__.splitlines()[0])
    parser.add_argument("run_id")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else mlflow.db")
    args = parser.parse_args(argv)

    from losslab.cli import reported_errors

    with reported_errors("losslab-rerun"):
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from losslab.app import run
        from losslab.config import ConfigError
        from losslab.datasets import make_dataset
        from losslab.tracking import client_uri, resolve_uri

        uri = resolve_uri(args.tracking_uri)
        client = MlflowClient(client_uri(uri))
        try:
            original = client.get_run(args.run_id)
        except MlflowException:
            raise ConfigError(f"run {args.run_id}: not found in the store") from None
        cfg = recorded_config(client, args.run_id, uri)
        for line in version_differences(original):
            print(f"losslab-rerun: version differs: {line}")
        recorded_hash = next(
            (
                t.value
                for d in original.inputs.dataset_inputs
                for t in d.tags
                if t.key == "losslab.data_hash"
            ),
            None,
        )
        data_hash = make_dataset(cfg.dataset).content_hash()
        if recorded_hash and recorded_hash != data_hash:
            print(
                f"losslab-rerun: data differs: recorded {recorded_hash[:12]}, now {data_hash[:12]}"
            )
        with tempfile.TemporaryDirectory() as out:
            run(cfg, Path(out), "rerun", extra_tags={"losslab.rerun_of": args.run_id})
            again = mlflow.last_active_run()
        rows = compare(original.data.metrics, client.get_run(again.info.run_id).data.metrics)
        mismatched = [row for row in rows if row[1] != row[2]]
        print(f"losslab-rerun: new run {again.info.run_id}")
        for name, before, after in rows:
            verdict = "same" if before == after else f"differs by {after - before:+.3g}"
            print(f"  {name:20s} {before:.6g} → {after:.6g}  {verdict}")
        print(f"losslab-rerun: {len(rows) - len(mismatched)} of {len(rows)} metrics identical")
        sys.exit(1 if mismatched or not rows else 0)


if __name__ == "__main__":
    main()
