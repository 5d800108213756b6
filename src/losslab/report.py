"""``losslab-report``: compare runs from MLflow, with seed-to-seed spread.

A sweep writes the same report from its jobs' folders (:func:`from_folders`), tracked or not.
Runs that differ only by seed form one configuration. For each: n, the final test metric as
mean ± std and min/max, test loss, success rate where the dataset defines one, train time; an
overlay of validation curves (mean ± std band), a bar chart with error bars, and one sentence
per comparison saying whether a difference exceeds the spread.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from losslab import losses

IGNORED_PARAMS = ("seed", "trainer.verbose", "tracking.uri", "tracking.experiment", "preset")
SECONDS_METRIC = "train_seconds"


@dataclass(frozen=True)
class RunResult:
    """What the report needs of one finished run, read from MLflow (:func:`from_store`) or
    from a sweep job's folder (:func:`from_folders`): the same names either way."""

    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]]


def _curve_names(loss_name: str) -> list[str]:
    return ["val_loss", f"val_{losses.get(loss_name).metrics[0]}"]


@dataclass
class Configuration:
    """Runs of one configuration (all params equal but the seed)."""

    key: tuple
    params: dict[str, str]
    runs: list[RunResult] = field(default_factory=list)
    label: str = ""

    @property
    def dataset(self) -> str:
        return self.params.get("dataset.name", "?")

    @property
    def metric(self) -> str:
        return losses.get(self.params["loss.name"]).metrics[0]

    @property
    def goal(self) -> str:
        return losses.METRIC_GOALS[self.metric]

    def finals(self, name: str) -> np.ndarray:
        values = [run.metrics.get(name) for run in self.runs]
        return np.array([v for v in values if v is not None], dtype=float)

    @property
    def values(self) -> np.ndarray:
        return self.finals(f"test_{self.metric}")

    @property
    def success_rate(self) -> float | None:
        threshold = self.params.get("dataset.success_accuracy", "None")
        if threshold in ("None", "") or self.metric != "accuracy":
            return None
        return float(np.mean(self.values >= float(threshold))) if self.values.size else None


def child_runs(client: Any, parent_run_id: str) -> list[Any]:
    from mlflow.exceptions import MlflowException

    from losslab.config import ConfigError

    try:
        run = client.get_run(parent_run_id)
    except MlflowException:
        raise ConfigError(f"run {parent_run_id}: not found in the store") from None
    return client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=5000,
    )


def from_store(client: Any, runs: list[Any]) -> list[RunResult]:
    """The finished losslab runs among MLflow ``runs``, with the curves the figures show."""
    found = []
    for run in runs:
        params = run.data.params
        if run.info.status != "FINISHED" or "loss.name" not in params:
            continue
        curves = {}
        for name in _curve_names(params["loss.name"]):
            points = client.get_metric_history(run.info.run_id, name)
            curves[name] = [m.value for m in sorted(points, key=lambda m: m.step)]
        found.append(RunResult(params, run.data.metrics, curves))
    return found


def from_folders(folders: list[Path]) -> list[RunResult]:
    """The runs of a sweep's finished jobs, from the files each wrote into its folder: Hydra's
    config, ``metrics.json``, and the training's history and time. No store is needed, so an
    untracked sweep gets its report too, and a tracked one without waiting for its logging."""
    from omegaconf import OmegaConf

    from losslab import steps, tracking
    from losslab.config import validate
    from losslab.storage import read_history_csv, read_json

    found = []
    for folder in folders:
        layout = steps.Layout(folder)
        params = tracking.param_values(validate(OmegaConf.load(folder / ".hydra" / "config.yaml")))
        metrics = {**tracking.final_metrics(read_json(layout.metrics)), **read_json(layout.train)}
        found.append(RunResult(params, metrics, read_history_csv(layout.history)))
    return found


def group(runs: list[RunResult]) -> list[Configuration]:
    """Runs grouped by their params less the seed; labels made unique."""
    configurations: dict[tuple, Configuration] = {}
    for run in runs:
        params = {k: v for k, v in run.params.items() if k not in IGNORED_PARAMS}
        key = tuple(sorted(params.items()))
        configurations.setdefault(key, Configuration(key, params)).runs.append(run)
    found = sorted(configurations.values(), key=lambda c: (c.dataset, c.params["loss.name"]))
    for configuration in found:
        p = configuration.params
        configuration.label = f"{p['dataset.name']}·{p['loss.name']}·{p['optimizer.name']}"
    by_label: dict[str, list[Configuration]] = {}
    for configuration in found:
        by_label.setdefault(configuration.label, []).append(configuration)
    for same in by_label.values():
        if len(same) > 1:
            varying = [k for k in same[0].params if len({c.params.get(k) for c in same}) > 1]
            for configuration in same:
                extra = " ".join(f"{k}={configuration.params.get(k)}" for k in varying)
                configuration.label = f"{configuration.label} {extra}"
    return found


def _fmt(value: float | None, digits: int = 4) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def table_rows(configurations: list[Configuration]) -> list[dict[str, str]]:
    rows = []
    for c in configurations:
        values, test_loss, seconds = c.values, c.finals("test_loss"), c.finals(SECONDS_METRIC)
        rows.append(
            {
                "configuration": c.label,
                "dataset": c.dataset,
                "n": str(len(c.runs)),
                "metric": f"test_{c.metric}",
                "mean": _fmt(values.mean() if values.size else None),
                "std": _fmt(values.std(ddof=1) if values.size > 1 else None),
                "min": _fmt(values.min() if values.size else None),
                "max": _fmt(values.max() if values.size else None),
                "test_loss": _fmt(test_loss.mean() if test_loss.size else None),
                "success_rate": _fmt(c.success_rate, 2),
                "train_s": _fmt(seconds.mean() if seconds.size else None, 1),
            }
        )
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    columns = ["configuration", "n", "test metric (mean ± std)", "min", "max", "test loss"]
    columns += ["success", "train s"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for r in rows:
        spread = f"{r['mean']} ± {r['std']}" if r["std"] != "–" else r["mean"]
        lines.append(
            f"| {r['configuration']} | {r['n']} | {r['metric']} {spread} | {r['min']} | {r['max']} "
            f"| {r['test_loss']} | {r['success_rate']} | {r['train_s']} |"
        )
    return "\n".join(lines) + "\n"


def comparisons(configurations: list[Configuration]) -> list[str]:
    """Per dataset, the best configuration against each other one, judged by the spread."""
    sentences = []
    by_dataset: dict[str, list[Configuration]] = {}
    for c in configurations:
        if c.values.size:
            by_dataset.setdefault(c.dataset, []).append(c)
    for dataset, found in by_dataset.items():
        sign = 1 if found[0].goal == "max" else -1
        best = max(found, key=lambda c: sign * c.values.mean())
        for other in found:
            if other is best or other.metric != best.metric:
                continue
            diff = abs(best.values.mean() - other.values.mean())
            head = (
                f"{best.label} vs {other.label} on {dataset}: {best.metric} difference {diff:.3g}"
            )
            if min(best.values.size, other.values.size) < 2:
                sentences.append(f"{head}; one run each, spread unknown → repeat with more seeds")
                continue
            spread = math.hypot(best.values.std(ddof=1), other.values.std(ddof=1))
            if diff > spread:
                sentences.append(f"{head} exceeds spread {spread:.3g} → {best.label} is better")
            else:
                sentences.append(f"{head} within spread {spread:.3g} → not distinguishable")
    return sentences


def _stacked(configuration: Configuration, name: str) -> np.ndarray | None:
    curves = [run.curves.get(name) for run in configuration.runs]
    if not curves or not all(curves):
        return None
    length = min(len(c) for c in curves)
    return np.array([c[:length] for c in curves], dtype=float)


def draw(
    configurations: list[Configuration],
    out_dir: Path,
    run_all: Callable[[list[Callable[[], None]]], Any] | None = None,
) -> list[Path]:
    """Validation curves per dataset (mean ± std band) and the final test metric with errors.

    Matplotlib spends about 0.4 s of CPU on each figure: ``run_all`` calls the figures'
    drawing functions, by default one after another (a sweep hands them to its idle workers,
    which have Matplotlib imported).
    """
    datasets = sorted({c.dataset for c in configurations})
    figures = [
        (out_dir / f"curves_{d}.png", functools.partial(_curves, configurations, d))
        for d in datasets
    ]
    figures.append(
        (out_dir / "test_metric.png", functools.partial(_test_metric, configurations, datasets))
    )
    calls = [functools.partial(figure, target) for target, figure in figures]
    if run_all is None:
        for call in calls:
            call()
    else:
        run_all(calls)
    return [target for target, _ in figures]


def _curves(configurations: list[Configuration], dataset: str, target: Path) -> None:
    from losslab.plots import save_figure, spans_decades, subplots

    found = [c for c in configurations if c.dataset == dataset]
    names = _curve_names(found[0].params["loss.name"])
    figure, axes = subplots(1, 2, figsize=(11, 4))
    for axis, name in zip(axes, names, strict=True):
        everything = []
        for c in found:
            curves = _stacked(c, name)
            if curves is None:
                continue
            mean, std = curves.mean(axis=0), curves.std(axis=0)
            epochs = np.arange(1, len(mean) + 1)
            axis.plot(epochs, mean, label=f"{c.label} (n={len(curves)})")
            axis.fill_between(epochs, mean - std, mean + std, alpha=0.2)
            everything.append(curves.ravel())
        if everything and spans_decades(np.concatenate(everything)):
            axis.set_yscale("log")
        axis.set(xlabel="epoch", ylabel=name, title=f"{dataset}: {name}")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(figure, target)


def _test_metric(configurations: list[Configuration], datasets: list[str], target: Path) -> None:
    from losslab.plots import save_figure, subplots

    figure, axes = subplots(1, len(datasets), figsize=(4.5 * len(datasets), 4), squeeze=False)
    for axis, dataset in zip(axes[0], datasets, strict=True):
        found = [c for c in configurations if c.dataset == dataset and c.values.size]
        means = [c.values.mean() for c in found]
        errors = [c.values.std(ddof=1) if c.values.size > 1 else 0.0 for c in found]
        axis.bar(range(len(found)), means, yerr=errors, capsize=4, color="tab:blue", alpha=0.8)
        axis.set_xticks(range(len(found)), [c.label for c in found], rotation=30, ha="right")
        axis.set(title=dataset, ylabel=f"test {found[0].metric}" if found else "")
        axis.grid(axis="y", alpha=0.3)
    save_figure(figure, target)


def write(
    runs: list[RunResult],
    out_dir: Path,
    run_all: Callable[[list[Callable[[], None]]], Any] | None = None,
) -> str:
    """Write the table (Markdown, CSV), sentences and figures (:func:`draw`) into ``out_dir``;
    return the Markdown."""
    from losslab.storage import write_text

    configurations = group(runs)
    rows = table_rows(configurations)
    text = markdown(rows)
    sentences = comparisons(configurations)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["configuration"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(out_dir / "report.csv", buffer.getvalue())
    summary = text + "\n" + "".join(f"- {s}\n" for s in sentences)
    write_text(out_dir / "report.md", summary)
    if configurations:
        draw(configurations, out_dir, run_all)
    return summary


def _runs(client: Any, args: argparse.Namespace) -> tuple[list[Any], str | None]:
    from losslab.config import ConfigError

    if args.parent:
        return child_runs(client, args.parent), args.parent
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise ConfigError(f"--experiment: no experiment '{args.experiment}' in the store")
    if args.latest:
        parents = client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`losslab.sweep` = 'true'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not parents:
            raise ConfigError("--latest: no sweep in the store yet; run `losslab -m ...` first")
        return child_runs(client, parents[0].info.run_id), parents[0].info.run_id
    found = client.search_runs(
        [experiment.experiment_id], filter_string=args.filter or "", max_results=5000
    )
    return [r for r in found if r.data.tags.get("losslab.sweep") != "true"], None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="losslab-report", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--parent", help="the sweep's parent run id")
    which.add_argument("--latest", action="store_true", help="the newest sweep")
    which.add_argument(
        "--filter", help="an MLflow search filter, e.g. \"params.`loss.name` = 'hinge'\""
    )
    parser.add_argument("--experiment", default="losslab", help="experiment name (default losslab)")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else mlflow.db")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder to write into (default: report/ in the sweep's folder, else outputs/report)",
    )
    args = parser.parse_args(argv)

    from losslab.cli import reported_errors

    with reported_errors("losslab-report"):
        from mlflow.tracking import MlflowClient

        from losslab.config import ConfigError
        from losslab.tracking import client_uri, resolve_uri

        client = MlflowClient(client_uri(resolve_uri(args.tracking_uri)))
        runs, parent = _runs(client, args)
        if not runs:
            raise ConfigError("no runs matched; check --parent, --experiment or --filter")
        if args.out is None:
            sweep_dir = parent and client.get_run(parent).data.tags.get("losslab.sweep_dir")
            in_sweep = sweep_dir and Path(sweep_dir).is_dir()
            args.out = Path(sweep_dir) / "report" if in_sweep else Path("outputs", "report")
        print(write(from_store(client, runs), args.out), end="")
        if parent:
            client.log_artifacts(parent, str(args.out), "report")
        print(
            f"losslab-report: wrote {args.out}/"
            + (f" and logged it to run {parent}" if parent else "")
        )


if __name__ == "__main__":
    main()
