"""Parse the market-data snapshots DAGs have stored into one clean OHLCV frame."""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

COLUMNS = ("open", "high", "low", "close", "volume")
REQUIRED = ("open", "high", "low", "close")

# Every spelling DAGs have written, lower-cased; capitalised names fold onto these.
_ALIASES: dict[str, str] = {
    "t": "timestamp",
    "ts": "timestamp",
    "time": "timestamp",
    "timestamp": "timestamp",
    "date": "timestamp",
    "datetime": "timestamp",
    "o": "open",
    "open": "open",
    "h": "high",
    "high": "high",
    "l": "low",
    "low": "low",
    "c": "close",
    "close": "close",
    "v": "volume",
    "volume": "volume",
    "vol": "volume",
}
_BAR_LIST_KEYS = ("bars", "data", "candles", "ohlcv")
# Snapshots stored as JSON text up to this size are decoded to be counted exactly; longer ones
# are bounded from their commas (about 40,000 bars of typical JSON).
EXACT_TEXT_CHARS = 4 * 1024 * 1024
_NS_PER_S = 1_000_000_000
# Epoch magnitudes: below 1e11 is seconds (until year 5138), then ms, us, ns.
_UNIT_BOUNDS = ((1e11, _NS_PER_S), (1e14, 1_000_000), (1e17, 1_000), (math.inf, 1))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
_MIN_NS = pd.Timestamp.min.value
_MAX_NS = pd.Timestamp.max.value
# ISO-8601 in its extended form (dashes), as DAGs write it: what the vectorised parse takes.
_EXTENDED_ISO = re.compile(
    r"\s*\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?)?(Z|[+-]\d\d:?\d\d)?\s*$"
)


class SnapshotError(ValueError):
    """The snapshot cannot be turned into OHLCV bars; the message names the problem."""


class SnapshotTooLargeError(SnapshotError):
    """The snapshot holds more bars than the caller allows; refused before parsing."""

    def __init__(self, message: str, *, bars: int) -> None:
        super().__init__(message)
        self.bars = bars


def extract_snapshot(obj: Any) -> Any:
    """The snapshot inside a whole artifact row or its metadata; else `obj` itself."""
    if isinstance(obj, Mapping):
        if "market_data_snapshot" in obj:
            return obj["market_data_snapshot"]
        meta = obj.get("metadata")
        if isinstance(meta, Mapping) and "market_data_snapshot" in meta:
            return meta["market_data_snapshot"]
    return obj


def count_bars(obj: Any) -> int | None:
    """How many bars `obj` can hold at most, without parsing bars; None when not a snapshot.

    Exact for decoded shapes (a list of bars, `{"bars": [...]}` and its aliases, column dicts)
    and for JSON text up to `EXACT_TEXT_CHARS`, which is decoded (C speed) but not parsed into
    bars. Longer text gets an upper bound counted in the text, never below the true count
    whatever else the text holds: every shape `load_snapshot` accepts spends at least four
    commas per bar (five required fields per bar object, or five required columns). So a cap
    checked against it holds for every shape, before any bar is parsed.
    """
    if isinstance(obj, (str, bytes)):
        return _count_bars_in_text(obj)
    if isinstance(obj, Mapping):
        for key in _BAR_LIST_KEYS:
            if key in obj:
                return count_bars(obj[key])
        lengths = [_column_length(v) for k, v in obj.items() if _canonical(k) is not None]
        return max(lengths) if lengths else None
    if isinstance(obj, list):
        return len(obj)
    return None


def _column_length(values: Any) -> int:
    if isinstance(values, list):
        return len(values)
    if isinstance(values, (str, bytes)):
        return _count_bars_in_text(values) or 0
    return 0


def _count_bars_in_text(text: str | bytes) -> int | None:
    if len(text) <= EXACT_TEXT_CHARS:
        try:
            decoded = json.loads(text)
        except (ValueError, RecursionError):
            return None  # not JSON: load_snapshot says so without parsing any bar
        return count_bars(decoded) if not isinstance(decoded, (str, bytes)) else None
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return raw.count(b",") // 4 + 1


def load_snapshot(obj: Any, *, max_bars: int | None = None) -> pd.DataFrame:
    """OHLCV bars from any shape DAGs have stored, as a clean UTC-indexed float frame.

    Accepts a list of bar dicts, `{"bars": [...]}` (also `data`, `candles`, `ohlcv`), column
    dicts `{"timestamp": [...], "open": [...], ...}`, or any of these JSON-encoded in a string.
    Keys may be `t/ts/time/timestamp/date`, `o/h/l/c/v` or full names in any case; timestamps
    may be epoch seconds, milliseconds, microseconds, nanoseconds or ISO-8601 strings (naive
    means UTC). Volume is optional: when absent the column is all NaN and renderers omit the
    volume pane. The result is sorted by time with duplicate timestamps keeping the last bar.

    Raises SnapshotError for empty input, missing columns, non-numeric, non-finite or negative
    values, highs below open/close or lows above them, and unparseable timestamps; and, when
    `max_bars` is given, for a snapshot that may hold more bars than that (checked with
    `count_bars` before anything is parsed).
    """
    if max_bars is not None:
        counted = count_bars(obj)
        if counted is not None and counted > max_bars:
            raise SnapshotTooLargeError(
                f"snapshot has {counted} bars; at most {max_bars} are drawn", bars=counted
            )
    columns = _columns_of(obj)
    n = len(columns["timestamp"])
    if n == 0:
        raise SnapshotError("snapshot has no bars")
    index_ns = _timestamps_ns(columns["timestamp"])
    data: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
    for name in COLUMNS:
        values = columns.get(name)
        if values is None:
            data[name] = np.full(n, np.nan)
            continue
        if len(values) != n:
            raise SnapshotError(f"column {name!r} has {len(values)} values for {n} timestamps")
        data[name] = _numbers(values, name)
    _check_bars(data)
    frame = pd.DataFrame(
        data,
        index=pd.DatetimeIndex(pd.to_datetime(index_ns, unit="ns", utc=True), name="timestamp"),
    )
    frame = frame[~frame.index.duplicated(keep="last")].sort_index(kind="stable")
    return frame


def _columns_of(obj: Any) -> dict[str, list[Any]]:
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except (ValueError, RecursionError) as exc:
            raise SnapshotError("snapshot is a string that is not JSON") from exc
    if isinstance(obj, Mapping):
        for key in _BAR_LIST_KEYS:
            if key in obj:
                return _columns_of_bars(obj[key])
        return _columns_of_columns(obj)
    if isinstance(obj, Sequence):
        return _columns_of_bars(obj)
    raise SnapshotError(f"snapshot must be a list of bars or a dict, not {type(obj).__name__}")


def _canonical(key: Any) -> str | None:
    return _ALIASES.get(key.strip().lower()) if isinstance(key, str) else None


def _columns_of_bars(bars: Any) -> dict[str, list[Any]]:
    if not isinstance(bars, Sequence) or isinstance(bars, (str, bytes)):
        raise SnapshotError(f"bars must be a list, not {type(bars).__name__}")
    if not bars:
        raise SnapshotError("snapshot has no bars")
    fields = _shared_fields(bars)
    if fields is not None:
        # Every bar is a dict with the first bar's keys: each column is one C-level pass.
        return {name: list(map(operator.itemgetter(key), bars)) for name, key in fields}
    columns: dict[str, list[Any]] = {}
    # Bars of one snapshot nearly always share their keys, in one order: each distinct key
    # layout is read (aliases, checks) once, then every bar of it is a few dict lookups.
    layouts: dict[tuple[Any, ...], list[tuple[str, Any]]] = {}
    for i, bar in enumerate(bars):
        if not isinstance(bar, Mapping):
            raise SnapshotError(f"bar {i} is {type(bar).__name__}, not an object")
        layout = tuple(bar)
        fields = layouts.get(layout)
        if fields is None:
            fields = layouts[layout] = _fields_of(layout, i, columns if i else None)
        if i == 0:
            columns = {name: [] for name, _ in fields}
        for name, key in fields:
            columns[name].append(bar[key])
    return columns


def _shared_fields(bars: Sequence[Any]) -> list[tuple[str, Any]] | None:
    """(column, key) pairs when every bar is a dict with the first bar's keys, each column
    spelt once (so key order cannot matter); else None, for the bar-by-bar reading."""
    first = bars[0]
    if type(first) is not dict or set(map(type, bars)) != {dict}:
        return None
    keys = first.keys()
    fields = _fields_of(tuple(keys), 0, None)
    if sum(_canonical(key) is not None for key in keys) != len(fields):
        return None
    if not all(map(keys.__eq__, map(dict.keys, bars))):
        return None
    return fields


def _fields_of(
    layout: tuple[Any, ...], i: int, first: dict[str, list[Any]] | None
) -> list[tuple[str, Any]]:
    """(column, key) pairs of a bar with these keys, checked as bar `i` (a later key of the
    same column wins, as it would in a dict)."""
    keys: dict[str, Any] = {}
    for key in layout:
        name = _canonical(key)
        if name is not None:
            keys[name] = key
    for name in ("timestamp", *REQUIRED):
        if name not in keys:
            raise SnapshotError(f"bar {i} has no {name!r}")
    if first is not None and keys.keys() != first.keys():
        missing = sorted(set(first) ^ set(keys))
        raise SnapshotError(f"bar {i} has different fields from bar 0: {missing}")
    return list(keys.items())


def _columns_of_columns(obj: Mapping[Any, Any]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {}
    for key, values in obj.items():
        name = _canonical(key)
        if name is None:
            continue
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
            raise SnapshotError(f"column {key!r} must be a list")
        columns[name] = list(values)
    if not columns:
        raise SnapshotError("snapshot dict has neither bars nor OHLC columns")
    for name in ("timestamp", *REQUIRED):
        if name not in columns:
            raise SnapshotError(f"snapshot has no {name!r} column")
    return columns


def _numbers(values: list[Any], name: str) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The column as floats; SnapshotError naming the first bad value."""
    # Plain ints and floats that are all finite and non-negative convert in one go; anything
    # else (bools, strings, None, huge ints, NaN, negatives) goes value by value, for the error.
    if set(map(type, values)) <= {float, int}:
        try:
            column = np.array(values, dtype=np.float64)
        except OverflowError:
            pass
        else:
            if np.isfinite(column).all() and not (column < 0).any():
                return column
    return np.fromiter(
        (_number(v, name, i) for i, v in enumerate(values)), dtype=np.float64, count=len(values)
    )


def _number(value: Any, name: str, i: int) -> float:
    if value is None:
        # Also what a stored NaN reads as (JSON has no NaN; see gateway.strictjson).
        raise SnapshotError(f"bar {i}: {name} is null, not a number")
    if isinstance(value, bool):
        raise SnapshotError(f"bar {i}: {name} is {value!r}, not a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise SnapshotError(f"bar {i}: {name} is {value[:30]!r}, not a number") from None
    else:
        raise SnapshotError(f"bar {i}: {name} is {type(value).__name__}, not a number")
    if not math.isfinite(number):
        raise SnapshotError(f"bar {i}: {name} is not finite ({number})")
    if number < 0:
        raise SnapshotError(f"bar {i}: {name} is negative ({number})")
    return number


def _timestamps_ns(values: list[Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Epoch nanoseconds of every timestamp; SnapshotError naming the first bad one."""
    # The common case, ISO-8601 text in every bar, parses in one vectorised call. Anything it
    # does not take whole goes value by value, which also names the bad value.
    if isinstance(values[0], str) and _EXTENDED_ISO.match(values[0]) and _all_str(values):
        try:
            parsed = pd.to_datetime(values, format="ISO8601", utc=True)
        except (ValueError, OverflowError):
            pass
        else:
            # Whole microseconds, as the value-by-value path (datetime) reads them.
            ns = parsed.as_unit("ns").asi8
            return np.asarray(ns // 1000 * 1000, dtype=np.int64)
    return np.fromiter(
        (_timestamp_ns(v, i) for i, v in enumerate(values)), dtype=np.int64, count=len(values)
    )


def _all_str(values: list[Any]) -> bool:
    return set(map(type, values)) == {str}


def _timestamp_ns(value: Any, i: int) -> int:
    ns: int
    if isinstance(value, bool) or value is None:
        raise SnapshotError(f"bar {i}: timestamp {value!r} is not a time")
    if isinstance(value, int):
        factor = next(f for bound, f in _UNIT_BOUNDS if abs(value) < bound)
        ns = value * factor
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise SnapshotError(f"bar {i}: timestamp {value} is not finite")
        factor = next(f for bound, f in _UNIT_BOUNDS if abs(value) < bound)
        # Round to microseconds so 1.5 s and 1500 ms give the same instant.
        ns = round(value * factor / 1000) * 1000
    elif isinstance(value, str):
        ns = _iso_ns(value, i)
    elif isinstance(value, datetime):
        ns = _datetime_ns(value)
    elif isinstance(value, date):
        ns = _datetime_ns(datetime(value.year, value.month, value.day, tzinfo=UTC))
    else:
        raise SnapshotError(f"bar {i}: timestamp is {type(value).__name__}, not a time")
    if not _MIN_NS <= ns <= _MAX_NS:
        raise SnapshotError(f"bar {i}: timestamp {value!r} is out of range")
    return ns


def _iso_ns(text: str, i: int) -> int:
    stripped = text.strip()
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        try:
            number = float(stripped)
        except ValueError:
            raise SnapshotError(f"bar {i}: timestamp {text[:40]!r} is not a time") from None
        if not math.isfinite(number):
            raise SnapshotError(f"bar {i}: timestamp {text[:40]!r} is not a time") from None
        return _timestamp_ns(int(number) if number.is_integer() else number, i)
    return _datetime_ns(parsed)


def _datetime_ns(value: datetime) -> int:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    # Exact integer arithmetic; the range check happens in the caller.
    return (aware - _EPOCH) // _ONE_US * 1000


def _check_bars(data: dict[str, np.ndarray[Any, np.dtype[np.float64]]]) -> None:
    o, h, lo, c = data["open"], data["high"], data["low"], data["close"]
    bad_high = np.flatnonzero(h < np.maximum(o, c))
    if bad_high.size:
        i = int(bad_high[0])
        raise SnapshotError(f"bar {i}: high {h[i]} is below open/close")
    bad_low = np.flatnonzero(lo > np.minimum(o, c))
    if bad_low.size:
        i = int(bad_low[0])
        raise SnapshotError(f"bar {i}: low {lo[i]} is above open/close")
