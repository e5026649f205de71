"""ChartSpec: what a chart shows and how big it is (frozen, serialisable to JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

MAX_PIXELS = 4096  # per side: larger requests are clamped, never rendered
MIN_PIXELS = 320
# Bounds of what a spec may ask for; a recorded spec outside them is refused, not drawn.
MAX_REQUESTED_PIXELS = 1_000_000
MAX_WINDOW = 10_000
MAX_OVERLAYS = 8
MAX_TITLE_CHARS = 200
MAX_SYMBOL_CHARS = 32
MAX_DRAWN_BARS = 100_000


@dataclass(frozen=True, slots=True)
class ChartSpec:
    """Size, theme, overlays and panes of a chart; defaults are the house chart.

    Sizes are in pixels and clamped to MIN_PIXELS..MAX_PIXELS per side. Set an overlay or
    pane to None (or an empty tuple for `sma`) to leave it out.
    """

    width: int = 1200
    height: int = 800
    dpi: int = 100
    theme: Literal["light", "dark"] = "light"
    sma: tuple[int, ...] = (20, 50)
    bollinger: tuple[int, float] | None = (20, 2.0)
    volume: bool = True
    rsi: int | None = 14
    macd: tuple[int, int, int] | None = (12, 26, 9)
    title: str | None = None
    symbol: str | None = None
    max_bars: int = 2000
    last_price_label: bool = field(default=True)

    def __post_init__(self) -> None:
        # Specs are read back from rows other writers filled: every field is checked for type
        # and bounds here, so a spec that constructs is one that renders in bounded time.
        _int(self, "width", 1, MAX_REQUESTED_PIXELS)
        _int(self, "height", 1, MAX_REQUESTED_PIXELS)
        _int(self, "dpi", 20, 600)
        if self.theme not in ("light", "dark"):
            raise ValueError(f"theme must be 'light' or 'dark', not {_show(self.theme)}")
        if not isinstance(self.sma, tuple) or len(self.sma) > MAX_OVERLAYS:
            raise ValueError(f"sma must be a list of at most {MAX_OVERLAYS} windows")
        for window in self.sma:
            _check_int("sma windows", window, 1, MAX_WINDOW)
        if self.bollinger is not None:
            if not isinstance(self.bollinger, tuple) or len(self.bollinger) != 2:
                raise ValueError("bollinger must be [window, k] or null")
            _check_int("bollinger window", self.bollinger[0], 2, MAX_WINDOW)
            _check_number("bollinger k", self.bollinger[1], 0.0, 10.0)
        if self.rsi is not None:
            _check_int("rsi", self.rsi, 1, MAX_WINDOW)
        if self.macd is not None:
            if not isinstance(self.macd, tuple) or len(self.macd) != 3:
                raise ValueError("macd must be [fast, slow, signal] or null")
            for name, value in zip(
                ("macd fast", "macd slow", "macd signal"), self.macd, strict=True
            ):
                _check_int(name, value, 1, MAX_WINDOW)
        _text(self, "title", MAX_TITLE_CHARS)
        _text(self, "symbol", MAX_SYMBOL_CHARS)
        _int(self, "max_bars", 10, MAX_DRAWN_BARS)
        for name in ("volume", "last_price_label"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")

    @property
    def pixel_size(self) -> tuple[int, int]:
        """Width and height actually rendered, after clamping."""
        return _clamp(self.width), _clamp(self.height)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (recorded next to stored charts so they can be re-rendered)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChartSpec:
        """The spec a `to_dict` produced; unknown keys are ignored, lists become tuples.

        Raises ValueError (naming the field) for a value of the wrong type, shape or size.
        """
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
        }
        return cls(**values)


def _clamp(pixels: int) -> int:
    return max(MIN_PIXELS, min(MAX_PIXELS, int(pixels)))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be whole numbers within {low}..{high}, not {_show(value)}")


def _check_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ValueError(f"{name} must be a number above {low} and at most {high}")


def _int(spec: ChartSpec, name: str, low: int, high: int) -> None:
    _check_int(name, getattr(spec, name), low, high)


def _text(spec: ChartSpec, name: str, limit: int) -> None:
    value = getattr(spec, name)
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise ValueError(f"{name} must be text of at most {limit} characters or null")
