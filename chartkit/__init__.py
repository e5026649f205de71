"""chartkit: parse stored OHLCV snapshots and render the house technical chart, deterministically.

A library: no web, no database, no pyplot, no global state.
"""

from chartkit import indicators
from chartkit.render import render_chart, resample_bars
from chartkit.sample import random_walk_bars
from chartkit.snapshot import (
    SnapshotError,
    SnapshotTooLargeError,
    count_bars,
    extract_snapshot,
    load_snapshot,
)
from chartkit.spec import ChartSpec
from chartkit.theme import THEMES

# Bumped whenever the same inputs would render different bytes (cache keys include it).
# 2.0.0: drawn without Axes (compound paths, plain-text ticks), RGB PNG: new pixels and bytes.
__version__ = "2.0.0"

__all__ = [
    "THEMES",
    "ChartSpec",
    "SnapshotError",
    "SnapshotTooLargeError",
    "__version__",
    "count_bars",
    "extract_snapshot",
    "indicators",
    "load_snapshot",
    "random_walk_bars",
    "render_chart",
    "resample_bars",
]
