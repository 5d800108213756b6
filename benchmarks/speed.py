"""The reference study side by side: the tutorials' literal scripts vs losslab vs the floor.

One command, one machine, one invocation:

    python benchmarks/speed.py            (about 25 minutes on 2 cores)

- A, reference: each of the 11 reference experiments as the tutorials write it
  (benchmarks/tutorial_style.py), one fresh process each, one after the other, no tracking;
  run --repeats times in all (the extra runs untimed) for the run-to-run spread of its results.
- B, losslab: ``losslab -m study=seeds hydra.sweeper.params.seed=0`` (one repetition of the
  study), MLflow tracking, plots and the study report included, into a store made beforehand;
  :data:`STUDY_ROUNDS` times, the median reported (one study varies by 10 to 20 % here).
- Tracking's cost in a warm sweep worker (benchmarks/tracking_cost.py): MLflow's import and
  store, once per process, and each job's tracking CPU (params, per-epoch metrics, plots and the
  model), tracked against untracked jobs in the same process.
- C, floor: each experiment's training as one compiled XLA program (benchmarks/floor.py), the
  median of 5 runs.
- Scaling (benchmarks/scaling.py), sweep throughput with 1 and 2 workers, how fast the CLI
  answers ``--help`` and a config error, and the lines of the tracking code.
- Against scikit-learn (benchmarks/sklearn_mlp.py): each experiment's training against
  scikit-learn's MLP at equal settings, in one process.

It ends with the three ratios the speed targets are stated in: training against scikit-learn,
A/B, and the throughput of 2 workers against 1.

Wall times include process start-up and imports. Peak RSS is sampled per process (psutil).
Prints a table, writes benchmarks/speed.json and draws docs/benchmark.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np
import psutil
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from losslab.app import CONF_DIR
from losslab.config import as_plain, validate

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
STUDY = ["-m", "study=seeds", "hydra.sweeper.params.seed=0"]
STUDY_ROUNDS = 3  # one study varies by 10 to 20 % from run to run here


def reference_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml") if "real_" not in p.stem)


class Measured:
    """A command's wall time and the peak RSS of each process of its tree."""

    def __init__(
        self, command: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.peaks: dict[int, int] = {}
        self.started_at = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sampler = threading.Thread(target=self._sample, args=(process.pid,), daemon=True)
        sampler.start()
        self.output = process.communicate()[0]
        self.seconds = time.perf_counter() - started
        sampler.join()
        self.root_pid = process.pid
        if process.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{self.output[-3000:]}")

    def _sample(self, pid: int) -> None:
        try:
            root = psutil.Process(pid)
            while root.is_running() and root.status() != psutil.STATUS_ZOMBIE:
                for process in [root, *root.children(recursive=True)]:
                    try:
                        rss = process.memory_info().rss
                    except psutil.Error:
                        continue
                    self.peaks[process.pid] = max(self.peaks.get(process.pid, 0), rss)
                time.sleep(0.1)
        except psutil.Error:
            return

    @property
    def root_peak_gb(self) -> float:
        return self.peaks.get(self.root_pid, 0) / 1e9

    @property
    def worker_peak_gb(self) -> float:
        workers = [rss for pid, rss in self.peaks.items() if pid != self.root_pid]
        return max(workers, default=0) / 1e9


def write_configs(folder: Path, presets: list[str], seed: int) -> dict[str, Path]:
    paths = {}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for preset in presets:
            cfg = validate(compose("config", overrides=[f"experiment={preset}", f"seed={seed}"]))
            paths[preset] = folder / f"{preset}-s{seed}.json"
            paths[preset].write_text(json.dumps(as_plain(cfg)))
    return paths


def run_reference(
    configs: dict[str, Path], folder: Path, timed: bool, repeat: int
) -> dict[str, dict]:
    """Each experiment in its own process; one at a time when timed, else two at once."""

    def one(preset: str) -> tuple[str, dict]:
        out = folder / f"A-{preset}-{repeat}.json"
        measured = Measured([sys.executable, str(HERE / "tutorial_style.py"), configs[preset], out])
        result = json.loads(out.read_text())
        result.update(wall_s=measured.seconds, peak_rss_gb=measured.root_peak_gb)
        if timed:
            print(f"  A {preset:24s} {measured.seconds:6.1f} s", flush=True)
        return preset, result

    with ThreadPoolExecutor(1 if timed else 2) as pool:
        return dict(pool.map(one, configs))


def run_study(folder: Path, name: str) -> tuple[Measured, str]:
    """One study into a store created beforehand, as ``make run`` leaves one."""
    uri = f"sqlite:///{folder / name}.db"
    MlflowClient(uri).search_experiments()
    sweep_dir = f"hydra.sweep.dir={folder / name}"
    measured = Measured([str(BIN / "losslab"), *STUDY, sweep_dir], {"MLFLOW_TRACKING_URI": uri})
    print(f"  {name:26s} {measured.seconds:6.1f} s", flush=True)
    return measured, uri


def median_study(studies: list[tuple[Measured, str]]) -> Measured:
    """The study of median wall time, whose peak RSS is reported with it."""
    return sorted((study for study, _ in studies), key=lambda m: m.seconds)[len(studies) // 2]


def study_runs(uri: str, since: float) -> dict[str, dict]:
    """Per preset: the wall time, training time and test metrics of the job run at or after
    ``since`` (a Unix time), from MLflow."""
    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"attributes.start_time >= {int(since * 1000)}",
        max_results=5000,
    )
    jobs = {}
    for run in runs:
        preset = run.data.tags.get("losslab.preset")
        if not preset or run.data.tags.get("losslab.entry_point") != "multirun":
            continue
        metrics = run.data.metrics
        jobs[preset] = {
            "wall_s": (run.info.end_time - run.info.start_time) / 1000,
            "train_s": metrics["train_seconds"],
            **{k: v for k, v in metrics.items() if k in ("test_loss", "test_accuracy", "test_mse")},
        }
    return jobs


def median_jobs(studies: list[tuple[Measured, str]]) -> dict[str, dict]:
    """Per preset, the median of each figure over several studies (the test metrics are the
    same in each: the runs are deterministic)."""
    studies = [study_runs(uri, measured.started_at) for measured, uri in studies]
    return {
        preset: {key: statistics.median(study[preset][key] for study in studies) for key in job}
        for preset, job in studies[0].items()
    }


def throughput(folder: Path, workers: int, repeat: int, jobs: int = 24) -> float:
    """Jobs per minute of a tracked sweep of ``jobs`` short runs on ``workers`` processes, its
    cold start included, each into its own store made beforehand (a store's creation is paid
    once per store, not per sweep)."""
    name = f"throughput{workers}-{repeat}"
    MlflowClient(f"sqlite:///{folder / name}.db").search_experiments()
    measured = Measured(
        [
            str(BIN / "losslab"),
            "-m",
            "experiment=reg_mse",
            f"seed=range(0,{jobs})",
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={workers}",
            f"hydra.sweep.dir={folder / name}",
        ],
        {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / name}.db"},
    )
    return 60 * jobs / measured.seconds


def source_lines() -> dict[str, int]:
    """Lines of the tracking and sweep modules, and of all of ``src/``."""
    src = HERE.parent / "src"
    count = {p: len(p.read_text().splitlines()) for p in src.rglob("*.py")}
    tracking = [src / "losslab" / name for name in ("tracking.py", "sweep.py")]
    return {"tracking_and_sweep": sum(count[p] for p in tracking), "src": sum(count.values())}


CLI_SAMPLES = 5  # one answer varies from 0.6 to 1.2 s here


def cli_latency() -> dict[str, float]:
    """Median seconds until ``losslab --help`` and a config error answer."""
    timings: dict[str, list[float]] = {"help": [], "config_error": []}
    for _ in range(CLI_SAMPLES):
        for name, args in (("help", ["--help"]), ("config_error", ["loss=no_such_loss"])):
            started = time.perf_counter()
            subprocess.run([str(BIN / "losslab"), *args], capture_output=True, check=False)
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(samples) for name, samples in timings.items()}


def linearity(sizes: dict) -> float:
    """R² of a straight line through (size, seconds)."""
    x = np.array([float(k) for k in sizes])
    y = np.array(list(sizes.values()))
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    return float(1 - residual.var() / y.var())


def prediction_half_width(sd: float, n: int) -> float:
    """Half the width of the 99 % prediction interval for one more run, from ``n`` runs with
    standard deviation ``sd`` (Student's t): with 3 runs the sd is itself so uncertain that
    mean ± 3 sd would call one run in eight an outlier."""
    from scipy import stats

    return float(stats.t.ppf(0.995, n - 1) * sd * (1 + 1 / n) ** 0.5) if n > 1 else 0.0


def spread_check(reference: dict[str, list[dict]], losslab_jobs: dict[str, dict]) -> dict:
    """Whether B's test loss could be one more of A's runs: inside the 99 % prediction
    interval of A's repeats (at least ± 5 % of their mean)."""
    checks = {}
    for preset, results in reference.items():
        values = [r["test_loss"] for r in results]
        mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        tolerance = max(prediction_half_width(sd, len(values)), 0.05 * abs(mean), 1e-4)
        b = losslab_jobs[preset]["test_loss"]
        checks[preset] = {
            "a_mean": mean,
            "a_sd": sd,
            "a_runs": len(values),
            "tolerance": tolerance,
            "b": b,
            "within": abs(b - mean) <= tolerance,
        }
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of A, for its spread")
    parser.add_argument("--out", type=Path, default=HERE / "speed.json")
    parser.add_argument("--figure", type=Path, default=HERE.parent / "docs" / "benchmark.png")
    args = parser.parse_args()
    presets = reference_presets()
    with tempfile.TemporaryDirectory(prefix="losslab-bench-") as tmp:
        folder = Path(tmp)
        configs = write_configs(folder, presets, seed=0)
        print("A, reference (tutorial-style scripts, one process each):", flush=True)
        reference = run_reference(configs, folder, timed=True, repeat=0)
        print(f"B, losslab study ({STUDY_ROUNDS} times):", flush=True)
        studies = [run_study(folder, f"B-{repeat}") for repeat in range(STUDY_ROUNDS)]
        study = median_study(studies)
        jobs = median_jobs(studies)
        print("tracking's cost; C, compiled floor; scaling; throughput; CLI:", flush=True)
        cost_out = folder / "tracking_cost.json"
        Measured(
            [sys.executable, str(HERE / "tracking_cost.py"), cost_out, *presets],
            {"MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'tracking-cost.db'}"},
        )
        cost = json.loads(cost_out.read_text())
        floor_out = folder / "floor.json"
        Measured([sys.executable, str(HERE / "floor.py"), *configs.values(), floor_out])
        floor = json.loads(floor_out.read_text())
        scaling_out = folder / "scaling.json"
        Measured([sys.executable, str(HERE / "scaling.py"), scaling_out])
        scaling = json.loads(scaling_out.read_text())
        # the median of 2 each, alternated: one short sweep varies by 20 % here
        samples = [(n, throughput(folder, n, repeat)) for repeat in range(2) for n in (1, 2)]
        jobs_per_minute = {n: statistics.median(v for m, v in samples if m == n) for n in (1, 2)}
        latency = cli_latency()
        sklearn_out = folder / "sklearn.json"
        Measured([sys.executable, str(HERE / "sklearn_mlp.py"), "--out", sklearn_out, *presets])
        sklearn = json.loads(sklearn_out.read_text())
        print(f"A {args.repeats - 1} more times, for the spread:", flush=True)
        spreads = {p: [reference[p]] for p in presets}
        for repeat in range(1, args.repeats):
            for preset, result in run_reference(configs, folder, False, repeat).items():
                spreads[preset].append(result)

    a_total = sum(r["wall_s"] for r in reference.values())
    tracking_cpu = {p: c["tracked"] - c["untracked"] for p, c in cost["job_cpu_s"].items()}
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
        "experiments": {
            p: {
                "a_wall_s": reference[p]["wall_s"],
                "a_fit_s": reference[p]["fit_seconds"],
                "b_job_wall_s": jobs[p]["wall_s"],
                "b_train_s": jobs[p]["train_s"],
                "c_train_s": floor[p]["train_s"],
                "tracking_cpu_s": tracking_cpu[p],
                "a_over_b_job": reference[p]["wall_s"] / jobs[p]["wall_s"],
                "b_train_over_c": jobs[p]["train_s"] / floor[p]["train_s"],
                "sklearn_s": sklearn[p]["sklearn_s"],
                "train_first_s": sklearn[p]["first_s"],
                "train_again_s": sklearn[p]["again_s"],
            }
            for p in presets
        },
        "a_total_s": a_total,
        "b_total_s": study.seconds,
        "b_samples_s": [m.seconds for m, _ in studies],
        "mlflow_start_cpu_s": cost["start_cpu_s"],
        "mlflow_imports_and_stores_per_process": cost["per_process"],
        "tracking_cpu_s_per_job_max": max(tracking_cpu.values()),
        "peak_rss_gb": {
            "a_process": max(r["peak_rss_gb"] for r in reference.values()),
            "b_parent": study.root_peak_gb,
            "b_worker": study.worker_peak_gb,
        },
        "scaling": {
            **scaling,
            "r2_by_n_samples": linearity(scaling["seconds_by_n_samples"]),
            "r2_by_epochs": linearity(scaling["seconds_by_epochs"]),
        },
        "jobs_per_minute_by_workers": jobs_per_minute,
        "ratios": {
            "training_over_sklearn": max(e["ratio"] for e in sklearn.values()),
            "first_training_over_sklearn": max(
                e["first_s"] / e["sklearn_s"] for e in sklearn.values()
            ),
            "a_over_b": a_total / study.seconds,
            "two_workers_over_one": jobs_per_minute[2] / jobs_per_minute[1],
        },
        "cli_seconds": latency,
        "source_lines": source_lines(),
        "spread_check": spread_check(spreads, jobs),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    report(result)
    draw(result, args.figure)


def report(r: dict) -> None:
    print(
        f"\n{'experiment':24s} {'A proc':>7s} {'B job':>7s} {'A/B':>5s} {'B train':>8s} "
        f"{'C':>6s} {'B/C':>5s} {'track':>6s}  B test loss vs A (mean ± sd)"
    )
    for preset, e in r["experiments"].items():
        check = r["spread_check"][preset]
        print(
            f"{preset:24s} {e['a_wall_s']:6.1f}s {e['b_job_wall_s']:6.2f}s "
            f"{e['a_over_b_job']:5.1f} {e['b_train_s']:7.2f}s {e['c_train_s']:5.2f}s "
            f"{e['b_train_over_c']:5.1f} {e['tracking_cpu_s']:5.2f}s  {check['b']:.4f} vs "
            f"{check['a_mean']:.4f} ± {check['a_sd']:.4f} {'ok' if check['within'] else 'OUTSIDE'}"
        )
    rss, per_process, lines = (
        r["peak_rss_gb"],
        r["mlflow_imports_and_stores_per_process"],
        r["source_lines"],
    )
    print(
        f"\ntotal: A {r['a_total_s']:.1f} s, B {r['b_total_s']:.1f} s (median of "
        f"{len(r['b_samples_s'])})  ->  A/B = {r['ratios']['a_over_b']:.1f}\n"
        f"tracking CPU per job in a warm worker: at most {r['tracking_cpu_s_per_job_max']:.2f} s; "
        f"MLflow's import and store {r['mlflow_start_cpu_s']:.2f} s CPU, "
        f"{per_process['mlflow_imports']} import(s) and {per_process['stores_opened']} store(s) "
        f"for {per_process['jobs']} jobs in one process\n"
        f"peak RSS: A process {rss['a_process']:.2f} GB, B parent {rss['b_parent']:.2f} GB, "
        f"B worker {rss['b_worker']:.2f} GB\n"
        f"scaling R²: n_samples {r['scaling']['r2_by_n_samples']:.3f}, "
        f"epochs {r['scaling']['r2_by_epochs']:.3f}; sweep throughput "
        + ", ".join(
            f"{n} worker(s) {v:.1f} jobs/min" for n, v in r["jobs_per_minute_by_workers"].items()
        )
        + "\nCLI: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in r["cli_seconds"].items())
        + f"\nlines: tracking.py + sweep.py {lines['tracking_and_sweep']}, src/ {lines['src']}"
    )
    ratios = r["ratios"]
    print(
        "\nthe three ratios:\n"
        f"  training ÷ scikit-learn's MLP, slowest preset: {ratios['training_over_sklearn']:.2f} "
        f"(a kind of model's first job: {ratios['first_training_over_sklearn']:.2f}; target < 1)\n"
        f"  A / B, the whole study: {ratios['a_over_b']:.1f} (target ≥ 20)\n"
        f"  2 workers ÷ 1, throughput: {ratios['two_workers_over_one']:.2f} (target ≥ 1.75)"
    )


def draw(r: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(r["experiments"])
    figure, (per_run, total, scale) = plt.subplots(
        1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [3, 1, 1.6]}, layout="constrained"
    )
    position = np.arange(len(presets))
    for offset, key, label in (
        (-0.27, "a_wall_s", "A: tutorial script (process)"),
        (0.0, "b_job_wall_s", "B: losslab job (tracked, plotted)"),
        (0.27, "c_train_s", "C: compiled floor (training only)"),
    ):
        per_run.bar(
            position + offset, [r["experiments"][p][key] for p in presets], 0.27, label=label
        )
    per_run.set_yscale("log")
    per_run.set_xticks(position, presets, rotation=40, ha="right")
    per_run.set(ylabel="seconds (log)", title="per experiment")
    per_run.set_ylim(top=per_run.get_ylim()[1] * 10)  # room for the legend above the bars
    per_run.legend(fontsize=8, loc="upper center", ncols=3)
    bars = {"A": r["a_total_s"], "B": r["b_total_s"]}
    total.bar(list(bars), list(bars.values()), color=["C0", "C1"])
    for i, value in enumerate(bars.values()):
        total.text(i, value, f"{value:.0f} s", ha="center", va="bottom")
    total.set(title=f"whole study: A/B = {r['ratios']['a_over_b']:.1f}", ylabel="seconds")
    total.margins(y=0.12)  # room for the labels above the bars
    by_n = r["scaling"]["seconds_by_n_samples"]
    scale.loglog(
        [float(k) for k in by_n], list(by_n.values()), "o-", label="2 epochs, by n_samples"
    )
    scale.set(xlabel="n_samples", ylabel="training seconds", title="scaling (reg_mse)")
    scale.legend(fontsize=8)
    figure.suptitle(f"losslab speed, {r['machine']}, {r['date']}")
    figure.savefig(target, dpi=100)


if __name__ == "__main__":
    main()
