"""Indicators against hand-worked values and plain reference loops (not the pandas calls)."""

from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest

from chartkit import indicators

CLOSE = pd.Series([1.0, 2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 4.0])


def nan_equal(actual: pd.Series, expected: list[float], tol: float = 1e-9) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual.tolist(), expected, strict=True):
        if math.isnan(want):
            assert math.isnan(got), (got, want)
        else:
            assert got == pytest.approx(want, abs=tol), (got, want)


# --- reference loops ----------------------------------------------------------------------


def ref_sma(xs: list[float], window: int) -> list[float]:
    return [
        math.nan if i + 1 < window else sum(xs[i + 1 - window : i + 1]) / window
        for i in range(len(xs))
    ]


def ref_ema(xs: list[float], span: int) -> list[float]:
    alpha = 2 / (span + 1)
    out, value = [], math.nan
    count = 0
    for x in xs:
        if math.isnan(x):
            out.append(math.nan if count < span else value)
            continue
        value = x if count == 0 else alpha * x + (1 - alpha) * value
        count += 1
        out.append(value if count >= span else math.nan)
    return out


def ref_std_pop(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))


def ref_rsi(xs: list[float], period: int) -> list[float]:
    alpha = 1 / period
    out = [math.nan]
    gain = loss = math.nan
    for i in range(1, len(xs)):
        change = xs[i] - xs[i - 1]
        g, lo = max(change, 0.0), max(-change, 0.0)
        if i == 1:
            gain, loss = g, lo
        else:
            gain = alpha * g + (1 - alpha) * gain
            loss = alpha * lo + (1 - alpha) * loss
        if i < period:
            out.append(math.nan)
        elif loss == 0:
            out.append(100.0 if gain > 0 else 50.0)
        else:
            out.append(100 - 100 / (1 + gain / loss))
    return out


def random_walk(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    price, xs = 100.0, []
    for _ in range(n):
        price *= math.exp(rng.gauss(0, 0.02))
        xs.append(price)
    return xs


# --- hand-worked ----------------------------------------------------------------------------


def test_sma_hand_worked() -> None:
    nan_equal(indicators.sma(CLOSE, 3), [math.nan, math.nan, 2, 7 / 3, 2, 5 / 3, 2, 3, 4, 13 / 3])


def test_ema_hand_worked_span_3() -> None:
    # alpha = 0.5: 1, 1.5, 2.25, 2.125, ... warm-up (span-1 = 2 values) is NaN
    nan_equal(indicators.ema(CLOSE, 3)[:5], [math.nan, math.nan, 2.25, 2.125, 1.5625])


def test_bollinger_hand_worked() -> None:
    bands = indicators.bollinger(pd.Series([1.0, 2.0, 3.0]), window=3, k=2.0)
    std = math.sqrt(2 / 3)  # population: ((1-2)^2 + 0 + (3-2)^2) / 3
    assert bands["mid"].iloc[2] == pytest.approx(2.0)
    assert bands["upper"].iloc[2] == pytest.approx(2 + 2 * std)
    assert bands["lower"].iloc[2] == pytest.approx(2 - 2 * std)
    assert bands.iloc[:2].isna().all().all()


def test_rsi_hand_worked_period_3() -> None:
    # gains 1,1,0 -> wilder avg 1,1,2/3; losses 0,0,1 -> 0,0,1/3; rs = 2 -> 66.67
    nan_equal(indicators.rsi(CLOSE, 3)[:4], [math.nan, math.nan, math.nan, 200 / 3])


def test_rsi_is_100_without_losses_and_50_when_flat() -> None:
    assert indicators.rsi(pd.Series([1.0, 2, 3, 4, 5]), 2).iloc[-1] == 100.0
    assert indicators.rsi(pd.Series([5.0] * 6), 2).iloc[-1] == 50.0


def test_macd_hand_worked_small_spans() -> None:
    frame = indicators.macd(CLOSE, fast=2, slow=3, signal=2)
    ema2 = ref_ema(CLOSE.tolist(), 2)
    ema3 = ref_ema(CLOSE.tolist(), 3)
    line = [a - b for a, b in zip(ema2, ema3, strict=True)]
    nan_equal(frame["macd"], line)
    assert frame["macd"].iloc[2] == pytest.approx(11 / 36)  # 2.5556 - 2.25
    signal = ref_ema(line, 2)
    nan_equal(frame["signal"], signal)
    nan_equal(frame["hist"], [a - b for a, b in zip(line, signal, strict=True)])


# --- against the reference loops on realistic series ---------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_indicators_match_reference_loops(seed: int) -> None:
    xs = random_walk(300, seed)
    close = pd.Series(xs)
    nan_equal(indicators.sma(close, 20), ref_sma(xs, 20))
    nan_equal(indicators.ema(close, 12), ref_ema(xs, 12))
    bands = indicators.bollinger(close, 20, 2.0)
    for i in range(19, 300):
        window = xs[i - 19 : i + 1]
        mid = sum(window) / 20
        assert bands["upper"].iloc[i] == pytest.approx(mid + 2 * ref_std_pop(window), rel=1e-9)
    nan_equal(indicators.rsi(close, 14), ref_rsi(xs, 14), tol=1e-7)
    line = [a - b for a, b in zip(ref_ema(xs, 12), ref_ema(xs, 26), strict=True)]
    macd = indicators.macd(close)
    nan_equal(macd["macd"], line, tol=1e-9)
    nan_equal(macd["signal"], ref_ema(line, 9), tol=1e-9)


def test_warm_up_lengths() -> None:
    close = pd.Series(random_walk(60, 9))
    assert indicators.sma(close, 20).isna().sum() == 19
    assert indicators.ema(close, 12).isna().sum() == 11
    assert indicators.rsi(close, 14).isna().sum() == 14
    assert indicators.macd(close)["signal"].isna().sum() == 25 + 8


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="window must be at least 1"):
        indicators.sma(CLOSE, 0)
    with pytest.raises(ValueError, match="fast"):
        indicators.macd(CLOSE, fast=26, slow=12)


def test_indicators_return_float_series_aligned_to_input() -> None:
    close = pd.Series(random_walk(40, 4), index=pd.date_range("2025-01-01", periods=40, tz="UTC"))
    for series in (indicators.sma(close, 5), indicators.ema(close, 5), indicators.rsi(close)):
        assert series.index.equals(close.index)
        assert series.dtype == np.float64
