"""load_snapshot: every stored shape and alias gives one clean frame; bad input says why."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chartkit import (
    SnapshotError,
    SnapshotTooLargeError,
    count_bars,
    extract_snapshot,
    load_snapshot,
)

BAR = {
    "timestamp": "2025-01-02T00:00:00Z",
    "open": 10,
    "high": 12,
    "low": 9,
    "close": 11,
    "volume": 100,
}


def test_returns_utc_index_and_float_columns_in_order() -> None:
    frame = load_snapshot([BAR, {**BAR, "timestamp": "2025-01-01T00:00:00Z", "close": 10.5}])
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert all(dtype == np.float64 for dtype in frame.dtypes)
    assert isinstance(frame.index, pd.DatetimeIndex)
    assert str(frame.index.tz) == "UTC"
    assert list(frame.index) == [
        pd.Timestamp("2025-01-01", tz="UTC"),
        pd.Timestamp("2025-01-02", tz="UTC"),
    ]
    assert frame["close"].tolist() == [10.5, 11.0]


def test_duplicate_timestamps_keep_the_last_bar() -> None:
    frame = load_snapshot([BAR, {**BAR, "close": 11.5}, {**BAR, "timestamp": "2025-01-03"}])
    assert len(frame) == 2
    assert frame["close"].iloc[0] == 11.5


@pytest.mark.parametrize(
    "timestamp",
    [
        1735776000,
        1735776000000,
        1735776000000000,
        1735776000000000000,
        1735776000.0,
        "2025-01-02",
        "2025-01-02T00:00:00",
        "2025-01-02T00:00:00Z",
        "2025-01-02T01:00:00+01:00",
        "1735776000",
        datetime(2025, 1, 2, tzinfo=UTC),
    ],
)
def test_timestamp_forms_all_mean_the_same_instant(timestamp: Any) -> None:
    frame = load_snapshot([{**BAR, "timestamp": timestamp}])
    assert frame.index[0] == pd.Timestamp("2025-01-02", tz="UTC")


def test_short_and_capitalised_keys() -> None:
    short = load_snapshot([{"t": 1735776000, "o": 10, "h": 12, "l": 9, "c": 11, "v": 100}])
    caps = load_snapshot(
        [{"Date": "2025-01-02", "Open": 10, "High": 12, "Low": 9, "Close": 11, "Volume": 100}]
    )
    pd.testing.assert_frame_equal(short, caps)
    pd.testing.assert_frame_equal(short, load_snapshot([BAR]))


def test_column_dict_bars_wrapper_and_json_string() -> None:
    columns = {
        "time": ["2025-01-02"],
        "open": [10],
        "high": [12],
        "low": [9],
        "close": [11],
        "volume": [100],
    }
    expected = load_snapshot([BAR])
    pd.testing.assert_frame_equal(load_snapshot(columns), expected)
    pd.testing.assert_frame_equal(load_snapshot({"bars": [BAR]}), expected)
    pd.testing.assert_frame_equal(load_snapshot(json.dumps([BAR])), expected)


def test_missing_volume_is_allowed_and_reads_as_nan() -> None:
    bar = {k: v for k, v in BAR.items() if k != "volume"}
    frame = load_snapshot([bar])
    assert math.isnan(frame["volume"].iloc[0])


def test_extract_snapshot_from_row_or_metadata() -> None:
    row = {"id": 1, "metadata": {"market_data_snapshot": [BAR]}}
    assert extract_snapshot(row) == [BAR]
    assert extract_snapshot(row["metadata"]) == [BAR]
    assert extract_snapshot([BAR]) == [BAR]


@pytest.mark.parametrize(
    ("snapshot", "message"),
    [
        ([], "no bars"),
        ({"bars": []}, "no bars"),
        (None, "must be a list of bars or a dict"),
        (42, "must be a list of bars or a dict"),
        ("not json", "not JSON"),
        ({"foo": [1]}, "neither bars nor OHLC columns"),
        ([{k: v for k, v in BAR.items() if k != "close"}], "has no 'close'"),
        ([{k: v for k, v in BAR.items() if k != "timestamp"}], "has no 'timestamp'"),
        ([{**BAR, "open": "abc"}], "open is 'abc', not a number"),
        ([{**BAR, "open": None}], "open is null, not a number"),
        ([{**BAR, "open": True}], "open is True, not a number"),
        ([{**BAR, "close": float("nan")}], "close is not finite"),
        ([{**BAR, "high": float("inf")}], "high is not finite"),
        ([{**BAR, "low": -1}], "low is negative"),
        ([{**BAR, "volume": -5}], "volume is negative"),
        ([{**BAR, "high": 10.5}], "high 10.5 is below open/close"),
        ([{**BAR, "low": 10.5}], "low 10.5 is above open/close"),
        ([{**BAR, "timestamp": "yesterday"}], "'yesterday' is not a time"),
        ([{**BAR, "timestamp": None}], "is not a time"),
        ([{**BAR, "timestamp": 10**30}], "out of range"),
        ([BAR, "bar"], "bar 1 is str, not an object"),
        ([BAR, {**BAR, "extra": 1, "v": 2, "volume": 3}], None),
        (
            {"timestamp": ["2025-01-01"], "open": [1, 2], "high": [2], "low": [1], "close": [1]},
            "column 'open' has 2 values for 1 timestamps",
        ),
    ],
)
def test_bad_snapshots_raise_snapshot_error_naming_the_problem(
    snapshot: Any, message: str | None
) -> None:
    if message is None:  # well-formed despite extra keys: must load
        assert len(load_snapshot(snapshot)) == 1
        return
    with pytest.raises(SnapshotError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_snapshot(snapshot)


def _bars(n: int) -> list[dict[str, Any]]:
    return [{**BAR, "timestamp": 1_700_000_000 + 60 * i} for i in range(n)]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda bar: {**dict(reversed(bar.items())), "open": True}, "bar 7: open is True"),
        (lambda bar: {k: v for k, v in bar.items() if k != "close"}, "bar 7 has no 'close'"),
        (
            lambda bar: {k: v for k, v in bar.items() if k != "volume"},
            "bar 7 has different fields from bar 0: ['volume']",
        ),
        (lambda bar: {**bar, "low": -1.0}, "bar 7: low is negative"),
    ],
)
def test_errors_name_their_bar_whatever_the_key_order(
    change: Callable[[dict[str, Any]], dict[str, Any]], message: str
) -> None:
    bars = _bars(10)
    bars[3] = dict(reversed(bars[3].items()))  # another key order, still well-formed
    bars[7] = change(bars[7])
    with pytest.raises(SnapshotError, match=re.escape(message)):
        load_snapshot(bars)


def test_bars_in_different_key_orders_read_like_bars_in_one() -> None:
    bars = _bars(10)
    shuffled = [dict(reversed(b.items())) if i % 2 else b for i, b in enumerate(bars)]
    pd.testing.assert_frame_equal(load_snapshot(shuffled), load_snapshot(bars))


def test_snapshot_error_is_a_value_error() -> None:
    assert issubclass(SnapshotError, ValueError)


# --- properties -------------------------------------------------------------------------

ALIASES = {
    "timestamp": ["t", "ts", "time", "timestamp", "date", "Timestamp", "DATE"],
    "open": ["o", "open", "Open", "O"],
    "high": ["h", "high", "High"],
    "low": ["l", "low", "Low"],
    "close": ["c", "close", "Close"],
    "volume": ["v", "volume", "Volume"],
}
prices = st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def valid_bars(draw: st.DrawFn) -> list[dict[str, Any]]:
    seconds = draw(st.lists(st.integers(946684800, 4102444800), min_size=1, max_size=25))
    bars = []
    for ts in seconds:
        o, c = draw(prices), draw(prices)
        high = max(o, c) + draw(st.floats(0, 100))
        low = max(0.0, min(o, c) - draw(st.floats(0, 100)))
        bars.append(
            {
                "timestamp": ts,
                "open": o,
                "high": high,
                "low": low,
                "close": c,
                "volume": draw(st.floats(0, 1e9)),
            }
        )
    return bars


def _as_timestamp(seconds: int, form: str) -> Any:
    if form == "s":
        return seconds
    if form == "ms":
        return seconds * 1000
    iso = datetime.fromtimestamp(seconds, UTC).isoformat()
    return iso.replace("+00:00", "Z") if form == "isoz" else iso


@given(bars=valid_bars(), data=st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_any_valid_bar_list_in_any_shape_gives_the_same_frame(
    bars: list[dict[str, Any]], data: st.DataObject
) -> None:
    expected = load_snapshot(bars)
    form = data.draw(st.sampled_from(["s", "ms", "iso", "isoz"]))
    renamed = [
        {
            data.draw(st.sampled_from(ALIASES[k])): (
                _as_timestamp(v, form) if k == "timestamp" else v
            )
            for k, v in bar.items()
        }
        for bar in bars
    ]
    # Aliases of one field may differ between bars; two aliases of one field in a bar may not.
    shape = data.draw(st.sampled_from(["list", "bars", "columns", "json"]))
    if shape == "list":
        snapshot: Any = renamed
    elif shape == "bars":
        snapshot = {"bars": renamed}
    elif shape == "json":
        snapshot = json.dumps(renamed)
    else:
        snapshot = {
            ALIASES[k][0]: [_as_timestamp(b[k], form) if k == "timestamp" else b[k] for b in bars]
            for k in bars[0]
        }
    pd.testing.assert_frame_equal(load_snapshot(snapshot), expected)
    assert expected.index.is_monotonic_increasing
    assert expected.index.is_unique
    assert len(expected) == len({b["timestamp"] for b in bars})


CORRUPT_VALUES = [None, "abc", float("nan"), float("inf"), -1.0, True, [], {}, "1e400"]


@given(bars=valid_bars(), data=st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_any_corrupted_bar_list_raises_snapshot_error(
    bars: list[dict[str, Any]], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(bars) - 1))
    kind = data.draw(st.sampled_from(["value", "drop", "high", "low", "time", "container"]))
    bar = bars[i]
    if kind == "value":
        bar[data.draw(st.sampled_from(["open", "high", "low", "close", "volume"]))] = data.draw(
            st.sampled_from(CORRUPT_VALUES)
        )
    elif kind == "drop":
        del bar[data.draw(st.sampled_from(["timestamp", "open", "high", "low", "close"]))]
    elif kind == "high":
        bar["high"] = max(bar["open"], bar["close"]) * 0.5 - 0.001
    elif kind == "low":
        bar["low"] = min(bar["open"], bar["close"]) * 1.5 + 0.001
    elif kind == "time":
        bar["timestamp"] = data.draw(
            st.sampled_from(["not a date", None, float("nan"), 10**30, "2025-13-45", [], True])
        )
    else:
        bars[i] = data.draw(st.sampled_from([None, 1, "bar", [1, 2]]))  # type: ignore[call-overload]
    with pytest.raises(SnapshotError):
        load_snapshot(bars)


def _in_shape(bars: list[dict[str, Any]], shape: str) -> Any:
    columns = {k: [b[k] for b in bars] for k in bars[0]}
    return {
        "list": bars,
        "bars": {"bars": bars},
        "columns": columns,
        "json": json.dumps(bars),
        "json-bars": json.dumps({"bars": bars}),
        "json-columns": json.dumps(columns),
        "bars-json": {"bars": json.dumps(bars)},
    }[shape]


SHAPES = ["list", "bars", "columns", "json", "json-bars", "json-columns", "bars-json"]


@given(bars=valid_bars(), shape=st.sampled_from(SHAPES))
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_count_bars_is_never_below_the_bars_in_any_shape(
    bars: list[dict[str, Any]], shape: str
) -> None:
    assert count_bars(_in_shape(bars, shape)) == len(bars)


@pytest.mark.parametrize("shape", ["json", "json-bars", "json-columns", "bars-json"])
def test_long_snapshot_text_is_bounded_from_above_without_decoding(
    shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bars = [{**BAR, "timestamp": 1_700_000_000 + 60 * i, "note": "{{,,"} for i in range(40)]
    monkeypatch.setattr("chartkit.snapshot.EXACT_TEXT_CHARS", 10)
    counted = count_bars(_in_shape(bars, shape))
    assert counted is not None
    assert counted >= 40


@pytest.mark.parametrize("shape", SHAPES)
def test_the_bar_cap_holds_for_every_shape_before_parsing(shape: str) -> None:
    bars = [{**BAR, "timestamp": 1_700_000_000 + 60 * i} for i in range(50)]
    with pytest.raises(SnapshotTooLargeError, match="snapshot has 50 bars; at most 49 are"):
        load_snapshot(_in_shape(bars, shape), max_bars=49)
    if shape != "bars-json":  # a bar list that is JSON text inside a dict is not a snapshot
        assert len(load_snapshot(_in_shape(bars, shape), max_bars=50)) == 50
    else:
        with pytest.raises(SnapshotError, match="bars must be a list, not str"):
            load_snapshot(_in_shape(bars, shape), max_bars=50)


@pytest.mark.parametrize("value", [None, 7, "plain text", '"json text"', {"note": "x"}])
def test_count_bars_of_things_that_are_not_snapshots(value: Any) -> None:
    assert count_bars(value) is None


iso_texts = st.builds(
    lambda moment, sep, fraction, zone, pad: (
        pad
        + moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
        + (f".{moment.microsecond:06d}"[: fraction + 1] if fraction else "")
        + zone
        + pad
    ),
    st.datetimes(datetime(1971, 1, 1), datetime(2200, 1, 1)),
    st.sampled_from(["T", " "]),
    st.integers(0, 6),
    st.sampled_from(["", "Z", "+00:00", "-05:30", "+0100", "+14:00"]),
    st.sampled_from(["", " "]),
) | st.dates(datetime(1971, 1, 1).date(), datetime(2200, 1, 1).date()).map(str)


@given(texts=st.lists(iso_texts, min_size=1, max_size=20))
@settings(max_examples=200)
def test_iso_timestamps_read_in_one_pass_mean_what_each_one_read_alone_means(
    texts: list[str],
) -> None:
    from chartkit.snapshot import _timestamp_ns, _timestamps_ns

    one_by_one = [_timestamp_ns(text, i) for i, text in enumerate(texts)]
    assert _timestamps_ns(texts).tolist() == one_by_one


def test_a_bad_timestamp_among_iso_text_is_named_as_before() -> None:
    bars = _bars(5)
    for i, bar in enumerate(bars):
        bar["timestamp"] = f"2025-01-0{i + 1}T00:00:00Z"
    bars[3]["timestamp"] = "2025-13-01T00:00:00Z"
    with pytest.raises(SnapshotError, match=re.escape("bar 3: timestamp '2025-13-01T00:00:00Z'")):
        load_snapshot(bars)


def test_bars_spelling_a_column_twice_read_the_later_key_in_every_bar() -> None:
    bars = [{**bar, "c": bar["close"] + 1} for bar in _bars(6)]
    frame = load_snapshot(bars)
    assert frame["close"].tolist() == [bar["close"] + 1 for bar in bars]
