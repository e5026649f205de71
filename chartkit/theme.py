"""The house chart's look: one light and one dark theme, and the font every machine has."""

from __future__ import annotations

from dataclasses import dataclass

FONT = "DejaVu Sans"  # ships with matplotlib: the same glyphs on every machine


@dataclass(frozen=True, slots=True)
class Theme:
    """Colours of one theme."""

    background: str
    grid: str
    text: str
    muted: str
    up: str
    down: str
    lines: tuple[str, ...]
    band: str
    rsi: str
    macd: str
    signal: str


THEMES = {
    "light": Theme(
        background="#ffffff",
        grid="#eceff1",
        text="#263238",
        muted="#78909c",
        up="#26a69a",
        down="#ef5350",
        lines=("#2962ff", "#ff6d00", "#9c27b0", "#00897b"),
        band="#90a4ae",
        rsi="#7e57c2",
        macd="#2962ff",
        signal="#ff6d00",
    ),
    "dark": Theme(
        background="#131722",
        grid="#242a38",
        text="#d1d4dc",
        muted="#8a93a6",
        up="#26a69a",
        down="#ef5350",
        lines=("#4c8dff", "#ffa040", "#ce93d8", "#4db6ac"),
        band="#b0bec5",
        rsi="#b39ddb",
        macd="#4c8dff",
        signal="#ffa040",
    ),
}
