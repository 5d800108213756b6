"""Draw docs/scaling-out.png, the README's picture of scaling out: where jobs run, where runs
are recorded and where data and models live; the one-machine default on the left, the team's
option on the right, and in each box the switch that selects it.

    python docs/scaling_out.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

OUT = Path(__file__).with_name("scaling-out.png")
DEFAULT, TEAM, SWITCH = "#e8f1fb", "#fdf0e1", "#1f4e8c"

# row title, then its boxes: (title, what it is, the switch that selects it, colour)
ROWS = [
    (
        "where jobs run",
        [
            ("the losslab process", "one job after another", "(the default)", DEFAULT),
            ("joblib workers", "one process per core", "hydra/launcher=joblib", DEFAULT),
            (
                "a Ray cluster",
                "ray start --head, others join it",
                "hydra/launcher=ray\nhydra.launcher.ray.init.address=HEAD:6379",
                TEAM,
            ),
        ],
    ),
    (
        "where runs\nare recorded",
        [
            (
                "SQLite: mlflow.db",
                "in the repo, artifacts in mlartifacts/",
                "(the default)",
                DEFAULT,
            ),
            (
                "MLflow server on PostgreSQL",
                "started by make server; artifacts in a folder or S3",
                "MLFLOW_TRACKING_URI=http://HOST:5000",
                TEAM,
            ),
        ],
    ),
    (
        "where data and\nmodels live",
        [
            ("DVC cache", ".dvc/cache of each clone", "(the default)", DEFAULT),
            (
                "DVC remote",
                "../losslab-dvc-remote, or S3 / SSH",
                "dvc push    dvc pull",
                TEAM,
            ),
        ],
    ),
]


def draw_box(ax, x: float, y: float, w: float, h: float, box: tuple) -> None:
    title, what, switch, colour = box
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.1",
            facecolor=colour,
            edgecolor="#3b3b3b",
            linewidth=1.2,
        )
    )
    ax.text(x + w / 2, y + h - 0.28, title, ha="center", va="center", fontsize=13, weight="bold")
    ax.text(x + w / 2, y + h - 0.72, what, ha="center", va="center", fontsize=10.5)
    ax.text(
        x + w / 2,
        y + 0.38,
        switch,
        ha="center",
        va="center",
        fontsize=10.5,
        family="monospace",
        color=SWITCH if switch[0] != "(" else "#6b6b6b",
    )


def main() -> None:
    fig = plt.figure(figsize=(16, 8.4))
    ax = fig.add_axes((0, 0, 1, 1))  # one unit is one inch
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 8.4)
    ax.axis("off")
    ax.text(0.1, 8.05, "Scaling out: each row switches on its own", fontsize=16, weight="bold")
    ax.text(14.0, 8.05, "one machine", fontsize=11, ha="right", bbox={"facecolor": DEFAULT})
    ax.text(15.9, 8.05, "a team", fontsize=11, ha="right", bbox={"facecolor": TEAM})
    left, right, gap, height = 2.3, 15.9, 0.55, 1.9
    for row, (name, boxes) in enumerate(ROWS):
        y = 5.6 - row * 2.6
        ax.text(0.1, y + height / 2, name, fontsize=13, weight="bold", va="center")
        width = (right - left - gap * (len(boxes) - 1)) / len(boxes)
        for i, box in enumerate(boxes):
            x = left + i * (width + gap)
            draw_box(ax, x, y, width, height, box)
            if i:
                ax.annotate(
                    "",
                    xy=(x - 0.04, y + height / 2),
                    xytext=(x - gap + 0.04, y + height / 2),
                    arrowprops={"arrowstyle": "-|>", "lw": 2, "color": "#5a5a5a"},
                )
    fig.savefig(OUT, dpi=100, bbox_inches="tight")
    print(OUT)


if __name__ == "__main__":
    main()
