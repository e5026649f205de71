"""ChartSpec: what a chart shows and how big it is (frozen, serialisable to JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

MAX_PIXELS = 4096  # per side: larger requests are clamped, never rendered
MIN_PIXELS = 320


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
        if self.theme not in ("light", "dark"):
            raise ValueError(f"theme must be 'light' or 'dark', not {self.theme!r}")
        if not 20 <= self.dpi <= 600:
            raise ValueError(f"dpi must be within 20..600, not {self.dpi}")
        if self.max_bars < 10:
            raise ValueError(f"max_bars must be at least 10, not {self.max_bars}")
        if any(w < 1 for w in self.sma):
            raise ValueError("sma windows must be positive")

    @property
    def pixel_size(self) -> tuple[int, int]:
        """Width and height actually rendered, after clamping."""
        return _clamp(self.width), _clamp(self.height)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (recorded next to stored charts so they can be re-rendered)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChartSpec:
        """The spec a `to_dict` produced; unknown keys are ignored, lists become tuples."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
        }
        return cls(**values)


def _clamp(pixels: int) -> int:
    return max(MIN_PIXELS, min(MAX_PIXELS, int(pixels)))
