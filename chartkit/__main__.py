"""`python -m chartkit render SNAPSHOT.json -o chart.png [--theme dark] [--width W --height H]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from chartkit.render import render_chart
from chartkit.snapshot import SnapshotError, extract_snapshot
from chartkit.spec import ChartSpec

EXIT_BAD_INPUT = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Render a snapshot file (or a whole artifact row's JSON) to a PNG file."""
    parser = argparse.ArgumentParser(prog="python -m chartkit")
    sub = parser.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="render a snapshot to PNG")
    render.add_argument("snapshot", type=Path, help="JSON: a snapshot, or an artifact row")
    render.add_argument("-o", "--output", type=Path, required=True)
    render.add_argument("--theme", choices=("light", "dark"), default="light")
    render.add_argument("--width", type=int, default=1200)
    render.add_argument("--height", type=int, default=800)
    render.add_argument("--symbol", help="symbol for the title (default: the row's symbol)")
    args = parser.parse_args(argv)

    try:
        document = json.loads(args.snapshot.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"error: cannot read {args.snapshot}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, RecursionError):
        print(f"error: {args.snapshot} is not valid JSON", file=sys.stderr)
        return EXIT_BAD_INPUT
    symbol = args.symbol
    if symbol is None and isinstance(document, dict) and isinstance(document.get("symbol"), str):
        symbol = document["symbol"]
    spec = ChartSpec(width=args.width, height=args.height, theme=args.theme, symbol=symbol)
    try:
        png = render_chart(extract_snapshot(document), spec)
    except SnapshotError as exc:
        print(f"error: bad snapshot in {args.snapshot}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.output.write_bytes(png)
    print(f"wrote {args.output} ({len(png)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
