"""What a stored market-data snapshot holds, summarised for GraphQL and the pages.

Counted before it is parsed (`chartkit.count_bars`), so a snapshot above the bar cap costs
nothing to describe; parsed with chartkit otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chartkit import SnapshotError, count_bars, load_snapshot
from gateway.strictjson import loads_stored


@dataclass(frozen=True, slots=True)
class SnapshotSummary:
    """Bars, first and last bar (UTC) and last close; `problem` says why parts are missing."""

    bars: int | None
    first: datetime | None = None
    last: datetime | None = None
    last_close: float | None = None
    problem: str | None = None


def summarize_snapshot(snapshot: Any, *, max_bars: int) -> SnapshotSummary | None:
    """Summary of a stored snapshot; None when there is none. Blocking: call it off the loop."""
    if snapshot is None:
        return None
    counted = count_bars(snapshot)
    if counted is not None and counted > max_bars:
        return SnapshotSummary(counted, problem=f"{counted} bars, more than {max_bars}")
    try:
        frame = load_snapshot(snapshot, max_bars=max_bars)
    except SnapshotError as exc:
        return SnapshotSummary(None, problem=str(exc))
    close = float(frame["close"].iloc[-1])
    return SnapshotSummary(
        bars=len(frame),
        first=frame.index[0].to_pydatetime(),
        last=frame.index[-1].to_pydatetime(),
        last_close=close if math.isfinite(close) else None,
    )


def summarize_metadata_text(text: str | None, *, max_bars: int) -> SnapshotSummary | None:
    """Summary of the snapshot inside stored `metadata` text, decoded here under the strict
    mapping: a worker process does both, so the serving process never parses the snapshot."""
    if text is None:
        return None
    try:
        metadata = loads_stored(text)
    except ValueError:  # not JSON at all: no snapshot can be read out of it
        return None
    if not isinstance(metadata, dict):
        return None
    return summarize_snapshot(metadata.get("market_data_snapshot"), max_bars=max_bars)
