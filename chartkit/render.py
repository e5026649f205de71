"""Render the house technical chart to PNG bytes: Figure + Agg canvas, never pyplot.

House style: candles (teal up, red down) with wicks over a light grid, SMA and Bollinger
overlays with a legend, a dashed last-price line with its value boxed on the price axis, and
volume, RSI (30/70 guides) and MACD (line, signal, histogram) panes sharing the time axis.
Bars are drawn at integer positions, so gaps (nights, weekends) take no space; the time axis
labels adapt to the span, from minutes to years. Prices sit on the right, as traders expect.
"""

from __future__ import annotations

import io
import math
import zlib
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image

from chartkit.geometry import Plot, nice_ticks, stack_boxes
from chartkit.panes import (
    draw_candles,
    draw_grid,
    draw_last_price,
    draw_legend,
    draw_macd,
    draw_overlays,
    draw_rsi,
    draw_time_axis,
    draw_title,
    draw_value_axis,
    draw_volume,
    macd_plot,
    price_range,
    time_ticks,
    volume_plot,
)
from chartkit.snapshot import load_snapshot
from chartkit.spec import ChartSpec
from chartkit.theme import FONT, THEMES, Theme

PRICE_STEPS = [1, 2, 2.5, 5, 10]


def resample_bars(frame: pd.DataFrame, max_bars: int) -> pd.DataFrame:
    """At most `max_bars` bars: consecutive bars merged into OHLCV buckets, nothing dropped."""
    n = len(frame)
    if n <= max_bars:
        return frame
    size = math.ceil(n / max_bars)
    starts = np.arange(0, n, size)
    ends = np.minimum(starts + size, n) - 1
    o, h, lo, c, v = (
        frame[col].to_numpy(dtype=np.float64) for col in ("open", "high", "low", "close", "volume")
    )
    return pd.DataFrame(
        {
            "open": o[starts],
            "high": np.maximum.reduceat(h, starts),
            "low": np.minimum.reduceat(lo, starts),
            "close": c[ends],
            "volume": np.add.reduceat(v, starts),
        },
        index=frame.index[starts],
    )


def render_chart(
    snapshot: Any, spec: ChartSpec | None = None, *, max_snapshot_bars: int | None = None
) -> bytes:
    """PNG bytes of the house chart; byte-identical for the same snapshot and spec.

    `snapshot` is anything `load_snapshot` accepts, or a frame it returned. Raises
    SnapshotError for bad snapshots (and, with `max_snapshot_bars`, for larger ones, before
    parsing). Thread-safe: every call owns its Figure and canvas.
    """
    spec = spec if spec is not None else ChartSpec()
    frame = (
        snapshot
        if isinstance(snapshot, pd.DataFrame)
        else load_snapshot(snapshot, max_bars=max_snapshot_bars)
    )
    bars = resample_bars(frame, spec.max_bars)
    theme = THEMES[spec.theme]
    width, height = spec.pixel_size
    figure = Figure(
        figsize=(width / spec.dpi, height / spec.dpi), dpi=spec.dpi, facecolor=theme.background
    )
    canvas = FigureCanvasAgg(figure)
    _draw(figure, canvas, bars, spec, theme, (width, height))
    canvas.draw()  # type: ignore[no-untyped-call]
    # The picture is opaque: RGB holds every pixel and encodes a quarter less data than the
    # canvas's RGBA. No text chunks and no timestamps: the bytes depend on the inputs only.
    # zlib level 1 with run-length matching: flat backgrounds and long runs of one colour are
    # what a chart is made of. Measured on a 1200x800 chart: 29 ms against 56 at level 6 and
    # 36 at level 3, for 218 KB against 197 and 209 KB.
    pixels = canvas.buffer_rgba()  # type: ignore[no-untyped-call]
    image = Image.frombuffer("RGBA", (width, height), pixels, "raw", "RGBA", 0, 1)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="png", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def _draw(
    figure: Figure,
    canvas: FigureCanvasAgg,
    bars: pd.DataFrame,
    spec: ChartSpec,
    theme: Theme,
    size: tuple[int, int],
) -> None:
    width, height = size
    n = len(bars)
    x = np.arange(n, dtype=np.float64)
    close = bars["close"]
    has_volume = spec.volume and bool(bars["volume"].notna().any())
    weights = [5.0]
    if has_volume:
        weights.append(1.1)
    if spec.rsi:
        weights.append(1.4)
    if spec.macd:
        weights.append(1.5)
    boxes = stack_boxes(weights, width=width, height=height, margins=(12, 52, 68, 34), gap=8)
    pad = max(1.0, n * 0.01)
    x_range = (-pad, n - 1 + pad)
    renderer = canvas.get_renderer()  # type: ignore[no-untyped-call]

    def measure(text: str, points: float) -> float:
        prop = FontProperties(family=FONT, size=points)
        return float(renderer.get_text_width_height_descent(text, prop, ismath=False)[0])

    panes = iter(boxes)
    price = Plot(next(panes), x_range, price_range(bars))
    grid = draw_value_axis(
        figure, price, nice_ticks(*price.y_range, nbins=8, steps=PRICE_STEPS), theme, spec.dpi
    )
    draw_candles(figure, price, x, bars, theme, spec.dpi)
    entries = draw_overlays(figure, price, x, close, spec, theme)
    if entries:
        draw_legend(figure, price, entries, theme, measure, spec.dpi)
    if spec.last_price_label:
        up = bool(close.iloc[-1] >= bars["open"].iloc[-1])
        draw_last_price(figure, price, float(close.iloc[-1]), up, theme)
    bottom = price
    if has_volume:
        bottom = volume_plot(next(panes), x_range, bars)
        grid += draw_volume(figure, bottom, x, bars, theme, spec.dpi)
    if spec.rsi:
        bottom = Plot(next(panes), x_range, (0.0, 100.0))
        grid += draw_rsi(figure, bottom, x, close, spec.rsi, theme, spec.dpi)
    if spec.macd:
        bottom, macd = macd_plot(next(panes), x_range, close, spec.macd)
        grid += draw_macd(figure, bottom, x, macd, spec.macd, theme, spec.dpi)
    positions, labels = time_ticks(pd.DatetimeIndex(bars.index), width)
    draw_time_axis(figure, bottom, positions, labels, theme, spec.dpi)
    columns = [float(price.px(p)) for p in positions]
    draw_grid(figure, boxes, grid, columns, theme)
    draw_title(figure, bars, spec, theme, height)
