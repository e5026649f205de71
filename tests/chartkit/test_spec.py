"""ChartSpec: every field checked for type and bounds, so a spec that builds renders in bounded time."""

from __future__ import annotations

from typing import Any

import pytest

from chartkit import ChartSpec, random_walk_bars, render_chart
from chartkit.spec import MAX_TITLE_CHARS


@pytest.mark.parametrize(
    ("recorded", "field"),
    [
        ({"width": "abc"}, "width"),
        ({"height": None}, "height"),
        ({"width": True}, "width"),
        ({"dpi": 5}, "dpi"),
        ({"bollinger": [20]}, "bollinger"),
        ({"bollinger": [20, "2"]}, "bollinger k"),
        ({"bollinger": [1, 2.0]}, "bollinger window"),
        ({"macd": [0, 0, 0]}, "macd fast"),
        ({"macd": [12, 26, 9, 4]}, "macd"),
        ({"macd": "12,26,9"}, "macd"),
        ({"sma": [True]}, "sma"),
        ({"sma": [20.5]}, "sma"),
        ({"sma": list(range(1, 20))}, "sma"),
        ({"sma": 20}, "sma"),
        ({"rsi": 0}, "rsi"),
        ({"rsi": 10**9}, "rsi"),
        ({"theme": ["light"]}, "theme"),
        ({"title": "x" * (MAX_TITLE_CHARS + 1)}, "title"),
        ({"title": 42}, "title"),
        ({"symbol": "S" * 33}, "symbol"),
        ({"max_bars": 10**9}, "max_bars"),
        ({"volume": "yes"}, "volume"),
    ],
)
def test_recorded_specs_of_the_wrong_type_or_size_are_refused_naming_the_field(
    recorded: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        ChartSpec.from_dict(recorded)


def test_specs_within_bounds_build_and_render() -> None:
    spec = ChartSpec.from_dict(
        {
            "width": 640,
            "height": 480,
            "sma": [5, 10],
            "bollinger": [10, 1.5],
            "macd": [3, 7, 2],
            "rsi": 7,
            "title": "t" * MAX_TITLE_CHARS,
            "symbol": "AAPL",
        }
    )
    assert render_chart(random_walk_bars(40, seed=2), spec).startswith(b"\x89PNG")


def test_oversized_pixel_requests_are_still_clamped_not_refused() -> None:
    assert ChartSpec(width=100_000, height=10).pixel_size == (4096, 320)
