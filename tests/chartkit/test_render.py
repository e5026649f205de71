"""render_chart: a real PNG, byte-identical across processes and threads, guarded."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chartkit import (
    ChartSpec,
    SnapshotError,
    load_snapshot,
    random_walk_bars,
    render_chart,
    resample_bars,
)
from chartkit.__main__ import main as chartkit_main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BARS = random_walk_bars(500, seed=11)


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def png_chunk_types(png: bytes) -> list[bytes]:
    chunks, offset = [], 8
    while offset < len(png):
        (length,) = struct.unpack(">I", png[offset : offset + 4])
        chunks.append(png[offset + 4 : offset + 8])
        offset += 12 + length
    return chunks


def test_renders_a_png_of_the_requested_size() -> None:
    png = render_chart(BARS)
    assert png_size(png) == (1200, 800)
    assert png_size(render_chart(BARS, ChartSpec(width=640, height=480))) == (640, 480)


def test_png_has_no_timestamp_or_software_chunks() -> None:
    chunks = png_chunk_types(render_chart(BARS))
    assert b"tIME" not in chunks
    assert b"tEXt" not in chunks
    assert b"iTXt" not in chunks


def test_same_input_renders_identical_bytes_in_separate_processes(tmp_path: Path) -> None:
    snapshot = tmp_path / "bars.json"
    snapshot.write_text(json.dumps(BARS))
    script = (
        "import hashlib, json, sys; from chartkit import render_chart, ChartSpec;"
        f"bars = json.load(open({str(snapshot)!r}));"
        "print(hashlib.sha256(render_chart(bars, ChartSpec(symbol='AAPL'))).hexdigest())"
    )
    digests = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=120,
        )
        digests.append(out.stdout.strip())
    here = hashlib.sha256(render_chart(BARS, ChartSpec(symbol="AAPL"))).hexdigest()
    assert digests[0] == digests[1] == here


def test_sixteen_threads_render_identical_bytes() -> None:
    expected = render_chart(BARS)
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: render_chart(BARS), range(32)))
    assert all(result == expected for result in results)


def test_renderer_never_imports_pyplot() -> None:
    script = (
        "import sys; from chartkit import render_chart, random_walk_bars;"
        "render_chart(random_walk_bars(50));"
        "print('matplotlib.pyplot' in sys.modules, 'gateway' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False False"


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_snapshots_render_without_indicators(n: int) -> None:
    png = render_chart(random_walk_bars(n, seed=n))
    assert png_size(png) == (1200, 800)


def test_too_many_bars_are_resampled_not_dropped() -> None:
    frame = load_snapshot(random_walk_bars(5000, seed=3, step=timedelta(minutes=1)))
    resampled = resample_bars(frame, 2000)
    assert len(resampled) == 1667  # buckets of 3 bars
    assert resampled["open"].iloc[0] == frame["open"].iloc[0]
    assert resampled["close"].iloc[-1] == frame["close"].iloc[-1]
    assert resampled["high"].max() == frame["high"].max()
    assert resampled["low"].min() == frame["low"].min()
    assert resampled["volume"].sum() == pytest.approx(frame["volume"].sum())
    assert resampled["high"].iloc[1] == frame["high"].iloc[3:6].max()
    png = render_chart(frame, ChartSpec(max_bars=2000))
    assert png == render_chart(resampled)


def test_pixel_size_is_capped() -> None:
    assert png_size(render_chart(BARS[:50], ChartSpec(width=100_000, height=10))) == (4096, 320)


def test_spec_changes_the_picture() -> None:
    base = render_chart(BARS)
    assert render_chart(BARS, ChartSpec(theme="dark")) != base
    assert render_chart(BARS, ChartSpec(rsi=None, macd=None)) != base
    assert render_chart(BARS, ChartSpec(sma=(10,))) != base


def test_missing_volume_omits_the_pane_and_still_renders() -> None:
    bars = [{k: v for k, v in bar.items() if k != "volume"} for bar in BARS]
    no_volume = render_chart(bars)
    assert png_size(no_volume) == (1200, 800)
    assert no_volume == render_chart(BARS, ChartSpec(volume=False))


def test_candles_are_drawn_in_up_and_down_colours() -> None:
    import io

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(render_chart(BARS))).convert("RGB"))
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    assert (0x26, 0xA6, 0x9A) in colours  # up candles
    assert (0xEF, 0x53, 0x50) in colours  # down candles


def test_bad_snapshot_raises_snapshot_error() -> None:
    with pytest.raises(SnapshotError):
        render_chart([{"t": 1, "o": 1}])


def test_spec_round_trips_through_json() -> None:
    spec = ChartSpec(theme="dark", sma=(5, 10), bollinger=None, symbol="X")
    assert ChartSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="theme"):
        ChartSpec(theme="neon")  # type: ignore[arg-type]


def test_cli_renders_a_snapshot_or_a_whole_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = tmp_path / "row.json"
    row.write_text(
        json.dumps({"id": 3, "symbol": "AAPL", "metadata": {"market_data_snapshot": BARS}})
    )
    out = tmp_path / "chart.png"
    assert (
        chartkit_main(
            [
                "render",
                str(row),
                "-o",
                str(out),
                "--theme",
                "dark",
                "--width",
                "800",
                "--height",
                "600",
            ]
        )
        == 0
    )
    assert png_size(out.read_bytes()) == (800, 600)
    assert out.read_bytes() == render_chart(
        BARS, ChartSpec(width=800, height=600, theme="dark", symbol="AAPL")
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "is not valid JSON"), ('[{"t": 1}]', "bad snapshot"), ('"x"', "bad snapshot")],
)
def test_cli_exits_2_with_a_message_on_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    source = tmp_path / "bad.json"
    source.write_text(content)
    assert chartkit_main(["render", str(source), "-o", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_exits_2_for_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert chartkit_main(["render", str(tmp_path / "nope.json"), "-o", "x.png"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_frame_input_is_accepted() -> None:
    frame = load_snapshot(BARS)
    assert isinstance(frame, pd.DataFrame)
    assert render_chart(frame) == render_chart(BARS)
