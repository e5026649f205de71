"""Technical indicators on a close-price Series; warm-up values are NaN.

Conventions (fixed, so charts regenerate identically): EMA is pandas `ewm(span, adjust=False)`;
Bollinger uses the population standard deviation (ddof=0); RSI uses Wilder smoothing,
`ewm(alpha=1/period, adjust=False)` of gains and losses; MACD is EMA(fast) - EMA(slow) with an
EMA(signal) of it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _check_window(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def sma(close: pd.Series, window: int) -> pd.Series:
    """Simple moving average over `window` bars; the first window-1 values are NaN."""
    _check_window("window", window)
    return close.rolling(window, min_periods=window).mean()


def ema(close: pd.Series, span: int) -> pd.Series:
    """Exponential moving average, alpha = 2/(span+1), seeded with the first close."""
    _check_window("span", span)
    return close.ewm(span=span, adjust=False, min_periods=span).mean()


def bollinger(close: pd.Series, window: int = 20, k: float = 2.0) -> pd.DataFrame:
    """Bollinger bands: columns `mid` (SMA), `upper` and `lower` at k population stdevs."""
    _check_window("window", window)
    mid = sma(close, window)
    std = close.rolling(window, min_periods=window).std(ddof=0)
    return pd.DataFrame({"mid": mid, "upper": mid + k * std, "lower": mid - k * std})


def rsi(close: pd.Series, period: int = 14) -> pd.Series:
    """Relative strength index, 0..100; 100 when a window has no losses, 50 when flat."""
    _check_window("period", period)
    delta = close.diff()
    gains = delta.clip(lower=0.0)
    losses = -delta.clip(upper=0.0)
    avg_gain = gains.ewm(alpha=1.0 / period, adjust=False, min_periods=period).mean()
    avg_loss = losses.ewm(alpha=1.0 / period, adjust=False, min_periods=period).mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        rs = avg_gain / avg_loss
        value = 100.0 - 100.0 / (1.0 + rs)
    value = value.where(avg_loss != 0.0, 100.0)
    value = value.where((avg_loss != 0.0) | (avg_gain != 0.0), 50.0)
    return value.where(avg_gain.notna())


def macd(close: pd.Series, fast: int = 12, slow: int = 26, signal: int = 9) -> pd.DataFrame:
    """MACD: columns `macd` (EMA fast - EMA slow), `signal` (EMA of macd) and `hist`."""
    if fast >= slow:
        raise ValueError(f"fast ({fast}) must be shorter than slow ({slow})")
    line = ema(close, fast) - ema(close, slow)
    signal_line = line.ewm(span=signal, adjust=False, min_periods=signal).mean()
    return pd.DataFrame({"macd": line, "signal": signal_line, "hist": line - signal_line})
