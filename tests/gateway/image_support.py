"""Helpers of the image-route tests: stored charts in moto, chart rows, settings for MinIO."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from pydantic import SecretStr

from chartkit import ChartSpec, random_walk_bars, render_chart
from gateway.settings import Settings
from tests.servers import s3_client
from tests.support import with_overrides

BARS = random_walk_bars(120, seed=5)
STORED_PNG = render_chart(random_walk_bars(80, seed=99), ChartSpec(width=640, height=480))


def put(endpoint: str, bucket: str, key: str, data: bytes, content_type: str = "image/png") -> None:
    s3_client(endpoint).put_object(
        bucket, key, io.BytesIO(data), len(data), content_type=content_type
    )


def image_settings(settings: Settings, endpoint: str, bucket: str, **extra: Any) -> Settings:
    defaults: dict[str, Any] = {
        "minio_endpoint": endpoint,
        "minio_access_key": "testing",
        "minio_secret_key": SecretStr("testing"),
        "minio_allowed_buckets": (bucket, "missing-bucket"),
        "minio_timeout_s": 1.0,
    }
    return with_overrides(settings, **{**defaults, **extra})


def chart_row(
    insert: Callable[..., int], url: Any, *, symbol: str = "AAPL", bars: Any = BARS
) -> int:
    meta = {"market_data_snapshot": bars} if bars is not None else {}
    return insert(artifact_type="chart", symbol=symbol, chart_data={"minio_url": url}, meta=meta)


def regenerated(bars: Any = BARS, symbol: str = "AAPL") -> bytes:
    return render_chart(bars, ChartSpec(symbol=symbol))
