"""The line a run prints as it trains, as ``trainer.verbose`` says.

0 prints nothing; 1 one line redrawn in place on a terminal, else a line at every tenth of the
epochs (and the last); 2 a line per epoch. A line reads
``Epoch 40/200 - loss: 0.4123 - val_loss: 0.4302 - 0:03 left``, the last one the time it took.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Any, TextIO

import keras

from losslab.cli import clock


def _number(value: float) -> str:
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.4e}"


class EpochProgress(keras.callbacks.Callback):
    """Prints epoch k/N, loss, val_loss and the time left to ``stream`` (stdout by default).

    Epochs that run ``per_call`` to a compiled call end together; the time left is paced from
    the end of the first call, which also built the call.
    """

    def __init__(
        self, epochs: int, verbose: int, stream: TextIO | None = None, per_call: int = 1
    ) -> None:
        super().__init__()
        self.epochs, self.per_call = epochs, per_call
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and getattr(self.stream, "isatty", bool)()
        self.every = 1 if verbose >= 2 or self.live else max(1, math.ceil(epochs / 10))
        self.started = time.monotonic()
        self.first: tuple[int, float] | None = None  # the first call's last epoch, and when
        self.drawn = 0  # width of the live line on screen; 0: none open
        self.unshown: tuple[int, dict[str, Any]] | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.started, self.first = time.monotonic(), None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        done = epoch + 1
        if done == min(self.per_call, self.epochs):
            self.first = (done, time.monotonic())
        if done % self.every == 0 or done == self.epochs:
            self._show(done, logs or {})
        else:
            self.unshown = (done, logs or {})

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.unshown is not None:  # training stopped early
            self._show(*self.unshown, last=True)
        self.close()

    def close(self) -> None:
        """End the live line, so what is printed next starts on a line of its own."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = 0

    def _left(self, done: int, now: float) -> float:
        first, then = self.first or (0, self.started)
        if done > first:
            return (now - then) / (done - first) * (self.epochs - done)
        return (now - self.started) / done * (self.epochs - done)

    def _show(self, done: int, logs: dict[str, Any], last: bool = False) -> None:
        self.unshown = None
        now = time.monotonic()
        parts = [f"Epoch {done}/{self.epochs}"]
        parts += [f"{name}: {_number(logs[name])}" for name in ("loss", "val_loss") if name in logs]
        if last or done == self.epochs:
            parts.append(f"took {clock(now - self.started)}")
        else:
            parts.append(f"{clock(self._left(done, now))} left")
        line = " - ".join(parts)
        if not self.live:
            self.stream.write(line + "\n")
        else:  # within the terminal's width: a wrapped line would not be redrawn in place
            columns = shutil.get_terminal_size().columns
            line = line[: columns - 1] if columns > 1 else line
            self.stream.write("\r" + line.ljust(self.drawn))
            self.drawn = len(line)
        self.stream.flush()
