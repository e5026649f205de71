"""The panes and marks of the house chart: candles, overlays, volume, RSI, MACD, axes, title.

Each function draws one thing onto the figure in display pixels, inside a pane `render.py`
laid out. Bars of one colour are one compound path (one fill for 2,000 candles, not 2,000),
which keeps the cost of a large chart close to that of a small one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch, Polygon, Rectangle
from matplotlib.path import Path
from matplotlib.text import Text
from matplotlib.transforms import IdentityTransform

from chartkit import indicators
from chartkit.geometry import Array, Box, Plot, nice_ticks, tick_labels
from chartkit.spec import ChartSpec
from chartkit.theme import FONT, Theme

# Width of a candle or bar, in bar spacings.
BAR_HALF_WIDTH = 0.36
TICK_FONT_SIZE = 8
TICK_PAD_PT = 4
# How wide a text is in pixels, at a font size in points: the renderer measures it.
Measure = Callable[[str, float], float]

_RECT_CODES = np.array(
    [Path.MOVETO, Path.LINETO, Path.LINETO, Path.LINETO, Path.CLOSEPOLY], dtype=Path.code_type
)
_SEGMENT_CODES = np.array([Path.MOVETO, Path.LINETO], dtype=Path.code_type)


def add(figure: Figure, artist: Artist, *, clip: Box | None = None, zorder: float = 2) -> None:
    """Put `artist` on the figure in display pixels, clipped to `clip` when given."""
    artist.set_transform(IdentityTransform())
    artist.set_zorder(zorder)
    if clip is not None:
        artist.set_clip_box(clip.clip())
    figure.add_artist(artist)


def draw_text(
    figure: Figure,
    x: float,
    y: float,
    text: str,
    *,
    size: float,
    color: str,
    ha: str = "left",
    va: str = "baseline",
    zorder: float = 2,
    **style: Any,
) -> None:
    """A line of text at (x, y) pixels in the house font."""
    artist = Text(x, y, text, fontsize=size, fontfamily=FONT, color=color, ha=ha, va=va, **style)
    add(figure, artist, zorder=zorder)


def bar_path(x0: Array, x1: Array, y0: Array, y1: Array) -> Path:
    """One path holding a rectangle per bar, from (x0, y0) to (x1, y1) in pixels."""
    corners = np.stack(
        [
            np.column_stack([x0, y0]),
            np.column_stack([x0, y1]),
            np.column_stack([x1, y1]),
            np.column_stack([x1, y0]),
            np.column_stack([x0, y0]),
        ],
        axis=1,
    ).reshape(-1, 2)
    return Path(corners, np.tile(_RECT_CODES, len(x0)))


def segment_path(x: Array, y0: Array, y1: Array) -> Path:
    """One path holding a vertical segment per bar."""
    ends = np.stack([np.column_stack([x, y0]), np.column_stack([x, y1])], axis=1).reshape(-1, 2)
    return Path(ends, np.tile(_SEGMENT_CODES, len(x)))


def draw_bars(
    figure: Figure,
    plot: Plot,
    x: Array,
    bottom: Array,
    top: Array,
    up: Any,
    theme: Theme,
    *,
    dpi: int,
    alpha: float = 1.0,
    edge_width: float = 0.0,
    zorder: float = 3,
) -> None:
    """Bars from `bottom` to `top` in the up colour where `up`, else the down colour."""
    # An outline of `edge_width` points is drawn as a fill that much larger: stroking the
    # outlines of 2,000 bars costs more than filling them.
    grow = edge_width * dpi / 72 / 2
    half = BAR_HALF_WIDTH * plot.box.width / (plot.x_range[1] - plot.x_range[0]) + grow
    centre, y0, y1 = plot.px(x), plot.py(bottom) - grow, plot.py(top) + grow
    for mask, color in ((up, theme.up), (~up, theme.down)):
        if not mask.any():
            continue
        path = bar_path(centre[mask] - half, centre[mask] + half, y0[mask], y1[mask])
        patch = PathPatch(
            path, facecolor=color, edgecolor="none", alpha=alpha if alpha < 1 else None
        )
        add(figure, patch, clip=plot.box, zorder=zorder)


def price_range(bars: pd.DataFrame) -> tuple[float, float]:
    """The price pane's value range: every high and low, with room above for the legend."""
    h, lo = bars["high"].to_numpy(dtype=np.float64), bars["low"].to_numpy(dtype=np.float64)
    span = float(h.max() - lo.min()) or max(float(h.max()), 1.0)
    margin = span * 0.06
    return float(lo.min()) - margin, float(h.max()) + margin * 1.8


def draw_candles(
    figure: Figure, plot: Plot, x: Array, bars: pd.DataFrame, theme: Theme, dpi: int
) -> None:
    o, h, lo, c = (bars[col].to_numpy(dtype=np.float64) for col in ("open", "high", "low", "close"))
    up = c >= o
    span = float(h.max() - lo.min()) or max(float(h.max()), 1.0)
    body_lo = np.minimum(o, c)
    body_hi = np.maximum(np.maximum(o, c), body_lo + span * 0.0015)  # doji stay visible
    centre, wick_lo, wick_hi = plot.px(x), plot.py(lo), plot.py(h)
    for mask, color in ((up, theme.up), (~up, theme.down)):
        if mask.any():
            wicks = segment_path(centre[mask], wick_lo[mask], wick_hi[mask])
            patch = PathPatch(wicks, fill=False, edgecolor=color, linewidth=0.9)
            add(figure, patch, clip=plot.box, zorder=2)
    draw_bars(figure, plot, x, body_lo, body_hi, up, theme, dpi=dpi, edge_width=0.4, zorder=3)


def draw_line(
    figure: Figure,
    plot: Plot,
    x: Array,
    y: Array,
    color: str,
    width: float,
    *,
    zorder: float = 4,
    dashes: tuple[int, tuple[int, int]] | None = None,
) -> None:
    """A polyline of values over bar positions (gaps where `y` is NaN)."""
    line = Line2D(plot.px(x), plot.py(y), color=color, linewidth=width, linestyle=dashes or "-")
    add(figure, line, clip=plot.box, zorder=zorder)


def draw_level(
    figure: Figure, plot: Plot, value: float, color: str, width: float, **kw: Any
) -> None:
    """A horizontal line across the pane at `value`."""
    draw_line(figure, plot, np.array(plot.x_range), np.array([value, value]), color, width, **kw)


def draw_overlays(
    figure: Figure, plot: Plot, x: Array, close: pd.Series, spec: ChartSpec, theme: Theme
) -> list[tuple[str, str, str]]:
    """Bollinger bands and SMAs; their legend entries as (kind, colour, label)."""
    entries: list[tuple[str, str, str]] = []
    if spec.bollinger is not None and len(close) >= spec.bollinger[0]:
        window, k = spec.bollinger
        bands = indicators.bollinger(close, int(window), float(k))
        upper, lower = bands["upper"].to_numpy(), bands["lower"].to_numpy()
        ok = ~np.isnan(upper)
        outline = np.concatenate(
            [
                np.column_stack([plot.px(x[ok]), plot.py(upper[ok])]),
                np.column_stack([plot.px(x[ok])[::-1], plot.py(lower[ok])[::-1]]),
            ]
        )
        fill = Polygon(outline, closed=True, facecolor=theme.band, alpha=0.10, linewidth=0)
        add(figure, fill, clip=plot.box, zorder=1)
        draw_line(figure, plot, x, upper, theme.band, 0.8, zorder=1)
        draw_line(figure, plot, x, lower, theme.band, 0.8, zorder=1)
        entries.append(("patch", theme.band, f"BB {window}, {k:g}"))
    for color, window in zip(theme.lines, spec.sma, strict=False):
        if len(close) < window:
            continue
        draw_line(figure, plot, x, indicators.sma(close, window).to_numpy(), color, 1.2)
        entries.append(("line", color, f"SMA {window}"))
    return entries


def draw_legend(
    figure: Figure,
    plot: Plot,
    entries: list[tuple[str, str, str]],
    theme: Theme,
    measure: Measure,
    dpi: int,
) -> None:
    """Legend in the pane's upper left: a swatch and a label per entry, four to a row."""
    size = 8.0
    em = size * dpi / 72  # font size in pixels
    swatch, pad, spacing, row_height = 2.0 * em, 0.8 * em, 2.0 * em, 1.4 * em
    border = 0.4 * em
    rows = [entries[i : i + 4] for i in range(0, len(entries), 4)]
    left = plot.box.left + 0.5 * em + border
    top = plot.box.top - 0.5 * em - border
    widest = 0.0
    for r, row in enumerate(rows):
        cx = left
        cy = top - (r + 0.5) * row_height
        for kind, color, label in row:
            if kind == "patch":
                swatch_artist: Artist = Rectangle(
                    (cx, cy - 0.35 * em), swatch, 0.7 * em, facecolor=color, alpha=0.35, linewidth=0
                )
            else:
                swatch_artist = Line2D([cx, cx + swatch], [cy, cy], color=color, linewidth=1.2)
            add(figure, swatch_artist, zorder=8)
            draw_text(
                figure,
                cx + swatch + pad,
                cy,
                label,
                size=size,
                color=theme.text,
                va="center_baseline",
                zorder=8,
            )
            cx += swatch + pad + measure(label, size) + spacing
        widest = max(widest, cx - spacing - left)
    frame = Rectangle(
        (left - border, top - len(rows) * row_height - border),
        widest + 2 * border,
        len(rows) * row_height + 2 * border,
        facecolor=theme.background,
        edgecolor="none",
        alpha=0.85,
    )
    add(figure, frame, zorder=7)


def draw_last_price(figure: Figure, plot: Plot, last: float, up: bool, theme: Theme) -> None:
    color = theme.up if up else theme.down
    draw_level(figure, plot, last, color, 0.8, zorder=5, dashes=(0, (3, 3)))
    draw_text(
        figure,
        plot.box.right,
        float(plot.py(last)),
        f" {_fmt_price(last)} ",
        size=8,
        color="#ffffff",
        va="center",
        zorder=6,
        bbox={"boxstyle": "square,pad=0.25", "facecolor": color, "edgecolor": color},
    )


def draw_value_axis(
    figure: Figure,
    plot: Plot,
    values: list[float],
    theme: Theme,
    dpi: int,
    labels: list[str] | None = None,
) -> list[tuple[float, float, float, float]]:
    """Labels right of the pane at `values`; the grid lines at them, as segments."""
    shown = labels if labels is not None else tick_labels(values)
    x = plot.box.right + TICK_PAD_PT * dpi / 72
    grid = []
    for value, text in zip(values, shown, strict=True):
        y = float(plot.py(value))
        draw_text(figure, x, y, text, size=TICK_FONT_SIZE, color=theme.muted, va="center")
        grid.append((plot.box.left, y, plot.box.right, y))
    return grid


def draw_grid(
    figure: Figure,
    boxes: list[Box],
    rows: list[tuple[float, float, float, float]],
    columns: list[float],
    theme: Theme,
) -> None:
    """The light grid of every pane and each pane's bottom and right edge, as one path each."""
    grid = list(rows)
    for box in boxes:
        grid.extend((px, box.bottom, px, box.top) for px in columns)
    edges = []
    for box in boxes:
        edges.append((box.left, box.bottom, box.right, box.bottom))
        edges.append((box.right, box.bottom, box.right, box.top))
    for segments, width, z in ((grid, 0.7, 0.5), (edges, 0.8, 2.5)):
        if not segments:
            continue
        ends = np.array(segments, dtype=np.float64).reshape(-1, 2)
        path = Path(ends, np.tile(_SEGMENT_CODES, len(segments)))
        add(figure, PathPatch(path, fill=False, edgecolor=theme.grid, linewidth=width), zorder=z)


def volume_plot(box: Box, x_range: tuple[float, float], bars: pd.DataFrame) -> Plot:
    """The volume pane's scale: from zero to a little above the largest volume."""
    v = np.nan_to_num(bars["volume"].to_numpy(dtype=np.float64))
    return Plot(box, x_range, (0.0, float(v.max()) * 1.15 or 1.0))


def draw_volume(
    figure: Figure, plot: Plot, x: Array, bars: pd.DataFrame, theme: Theme, dpi: int
) -> list[tuple[float, float, float, float]]:
    v = np.nan_to_num(bars["volume"].to_numpy(dtype=np.float64))
    up = bars["close"].to_numpy() >= bars["open"].to_numpy()
    draw_bars(figure, plot, x, np.zeros_like(v), v, up, theme, dpi=dpi, alpha=0.55, zorder=2)
    draw_pane_label(figure, plot.box, "Volume", theme)
    ticks = nice_ticks(*plot.y_range, nbins=2)
    return draw_value_axis(figure, plot, ticks, theme, dpi, [_fmt_volume(t) for t in ticks])


def draw_rsi(
    figure: Figure, plot: Plot, x: Array, close: pd.Series, period: int, theme: Theme, dpi: int
) -> list[tuple[float, float, float, float]]:
    y30, y70 = float(plot.py(30)), float(plot.py(70))
    band = Rectangle(
        (plot.box.left, y30), plot.box.width, y70 - y30, facecolor=theme.rsi, alpha=0.06, lw=0
    )
    add(figure, band, clip=plot.box, zorder=1)
    for level in (30, 70):
        draw_level(figure, plot, level, theme.muted, 0.7, zorder=2, dashes=(0, (4, 3)))
    if len(close) > period:
        draw_line(figure, plot, x, indicators.rsi(close, period).to_numpy(), theme.rsi, 1.1)
    draw_pane_label(figure, plot.box, f"RSI {period}", theme)
    return draw_value_axis(figure, plot, [30.0, 70.0], theme, dpi)


def macd_plot(
    box: Box, x_range: tuple[float, float], close: pd.Series, params: tuple[int, int, int]
) -> tuple[Plot, pd.DataFrame | None]:
    """The MACD pane's scale (symmetric around zero) and its frame, when there are bars enough."""
    fast, slow, signal = params
    if len(close) < slow:
        return Plot(box, x_range, (-1.0, 1.0)), None
    frame = indicators.macd(close, fast, slow, signal)
    values = np.concatenate([frame["macd"].dropna().to_numpy(), np.nan_to_num(frame["hist"])])
    bound = float(np.abs(values).max()) * 1.15 or 1.0
    return Plot(box, x_range, (-bound, bound)), frame


def draw_macd(
    figure: Figure,
    plot: Plot,
    x: Array,
    frame: pd.DataFrame | None,
    params: tuple[int, int, int],
    theme: Theme,
    dpi: int,
) -> list[tuple[float, float, float, float]]:
    fast, slow, signal = params
    draw_pane_label(figure, plot.box, f"MACD {fast}, {slow}, {signal}", theme)
    draw_level(figure, plot, 0.0, theme.grid, 0.8, zorder=1)
    if frame is not None:
        hist = np.nan_to_num(frame["hist"].to_numpy())
        draw_bars(figure, plot, x, np.zeros_like(hist), hist, hist >= 0, theme, dpi=dpi, alpha=0.5)
        draw_line(figure, plot, x, frame["macd"].to_numpy(), theme.macd, 1.1)
        draw_line(figure, plot, x, frame["signal"].to_numpy(), theme.signal, 1.1)
    ticks = nice_ticks(*plot.y_range, nbins=3, symmetric=True)
    return draw_value_axis(figure, plot, ticks, theme, dpi)


def draw_pane_label(figure: Figure, box: Box, text: str, theme: Theme) -> None:
    x, y = box.left + 0.005 * box.width, box.bottom + 0.94 * box.height
    draw_text(figure, x, y, text, size=8, color=theme.muted, va="top")


def time_ticks(index: pd.DatetimeIndex, width: int) -> tuple[list[int], list[str]]:
    """Bar positions to label on the time axis and their labels, adapted to the span."""
    n = len(index)
    count = max(2, min(n, width // 140))
    # Inset from the edges so the first and last labels are not cut off.
    inset = (n - 1) * 0.04
    positions = np.unique(np.linspace(inset, n - 1 - inset, count).round().astype(int))
    span = index[-1] - index[0] if n > 1 else pd.Timedelta(0)
    step = span / max(n - 1, 1)
    if span <= pd.Timedelta(days=1):
        fmt = "%H:%M"
    elif step < pd.Timedelta(days=1):
        fmt = "%d %b %H:%M"
    elif span <= pd.Timedelta(days=400):
        fmt = "%d %b %Y" if count <= 4 else "%d %b"
    else:
        fmt = "%b %Y"
    return positions.tolist(), [index[i].strftime(fmt) for i in positions]


def draw_time_axis(
    figure: Figure, plot: Plot, positions: list[int], labels: list[str], theme: Theme, dpi: int
) -> None:
    """Time labels under the bottom pane."""
    y = plot.box.bottom - TICK_PAD_PT * dpi / 72
    for position, text in zip(positions, labels, strict=True):
        x = float(plot.px(position))
        draw_text(figure, x, y, text, size=TICK_FONT_SIZE, color=theme.muted, ha="center", va="top")


def draw_title(
    figure: Figure, bars: pd.DataFrame, spec: ChartSpec, theme: Theme, height: int
) -> None:
    first, last = bars.index[0], bars.index[-1]
    intraday = (last - first) <= pd.Timedelta(days=3) and len(bars) > 1
    fmt = "%Y-%m-%d %H:%M" if intraday else "%Y-%m-%d"
    title = spec.title
    if title is None:
        span = f"{first.strftime(fmt)} – {last.strftime(fmt)} UTC"
        title = f"{spec.symbol}  ·  {span}" if spec.symbol else span
    y = height - 12.0
    draw_text(figure, 12.0, y, title, size=12, color=theme.text, va="top", fontweight="bold")
    row = bars.iloc[-1]
    prev = float(bars["close"].iloc[-2]) if len(bars) > 1 else float(row["open"])
    change = (float(row["close"]) / prev - 1) * 100 if prev else 0.0
    summary = (
        f"O {_fmt_price(row['open'])}   H {_fmt_price(row['high'])}   "
        f"L {_fmt_price(row['low'])}   C {_fmt_price(row['close'])}   {change:+.2f}%   "
        f"{len(bars)} bars"
    )
    color = theme.up if change >= 0 else theme.down
    draw_text(figure, 12.0, y - 20.0, summary, size=8.5, color=color, va="top")


def _fmt_price(value: float) -> str:
    value = float(value)
    if value >= 1000:
        return f"{value:,.2f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"


def _fmt_volume(value: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"
