"""Ranges of allowed values, written as a reader expects them in a message: ``(0, 1]``."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """The values from ``low`` to ``high``, each end included unless it is ``open``."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high or math.isinf(self.high) else value <= self.high
        return above and below

    def __str__(self) -> str:
        right = ")" if self.open_high or math.isinf(self.high) else "]"
        high = "∞" if math.isinf(self.high) else f"{self.high:g}"
        return f"{'(' if self.open_low else '['}{self.low:g}, {high}{right}"


FRACTION = Interval(0, 1, open_high=True)  # [0, 1): a share of rows to corrupt
POSITIVE = Interval(0, open_low=True)
NON_NEGATIVE = Interval(0)
