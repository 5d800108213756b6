"""``losslab-report``: compare runs from MLflow, with seed-to-seed spread.

A sweep writes the same report from its jobs' folders (:func:`from_folders`), tracked or not.
Runs that differ only by seed form one configuration. For each: n, the final test metric as
mean ± std and min/max, test loss, success rate where the dataset defines one, train time; an
overlay of validation curves (mean ± std band), a bar chart with error bars, and one sentence
per comparison saying whether a difference exceeds the spread. Where a dataset's configurations
sweep a level (label noise, outliers), also the test metric against the level, a table of it,
and, for label noise, the memorization curves (how fast the noisy labels are fitted).
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
LEVELS = {
    "dataset.label_noise": "label noise (share of training labels flipped)",
    "dataset.outliers": "outliers (share of training targets shifted)",
}
NOISE = "dataset.label_noise"
FIT_CURVES = ("noisy_fit", "clean_fit")  # per epoch, in runs with label noise


@dataclass(frozen=True)
class RunResult:
    """What the report needs of one finished run, read from MLflow (:func:`from_store`) or
    from a sweep job's folder (:func:`from_folders`): the same names either way."""

    params: dict[str, str]
    metrics: dict[str, float]
    curves: dict[str, list[float]]


def _curve_names(params: dict[str, str]) -> list[str]:
    return ["val_loss", f"val_{losses.from_params(params).metrics[0]}"]


def level_of(params: dict[str, str], name: str) -> float:
    """A level param's value: 0 where a run has none (from before the param existed) or where
    its dataset leaves it unset."""
    value = params.get(name, "None")
    return 0.0 if value in ("None", "") else float(value)


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
        return losses.from_params(self.params).metrics[0]

    @property
    def goal(self) -> str:
        return losses.METRIC_GOALS[self.metric]

    def finals(self, name: str) -> np.ndarray:
        values = [run.metrics.get(name) for run in self.runs]
        return np.array([v for v in values if v is not None], dtype=float)

    @property
    def values(self) -> np.ndarray:
        return self.finals(f"test_{self.metric}")

    def level(self, name: str) -> float:
        return level_of(self.params, name)

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
        names = _curve_names(params)
        if level_of(params, NOISE) > 0:
            names += FIT_CURVES
        for name in names:
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
    for configuration, label in zip(found, _labels([c.params for c in found]), strict=True):
        configuration.label = label
    return found


def _labels(params: list[dict[str, str]]) -> list[str]:
    """``dataset·loss·optimizer``, followed by the params that tell apart those sharing it."""
    labels = [f"{p['dataset.name']}·{p['loss.name']}·{p['optimizer.name']}" for p in params]
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    for same in by_label.values():
        if len(same) > 1:
            varying = [k for k in params[same[0]] if len({params[i].get(k) for i in same}) > 1]
            for i in same:
                labels[i] += " " + " ".join(f"{k}={params[i].get(k)}" for k in varying)
    return labels


@dataclass
class Line:
    """Configurations that differ only in a level: a line of the level figure, a row of its
    table, a subplot of the memorization figure."""

    label: str
    configurations: list[Configuration]  # by level, ascending


def swept_level(configurations: list[Configuration]) -> str | None:
    """The level param (of :data:`LEVELS`) with more than one value among ``configurations``."""
    for name in LEVELS:
        if len({c.level(name) for c in configurations}) > 1:
            return name
    return None


def level_lines(configurations: list[Configuration], name: str) -> list[Line]:
    """``configurations`` grouped by their params less the level ``name``, labelled without it,
    so that a loss swept over levels is one line named by the loss (and its own params)."""
    by_rest: dict[tuple, list[Configuration]] = {}
    for c in configurations:
        rest = tuple(sorted((k, v) for k, v in c.params.items() if k != name))
        by_rest.setdefault(rest, []).append(c)
    labels = _labels([dict(rest) for rest in by_rest])
    return [
        Line(label, sorted(found, key=lambda c: c.level(name)))
        for label, found in zip(labels, by_rest.values(), strict=True)
    ]


def _fmt(value: float | None, digits: int = 4) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.{digits}f}"
    )


def _mean_std(values: np.ndarray) -> str:
    if values.size < 2:
        return _fmt(values.mean() if values.size else None)
    return f"{_fmt(values.mean())} ± {_fmt(values.std(ddof=1))}"


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


def level_tables(configurations: list[Configuration]) -> str:
    """Per dataset that sweeps a level, the test metric (mean ± std over seeds) with a row per
    loss and a column per level: how each loss degrades, at a glance."""
    tables = []
    for dataset in sorted({c.dataset for c in configurations}):
        found = [c for c in configurations if c.dataset == dataset]
        name = swept_level(found)
        if name is None:
            continue
        levels = sorted({c.level(name) for c in found})
        tables.append(f"\n### {dataset}: test_{found[0].metric} by {name}\n\n")
        tables.append("| configuration | " + " | ".join(f"{v:g}" for v in levels) + " |\n")
        tables.append("|---" * (len(levels) + 1) + "|\n")
        for line in level_lines(found, name):
            by_level = {c.level(name): c.values for c in line.configurations}
            cells = [_mean_std(by_level.get(v, np.array([]))) for v in levels]
            tables.append(f"| {line.label} | " + " | ".join(cells) + " |\n")
    return "".join(tables)


def comparisons(configurations: list[Configuration]) -> list[str]:
    """Per dataset (and level of corruption), the best configuration against each other one,
    judged by the spread."""
    sentences = []
    by_dataset: dict[str, list[Configuration]] = {}
    for c in configurations:
        if c.values.size:
            levels = "".join(f" at {k}={c.level(k):g}" for k in LEVELS if c.level(k) > 0)
            by_dataset.setdefault(c.dataset + levels, []).append(c)
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
    """Validation curves per dataset (mean ± std band) and the final test metric with errors;
    where a dataset sweeps a level, the metric against it, and the memorization curves.

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
    for d in datasets:
        found = [c for c in configurations if c.dataset == d]
        name = swept_level(found)
        if name is not None:
            figures.append((out_dir / f"level_{d}.png", functools.partial(_levels, found, d, name)))
        memorizing = [c for c in found if _memorizes(c)]
        if memorizing:
            figures.append(
                (out_dir / f"memorization_{d}.png", functools.partial(_memorization, memorizing, d))
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
    names = _curve_names(found[0].params)
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


def _levels(configurations: list[Configuration], dataset: str, name: str, target: Path) -> None:
    """How each loss's test metric degrades with the level: a line per loss, mean ± std."""
    from losslab.plots import save_figure, spans_decades, subplots

    figure, axis = subplots(figsize=(6, 4))
    everything = []
    for line in level_lines(configurations, name):
        found = [c for c in line.configurations if c.values.size]
        if not found:
            continue
        means = [c.values.mean() for c in found]
        errors = [c.values.std(ddof=1) if c.values.size > 1 else 0.0 for c in found]
        sizes = sorted({c.values.size for c in found})
        n = f"n={sizes[0]}" if len(sizes) == 1 else f"n={sizes[0]}–{sizes[-1]}"
        x = [c.level(name) for c in found]
        axis.errorbar(x, means, yerr=errors, marker="o", capsize=4, label=f"{line.label} ({n})")
        everything.append(np.asarray(means))
    if everything and spans_decades(np.concatenate(everything)):
        axis.set_yscale("log")
    axis.set_xticks(sorted({c.level(name) for c in configurations}))
    axis.set(xlabel=LEVELS[name], ylabel=f"test {configurations[0].metric}", title=dataset)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    save_figure(figure, target)


def _memorizes(configuration: Configuration) -> bool:
    """Trained on noisy labels, with the curves of how it fits them."""
    return configuration.level(NOISE) > 0 and all(
        _stacked(configuration, name) is not None for name in FIT_CURVES
    )


def _memorization(configurations: list[Configuration], dataset: str, target: Path) -> None:
    """A subplot per loss: the share of noisy (dashed) and clean (solid) training rows predicted
    as their label, per epoch and noise level. A loss robust to the noise keeps the dashed
    curves low while the solid ones rise."""
    from losslab.plots import save_figure, subplots

    found = level_lines(configurations, NOISE)
    levels = sorted({c.level(NOISE) for c in configurations})
    columns = min(len(found), 4)
    rows = math.ceil(len(found) / columns)
    figure, axes = subplots(
        rows, columns, figsize=(4.5 * columns, 3.6 * rows), squeeze=False, sharey=True
    )
    for axis in axes.flat[len(found) :]:
        axis.set_visible(False)
    for axis, line in zip(axes.flat, found, strict=False):
        for c in line.configurations:
            colour = f"C{levels.index(c.level(NOISE))}"
            for name, style in zip(FIT_CURVES, ("--", "-"), strict=True):
                curves = _stacked(c, name)
                mean, std = curves.mean(axis=0), curves.std(axis=0)
                epochs = np.arange(1, len(mean) + 1)
                label = f"{name} p={c.level(NOISE):g} (n={len(curves)})"
                axis.plot(epochs, mean, style, color=colour, label=label)
                axis.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2)
        axis.set(xlabel="epoch", ylabel="share predicted as its label", ylim=(0, 1))
        axis.set_title(line.label, fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"{dataset}: memorization of noisy labels")
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
    summary = text + "\n" + "".join(f"- {s}\n" for s in sentences) + level_tables(configurations)
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
