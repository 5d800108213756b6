"""``losslab-loss-shapes``: draw every loss in the registry as a function of the prediction."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="losslab-loss-shapes", description=__doc__.split(": ")[1])
    parser.add_argument("--out", type=Path, default=Path("loss_shapes.png"), help="PNG to write")
    args = parser.parse_args(argv)
    from losslab.plots import loss_shapes

    print(f"losslab-loss-shapes: wrote {loss_shapes(args.out)}")


if __name__ == "__main__":
    main()
