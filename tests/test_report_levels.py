"""The report of a swept level (label noise, outliers): the metric against the level, its table,
and the memorization curves of label noise.

Runs are built by hand as the report reads them (params as MLflow's strings), so every expected
number is computed here from values the test chose; one test logs them into a real store.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from losslab import report
from losslab.report import RunResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1, 2)
EPOCHS = 4
NOISE_LEVELS = ("0", "0.2", "0.4")  # "0": the default, as MLflow stores an int
OUTLIER_LEVELS = ("0", "0.1", "0.2")
# how much each loss loses per unit of level: one degrades, one is robust
SLOPES = {"cce": 0.5, "kld": 0.1, "mse": 20.0, "huber": 2.0}


def final(loss: str, level: str, seed: int) -> float:
    """The test metric of one run: falls (accuracy) or rises (mse) with the level, and with
    some seed-to-seed spread."""
    if loss in ("cce", "kld"):
        return 0.95 - SLOPES[loss] * float(level) - 0.01 * seed * (1 + float(level))
    return 1.0 + SLOPES[loss] * float(level) + 0.05 * seed


def fit_curves(level: str, seed: int) -> dict[str, list[float]]:
    """Memorization curves rising over the epochs, faster at more noise."""
    epochs = np.arange(1, EPOCHS + 1)
    noisy = 0.05 + 0.1 * float(level) * epochs + 0.01 * seed
    clean = 0.5 + 0.1 * epochs - 0.01 * seed
    return {"noisy_fit": noisy.tolist(), "clean_fit": clean.tolist()}


def run(dataset: str, loss: str, seed: int, extra: dict[str, str] | None = None) -> RunResult:
    """A finished run; ``extra`` are further params (the levels, a loss's own params)."""
    extra = extra or {}
    metric = "mse" if dataset == "regression" else "accuracy"
    params = {
        "dataset.name": dataset,
        "loss.name": loss,
        "optimizer.name": "adam",
        "seed": str(seed),
        "trainer.epochs": str(EPOCHS),
        "dataset.imbalance": "1",
        **extra,
    }
    noise = extra.get("dataset.label_noise", "0")
    value = final(loss, max(noise, extra.get("dataset.outliers", "0"), key=float), seed)
    curves = {
        "val_loss": [value + 0.1 * (EPOCHS - e) for e in range(1, EPOCHS + 1)],
        f"val_{metric}": [value] * EPOCHS,
    }
    if float(noise) > 0:
        curves |= fit_curves(noise, seed)
    metrics = {f"test_{metric}": value, "test_loss": value / 2, "train_seconds": 1.0}
    return RunResult(params, metrics, curves)


def noise_study() -> list[RunResult]:
    """digits × {cce, kld} × label noise {0, 0.2, 0.4} × 3 seeds."""
    return [
        run("digits", loss, seed, {"dataset.label_noise": level, "dataset.outliers": "0"})
        for loss in ("cce", "kld")
        for level in NOISE_LEVELS
        for seed in SEEDS
    ]


def assert_png(path: Path) -> None:
    assert path.is_file(), sorted(p.name for p in path.parent.iterdir())
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000, path


def level_table(markdown: str, heading: str) -> list[str]:
    """The lines of the table under ``heading`` in the report's Markdown."""
    after = markdown.split(f"### {heading}\n\n", 1)[1]
    return after.split("\n\n", 1)[0].strip().splitlines()


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def test_swept_label_noise_draws_level_and_memorization_figures(tmp_path: Path) -> None:
    report.write(noise_study(), tmp_path)
    for name in ("level_digits.png", "memorization_digits.png"):
        assert_png(tmp_path / name)
    for name in ("curves_digits.png", "test_metric.png", "report.md", "report.csv"):
        assert (tmp_path / name).is_file(), name  # the report as before, too


def test_level_table_has_mean_and_std_over_seeds(tmp_path: Path) -> None:
    markdown = report.write(noise_study(), tmp_path)
    assert markdown == (tmp_path / "report.md").read_text(encoding="utf-8")
    header, rule, *rows = level_table(markdown, "digits: test_accuracy by dataset.label_noise")
    assert header == "| configuration | 0 | 0.2 | 0.4 |"
    assert rule == "|---|---|---|---|"
    for loss in ("cce", "kld"):
        cells = [cell([final(loss, level, seed) for seed in SEEDS]) for level in NOISE_LEVELS]
        assert f"| digits·{loss}·adam | " + " | ".join(cells) + " |" in rows
    assert len(rows) == 2  # a row per loss, the level not in its label
    # the main table keeps a row per configuration, told apart by the level
    assert "| digits·cce·adam dataset.label_noise=0.2 | 3 | test_accuracy" in markdown


def test_level_lines_are_labelled_without_the_level_but_with_loss_params() -> None:
    runs = [
        run("digits", "cce", seed, {"dataset.label_noise": level, "loss.q": q})
        for q in ("0.3", "0.7")
        for level in NOISE_LEVELS
        for seed in SEEDS
    ]
    configurations = report.group(runs)
    assert report.swept_level(configurations) == "dataset.label_noise"
    lines = report.level_lines(configurations, "dataset.label_noise")
    assert [line.label for line in lines] == [f"digits·cce·adam loss.q={q}" for q in ("0.3", "0.7")]
    for line in lines:
        levels = [c.level("dataset.label_noise") for c in line.configurations]
        assert levels == [float(level) for level in NOISE_LEVELS]


def test_without_a_swept_level_no_level_figure_is_drawn(tmp_path: Path) -> None:
    # runs from before the level params existed, and runs that all have the default
    old = [run("digits", loss, seed) for loss in ("cce", "kld") for seed in SEEDS]
    default = [run("digits", "cce", seed, {"dataset.label_noise": "0"}) for seed in SEEDS]
    for runs, out in ((old, tmp_path / "old"), (default, tmp_path / "default")):
        markdown = report.write(runs, out)
        assert not list(out.glob("level_*")) and not list(out.glob("memorization_*"))
        assert "###" not in markdown
        assert (out / "test_metric.png").is_file()


def test_one_noise_level_draws_memorization_but_no_level_figure(tmp_path: Path) -> None:
    runs = [run("digits", "cce", seed, {"dataset.label_noise": "0.2"}) for seed in SEEDS]
    markdown = report.write(runs, tmp_path)
    assert_png(tmp_path / "memorization_digits.png")
    assert not list(tmp_path.glob("level_*")) and "###" not in markdown


def test_outliers_level_figure_with_the_regression_metric(tmp_path: Path) -> None:
    runs = [
        run("regression", loss, seed, {"dataset.outliers": level, **extra})
        for loss, extra in (("mse", {}), ("huber", {"loss.delta": "1.0"}))
        for level in OUTLIER_LEVELS
        for seed in SEEDS
    ]
    markdown = report.write(runs, tmp_path)
    assert_png(tmp_path / "level_regression.png")
    assert not list(tmp_path.glob("memorization_*"))  # no label noise
    header, _, *rows = level_table(markdown, "regression: test_mse by dataset.outliers")
    assert header == "| configuration | 0 | 0.1 | 0.2 |"
    # sorted by loss name, as the main table
    expected = [
        f"| regression·{loss}·adam | "
        + " | ".join(cell([final(loss, level, s) for s in SEEDS]) for level in OUTLIER_LEVELS)
        + " |"
        for loss in ("huber", "mse")
    ]
    assert rows == expected


def test_from_store_reads_the_memorization_curves(tmp_path: Path, tracking_uri: str) -> None:
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("losslab")
    stamp = int(time.time() * 1000)
    logged = {}
    for level in ("0", "0.2"):
        run_id = client.create_run(experiment_id).info.run_id
        params = {
            "dataset.name": "digits",
            "loss.name": "cce",
            "optimizer.name": "adam",
            "seed": "0",
            "dataset.label_noise": level,
        }
        curves = {"val_loss": [1.0, 0.8, 0.6, 0.5], "val_accuracy": [0.5, 0.6, 0.7, 0.8]}
        if level != "0":
            curves |= fit_curves(level, 0)
        metrics = [Metric("test_accuracy", final("cce", level, 0), stamp, 0)]
        for name, values in curves.items():  # logged last epoch first: read back by step
            metrics += [Metric(name, values[s], stamp, s) for s in reversed(range(EPOCHS))]
        client.log_batch(run_id, metrics, [Param(k, v) for k, v in params.items()])
        client.set_terminated(run_id, "FINISHED")
        logged[level] = curves

    found = report.from_store(client, client.search_runs([experiment_id]))
    by_level = {r.params["dataset.label_noise"]: r for r in found}
    assert sorted(by_level) == ["0", "0.2"]
    for name in ("noisy_fit", "clean_fit", "val_loss", "val_accuracy"):
        assert by_level["0.2"].curves[name] == pytest.approx(logged["0.2"][name])
    assert "noisy_fit" not in by_level["0"].curves  # not asked of a run without noise

    report.write(found, tmp_path / "report")
    assert_png(tmp_path / "report" / "level_digits.png")
    assert_png(tmp_path / "report" / "memorization_digits.png")
