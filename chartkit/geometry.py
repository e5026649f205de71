"""Where things go on the picture: pane boxes in pixels, data-to-pixel scales, ticks and labels.

The renderer draws straight onto the figure in display pixels (origin bottom left) instead of
through matplotlib Axes: an Axes builds tick, label and spine objects on every render, which
was half of a chart's time. What Axes did for us, placing and labelling ticks, lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Bbox

Array = np.ndarray[Any, np.dtype[np.float64]]

MINUS = "\N{MINUS SIGN}"  # what matplotlib's axes print: the typographic minus


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle in display pixels, origin at the bottom left of the picture."""

    left: float
    bottom: float
    right: float
    top: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.top - self.bottom

    def clip(self) -> Bbox:
        """The matplotlib clip box of this rectangle."""
        return Bbox.from_extents(self.left, self.bottom, self.right, self.top)


@dataclass(frozen=True, slots=True)
class Plot:
    """One pane: its box and the data ranges (x: bar positions, y: values) mapped onto it."""

    box: Box
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def px(self, x: Array | float) -> Any:
        """Pixel column of bar position(s) `x`."""
        lo, hi = self.x_range
        return self.box.left + (np.asarray(x, dtype=np.float64) - lo) * (self.box.width / (hi - lo))

    def py(self, y: Array | float) -> Any:
        """Pixel row of value(s) `y` (NaN stays NaN, so lines break at warm-up gaps)."""
        lo, hi = self.y_range
        return self.box.bottom + (np.asarray(y, dtype=np.float64) - lo) * (
            self.box.height / (hi - lo)
        )


def stack_boxes(
    weights: list[float], *, width: int, height: int, margins: tuple[int, int, int, int], gap: int
) -> list[Box]:
    """Panes stacked top to bottom, heights in proportion to `weights`.

    `margins` are (left, top, right, bottom) in pixels; `gap` separates panes.
    """
    left, top, right, bottom = margins
    usable = height - top - bottom - gap * (len(weights) - 1)
    total = sum(weights)
    boxes = []
    y = float(height - top)
    for weight in weights:
        h = usable * weight / total
        boxes.append(Box(float(left), y - h, float(width - right), y))
        y -= h + gap
    return boxes


def nice_ticks(
    lo: float, hi: float, *, nbins: int, steps: list[float] | None = None, symmetric: bool = False
) -> list[float]:
    """Round tick values inside [lo, hi], as matplotlib's MaxNLocator would place them."""
    locator = MaxNLocator(nbins=nbins, steps=steps, symmetric=symmetric)
    values = locator.tick_values(lo, hi)
    tolerance = (hi - lo) * 1e-9
    return [float(v) for v in values if lo - tolerance <= v <= hi + tolerance]


def tick_labels(values: list[float]) -> list[str]:
    """Labels with the fewest decimals that tell every tick apart (2.5 -> one decimal)."""
    if not values:
        return []
    decimals = 0
    while decimals < 10 and any(
        not math.isclose(v * 10**decimals, round(v * 10**decimals), abs_tol=1e-6) for v in values
    ):
        decimals += 1
    labels = []
    for value in values:
        text = f"{value:.{decimals}f}"
        if float(text) == 0:
            text = text.lstrip("-")  # no "-0"
        labels.append(text.replace("-", MINUS))
    return labels
