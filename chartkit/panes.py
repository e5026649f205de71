"""The panes and marks of the house chart: candles, overlays, volume, RSI, MACD, axes, title.

Each function draws one thing on axes `render.py` laid out; none creates a figure.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator
from matplotlib.transforms import blended_transform_factory

from chartkit import indicators
from chartkit.spec import ChartSpec
from chartkit.theme import FONT, Theme

Array = np.ndarray[Any, np.dtype[np.float64]]


def draw_candles(ax: Axes, x: Array, bars: pd.DataFrame, theme: Theme) -> None:
    o, h, lo, c = (bars[col].to_numpy(dtype=np.float64) for col in ("open", "high", "low", "close"))
    up = c >= o
    colors = np.where(up, theme.up, theme.down)
    span = float(h.max() - lo.min()) or max(float(h.max()), 1.0)
    body_lo, body_hi = np.minimum(o, c), np.maximum(o, c)
    body_hi = np.maximum(body_hi, body_lo + span * 0.0015)  # doji stay visible
    half = 0.36
    wicks = np.stack([np.column_stack([x, lo]), np.column_stack([x, h])], axis=1)
    ax.add_collection(LineCollection(cast(Any, wicks), colors=colors, linewidths=0.9, zorder=2))
    verts = np.stack(
        [
            np.column_stack([x - half, body_lo]),
            np.column_stack([x - half, body_hi]),
            np.column_stack([x + half, body_hi]),
            np.column_stack([x + half, body_lo]),
        ],
        axis=1,
    )
    ax.add_collection(
        PolyCollection(
            cast(Any, verts), facecolors=colors, edgecolors=colors, linewidths=0.4, zorder=3
        )
    )
    margin = span * 0.06
    ax.set_ylim(float(lo.min()) - margin, float(h.max()) + margin * 1.8)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))


def draw_overlays(ax: Axes, x: Array, close: pd.Series, spec: ChartSpec, theme: Theme) -> list[Any]:
    handles: list[Any] = []
    if spec.bollinger is not None and len(close) >= spec.bollinger[0]:
        window, k = spec.bollinger
        bands = indicators.bollinger(close, int(window), float(k))
        upper, lower = bands["upper"].to_numpy(), bands["lower"].to_numpy()
        ok = ~np.isnan(upper)
        ax.fill_between(
            x[ok], lower[ok], upper[ok], color=theme.band, alpha=0.10, linewidth=0, zorder=1
        )
        ax.plot(x, upper, color=theme.band, linewidth=0.8, zorder=1)
        ax.plot(x, lower, color=theme.band, linewidth=0.8, zorder=1)
        handles.append(Patch(facecolor=theme.band, alpha=0.35, label=f"BB {window}, {k:g}"))
    for color, window in zip(theme.lines, spec.sma, strict=False):
        if len(close) < window:
            continue
        line = indicators.sma(close, window).to_numpy()
        (artist,) = ax.plot(x, line, color=color, linewidth=1.2, label=f"SMA {window}", zorder=4)
        handles.append(artist)
    return handles


def draw_last_price(ax: Axes, last: float, up: bool, theme: Theme) -> None:
    color = theme.up if up else theme.down
    ax.axhline(last, color=color, linewidth=0.8, linestyle=(0, (3, 3)), zorder=5)
    transform = blended_transform_factory(ax.transAxes, ax.transData)
    ax.text(
        1.0,
        last,
        f" {_fmt_price(last)} ",
        transform=transform,
        ha="left",
        va="center",
        fontsize=8,
        fontfamily=FONT,
        color="#ffffff",
        zorder=6,
        bbox={"boxstyle": "square,pad=0.25", "facecolor": color, "edgecolor": color},
    )


def draw_volume(ax: Axes, x: Array, bars: pd.DataFrame, theme: Theme) -> None:
    v = np.nan_to_num(bars["volume"].to_numpy(dtype=np.float64))
    up = bars["close"].to_numpy() >= bars["open"].to_numpy()
    colors = np.where(up, theme.up, theme.down)
    half = 0.36
    zeros = np.zeros_like(v)
    verts = np.stack(
        [
            np.column_stack([x - half, zeros]),
            np.column_stack([x - half, v]),
            np.column_stack([x + half, v]),
            np.column_stack([x + half, zeros]),
        ],
        axis=1,
    )
    ax.add_collection(
        PolyCollection(cast(Any, verts), facecolors=colors, edgecolors="none", alpha=0.55)
    )
    ax.set_ylim(0, float(v.max()) * 1.15 or 1.0)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=2))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: _fmt_volume(value)))
    draw_pane_label(ax, "Volume", theme)


def draw_rsi(ax: Axes, x: Array, close: pd.Series, period: int, theme: Theme) -> None:
    ax.axhspan(30, 70, color=theme.rsi, alpha=0.06, linewidth=0)
    for level in (30, 70):
        ax.axhline(level, color=theme.muted, linewidth=0.7, linestyle=(0, (4, 3)))
    if len(close) > period:
        ax.plot(x, indicators.rsi(close, period).to_numpy(), color=theme.rsi, linewidth=1.1)
    ax.set_ylim(0, 100)
    ax.yaxis.set_major_locator(FixedLocator([30, 70]))
    draw_pane_label(ax, f"RSI {period}", theme)


def draw_macd(
    ax: Axes, x: Array, close: pd.Series, params: tuple[int, int, int], theme: Theme
) -> None:
    fast, slow, signal = params
    draw_pane_label(ax, f"MACD {fast}, {slow}, {signal}", theme)
    ax.axhline(0, color=theme.grid, linewidth=0.8)
    if len(close) < slow:
        ax.set_ylim(-1, 1)
        return
    frame = indicators.macd(close, fast, slow, signal)
    hist = np.nan_to_num(frame["hist"].to_numpy())
    colors = np.where(hist >= 0, theme.up, theme.down)
    zeros = np.zeros_like(hist)
    verts = np.stack(
        [
            np.column_stack([x - 0.36, zeros]),
            np.column_stack([x - 0.36, hist]),
            np.column_stack([x + 0.36, hist]),
            np.column_stack([x + 0.36, zeros]),
        ],
        axis=1,
    )
    ax.add_collection(
        PolyCollection(cast(Any, verts), facecolors=colors, edgecolors="none", alpha=0.5)
    )
    ax.plot(x, frame["macd"].to_numpy(), color=theme.macd, linewidth=1.1)
    ax.plot(x, frame["signal"].to_numpy(), color=theme.signal, linewidth=1.1)
    values = np.concatenate([frame["macd"].dropna().to_numpy(), hist])
    bound = float(np.abs(values).max()) * 1.15 or 1.0
    ax.set_ylim(-bound, bound)
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3, symmetric=True))


def draw_pane_label(ax: Axes, text: str, theme: Theme) -> None:
    ax.text(
        0.005,
        0.94,
        text,
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=8,
        fontfamily=FONT,
        color=theme.muted,
    )


def draw_time_axis(ax: Axes, index: pd.DatetimeIndex, width: int, theme: Theme) -> None:
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
    labels = [index[i].strftime(fmt) for i in positions]
    ax.xaxis.set_major_locator(FixedLocator(positions.tolist()))
    ax.set_xticks(positions.tolist(), labels)
    ax.tick_params(axis="x", labelbottom=True, colors=theme.muted, labelsize=8)


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
    y = 1 - 12 / height
    figure.text(
        12 / figure.bbox.width,
        y,
        title,
        ha="left",
        va="top",
        fontsize=12,
        fontweight="bold",
        fontfamily=FONT,
        color=theme.text,
    )
    row = bars.iloc[-1]
    prev = float(bars["close"].iloc[-2]) if len(bars) > 1 else float(row["open"])
    change = (float(row["close"]) / prev - 1) * 100 if prev else 0.0
    summary = (
        f"O {_fmt_price(row['open'])}   H {_fmt_price(row['high'])}   "
        f"L {_fmt_price(row['low'])}   C {_fmt_price(row['close'])}   {change:+.2f}%   "
        f"{len(bars)} bars"
    )
    figure.text(
        12 / figure.bbox.width,
        y - 20 / height,
        summary,
        ha="left",
        va="top",
        fontsize=8.5,
        fontfamily=FONT,
        color=theme.up if change >= 0 else theme.down,
    )


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
