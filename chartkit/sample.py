"""Synthetic but plausible OHLCV bars for demos, tests and benchmarks (seeded, reproducible)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any


def random_walk_bars(
    n: int,
    *,
    seed: int = 0,
    start: datetime | None = None,
    step: timedelta = timedelta(days=1),
    price: float = 100.0,
    volatility: float = 0.018,
) -> list[dict[str, Any]]:
    """`n` bars of a geometric random walk as `{"timestamp", "open", ..., "volume"}` dicts.

    Highs and lows always enclose open and close; volume rises with the size of the move.
    """
    rng = random.Random(seed)
    start = start if start is not None else datetime(2025, 1, 1, tzinfo=UTC)
    bars: list[dict[str, Any]] = []
    close = price
    drift = rng.uniform(-0.0005, 0.001)
    for i in range(n):
        open_ = close * math.exp(rng.gauss(0, volatility / 4))
        move = rng.gauss(drift, volatility)
        close = max(open_ * math.exp(move), 0.01)
        high = max(open_, close) * math.exp(abs(rng.gauss(0, volatility / 2)))
        low = min(open_, close) * math.exp(-abs(rng.gauss(0, volatility / 2)))
        volume = int(1_000_000 * (1 + 25 * abs(move)) * rng.uniform(0.6, 1.4))
        bars.append(
            {
                "timestamp": (start + i * step).isoformat().replace("+00:00", "Z"),
                "open": round(open_, 4),
                "high": round(high, 4),
                "low": round(low, 4),
                "close": round(close, 4),
                "volume": volume,
            }
        )
    return bars
