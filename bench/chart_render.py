"""Benchmark: chartkit.render_chart vs mplfinance on the same bars, overlays and panes.

Prints medians over repeated runs after warm-up, and the ratio chartkit / mplfinance, at 100,
500, 2000 and 20000 bars (up to 2000 bars, the two renderers' samples taken in turn). Run with
`make bench` or `uv run python bench/chart_render.py`.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")

import mplfinance as mpf
import pandas as pd
from matplotlib import pyplot as plt

from chartkit import ChartSpec, indicators, load_snapshot, random_walk_bars, render_chart

SPEC = ChartSpec(symbol="BENCH")


def mplfinance_render(frame: pd.DataFrame) -> bytes:
    """The same chart with mplfinance: candles, volume, SMA 20/50, Bollinger, RSI, MACD."""
    close = frame["close"]
    bands = indicators.bollinger(close, 20, 2.0)
    macd = indicators.macd(close)
    df = frame.rename(columns=str.capitalize)
    plots = [
        mpf.make_addplot(bands["upper"], color="#90a4ae", width=0.8),
        mpf.make_addplot(bands["lower"], color="#90a4ae", width=0.8),
        mpf.make_addplot(indicators.rsi(close, 14), panel=2, color="#7e57c2", ylabel="RSI"),
        mpf.make_addplot(macd["macd"], panel=3, color="#2962ff", ylabel="MACD"),
        mpf.make_addplot(macd["signal"], panel=3, color="#ff6d00"),
        mpf.make_addplot(macd["hist"], panel=3, type="bar", color="#90a4ae"),
    ]
    buffer = io.BytesIO()
    fig, _axes = mpf.plot(
        df,
        type="candle",
        volume=True,
        mav=(20, 50),
        addplot=plots,
        style="yahoo",
        figsize=(12, 8),
        panel_ratios=(5, 1.1, 1.4, 1.5),
        returnfig=True,
        warn_too_much_data=10**9,
    )
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def median_seconds(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def alternating_medians(
    ours: Callable[[], object], theirs: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Median seconds of each, after a warm-up of each, their samples taken in turn."""
    for fn in (ours, theirs, ours, theirs):
        fn()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, taken in ((ours, samples[0]), (theirs, samples[1])):
            started = time.perf_counter()
            fn()
            taken.append(time.perf_counter() - started)
    return statistics.median(samples[0]), statistics.median(samples[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    print(f"{'bars':>6} {'chartkit ms':>12} {'mplfinance ms':>14} {'ratio':>7}")
    chartkit_500 = None
    for n in (100, 500, 2000, 20000):
        bars = random_walk_bars(n, seed=7, step=pd.Timedelta(minutes=5).to_pytimedelta())
        frame = load_snapshot(bars)
        if n <= 2000:
            # Samples alternate with the baseline's, so a slow spell of this shared machine
            # lands on both (as bench/lineage.py and bench/load.py do).
            ours, theirs = alternating_medians(
                lambda b=bars: render_chart(b, SPEC),
                lambda f=frame: mplfinance_render(f),
                args.repeat,
            )
        else:
            # mplfinance draws every bar it is given (20000 here): a few samples of it alone.
            ours = median_seconds(lambda b=bars: render_chart(b, SPEC), args.repeat)
            repeat = max(3, args.repeat // 3)
            theirs = median_seconds(lambda f=frame: mplfinance_render(f), repeat, warmup=1)
        if n == 500:
            chartkit_500 = ours
        print(f"{n:>6} {ours * 1000:>12.1f} {theirs * 1000:>14.1f} {ours / theirs:>7.3f}")
    assert chartkit_500 is not None
    # The two sizes in turn, after the table. Timed apart (the 500-bar figure first, the
    # 20,000-bar one after mplfinance's 20,000-bar renders), one run read 1.55x where the same
    # render in the table's row read 1.35x the 500-bar one.
    small, big = (
        random_walk_bars(n, seed=7, step=pd.Timedelta(minutes=5).to_pytimedelta())
        for n in (500, 20000)
    )
    small_samples, big_samples = [], []
    for _ in range(args.repeat):
        for bars, samples in ((small, small_samples), (big, big_samples)):
            started = time.perf_counter()
            render_chart(bars, SPEC)
            samples.append(time.perf_counter() - started)
    ratio = statistics.median(big_samples) / statistics.median(small_samples)
    print(
        f"chartkit 20000 bars / chartkit 500 bars: {ratio:.2f}x (resampled to max_bars=2000; "
        "includes parsing the snapshot; the two sizes timed in turn)"
    )


if __name__ == "__main__":
    main()
