"""The image route against an S3-protocol server (moto) through the real minio client."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from chartkit import random_walk_bars
from gateway.app import create_app
from gateway.images import ImageService
from gateway.models import Artifact
from gateway.observability import Metrics
from gateway.settings import Settings
from tests.faults import RecordingProxy, SilentListener
from tests.gateway.image_support import (
    BARS,
    STORED_PNG,
    chart_row,
    image_settings,
    put,
    regenerated,
)
from tests.servers import free_port


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"  # the image route is not DB-specific


@pytest.fixture
def client(settings: Settings, engine: Engine, s3_server: str, bucket: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(image_settings(settings, s3_server, bucket)), raise_server_exceptions=False
    ) as test_client:
        yield test_client


def test_object_present_is_proxied_byte_for_byte(
    client: TestClient,
    insert: Callable[..., int],
    s3_server: str,
    bucket: str,
    log_events: list[dict[str, Any]],
) -> None:
    put(s3_server, bucket, "AAPL/wf/chart.png", STORED_PNG)
    artifact_id = chart_row(insert, f"s3://{bucket}/AAPL/wf/chart.png")
    first = client.get(f"/api/artifacts/{artifact_id}/image")
    assert first.status_code == 200
    assert first.content == STORED_PNG
    assert first.headers["content-type"] == "image/png"
    assert first.headers["content-length"] == str(len(STORED_PNG))
    assert (first.headers["x-chart-source"], first.headers["x-cache"]) == ("minio", "miss")
    assert first.headers["etag"].startswith('"m-')
    assert "max-age" in first.headers["cache-control"]
    second = client.get(f"/api/artifacts/{artifact_id}/image")
    assert (second.content, second.headers["x-cache"]) == (STORED_PNG, "hit")
    head = client.head(f"/api/artifacts/{artifact_id}/image")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(STORED_PNG))
    assert any(e["event"] == "chart.proxied" for e in log_events)
    assert (
        'gateway_chart_responses_total{cache="hit",source="minio"}' in client.get("/metrics").text
    )


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        ("missing_object", "object_missing"),
        ("missing_bucket", "object_missing"),
        ("not_png", "not_png"),
        ("too_large", "too_large"),
        ("not_png_content_type", "not_png"),
    ],
)
def test_unusable_objects_fall_back_to_the_regenerated_chart(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
    s3_server: str,
    bucket: str,
    log_events: list[dict[str, Any]],
    setup: str,
    reason: str,
) -> None:
    url = f"s3://{bucket}/obj.png"
    if setup == "missing_bucket":
        url = "s3://missing-bucket/obj.png"
    elif setup == "not_png":
        put(s3_server, bucket, "obj.png", b"GIF89a not a png at all", "application/octet-stream")
    elif setup == "not_png_content_type":
        put(s3_server, bucket, "obj.png", STORED_PNG, "text/html")
    elif setup == "too_large":
        put(s3_server, bucket, "obj.png", STORED_PNG + b"\0" * (1024 * 1024))
    artifact_id = chart_row(insert, url)
    app = create_app(image_settings(settings, s3_server, bucket, minio_max_object_mb=1))
    with TestClient(app) as client:
        response = client.get(f"/api/artifacts/{artifact_id}/image")
        metrics = client.get("/metrics").text
    assert response.status_code == 200
    assert response.headers["x-chart-source"] == "regenerated"
    assert response.content == regenerated()
    assert [e["reason"] for e in log_events if e["event"] == "chart.fallback"] == [reason]
    assert f'gateway_chart_fallbacks_total{{reason="{reason}"}} 1.0' in metrics


@pytest.mark.parametrize("fault", ["down", "hangs"])
def test_unreachable_endpoint_falls_back_within_the_deadline(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
    fault: str,
    log_events: list[dict[str, Any]],
) -> None:
    listener = SilentListener() if fault == "hangs" else None
    endpoint = f"127.0.0.1:{listener.port if listener else free_port()}"
    try:
        artifact_id = chart_row(insert, "s3://charts/x.png")
        app = create_app(image_settings(settings, endpoint, "charts"))
        with TestClient(app) as client:
            started = time.monotonic()
            response = client.get(f"/api/artifacts/{artifact_id}/image")
            elapsed = time.monotonic() - started
    finally:
        if listener:
            listener.close()
    assert response.status_code == 200
    assert response.content == regenerated()
    assert elapsed < 2 * 1.0 + 1 + 5  # MinIO deadline (2x timeout + 1 s) plus one render
    reasons = [e["reason"] for e in log_events if e["event"] == "chart.fallback"]
    assert reasons == ["timeout" if fault == "hangs" else "minio_error"]


def hung_up(listener: SilentListener) -> int:
    """How many of the connections the listener holds were closed by the client."""
    closed = 0
    for conn in list(listener.accepted):
        try:
            while conn.recv(65536, socket.MSG_DONTWAIT):
                pass  # the request it sent, never to be answered
            closed += 1  # end of stream
        except BlockingIOError:
            pass  # still open, waiting
        except OSError:
            closed += 1
    return closed


def test_reads_stuck_on_a_hung_minio_leave_threads_for_database_reads(
    settings: Settings, engine: Engine, insert: Callable[..., int]
) -> None:
    # More image requests than the process has worker threads, all stuck on a MinIO that
    # never answers until their deadline: a REST read of another row must not wait for them.
    hung = SilentListener()
    stuck = 48
    try:
        ids = [chart_row(insert, f"s3://charts/stuck-{i}.png", bars=None) for i in range(stuck)]
        other = insert(artifact_type="llm", name="not a chart")
        # Reads wait 3 s for a byte that never comes: time to see who waits behind them.
        hung_minio = image_settings(settings, f"127.0.0.1:{hung.port}", "charts", minio_timeout_s=3)
        with TestClient(create_app(hung_minio)) as client:
            finished: list[int] = []

            def ask(artifact_id: int) -> None:
                client.get(f"/api/artifacts/{artifact_id}/image")
                finished.append(artifact_id)

            threads = [threading.Thread(target=ask, args=(i,)) for i in ids]
            for thread in threads:
                thread.start()
            # Until as many reads as will run are stuck: the count stops growing.
            seen, steady_since = -1, time.monotonic()
            while time.monotonic() - steady_since < 0.5:
                time.sleep(0.05)
                if len(hung.accepted) != seen:
                    seen, steady_since = len(hung.accepted), time.monotonic()
            assert seen >= 8, "the image reads never reached MinIO"
            assert hung_up(hung) == 0, "a stuck read gave up before the REST read was sent"
            response = client.get(f"/api/artifacts/{other}")
            given_up_meanwhile = hung_up(hung)
            for thread in threads:
                thread.join()
    finally:
        hung.close()
    assert response.status_code == 200
    assert response.json()["name"] == "not a chart"
    assert given_up_meanwhile == 0, "the REST read waited for a stuck MinIO read to give up"
    assert len(finished) == stuck


def test_without_minio_configured_charts_regenerate(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
    log_events: list[dict[str, Any]],
) -> None:
    artifact_id = chart_row(insert, "s3://charts/x.png")
    with TestClient(create_app(settings)) as client:
        response = client.get(f"/api/artifacts/{artifact_id}/image")
    assert response.content == regenerated()
    assert [e["reason"] for e in log_events if e["event"] == "chart.fallback"] == ["not_configured"]


class CountingListener:
    """A loopback server that counts the connections it receives (it must receive none)."""

    def __init__(self) -> None:
        self.listener = SilentListener()
        self.port = self.listener.port

    @property
    def connections(self) -> int:
        return len(self.listener.accepted)


SSRF_URLS = [
    "http://127.0.0.1:{port}/{bucket}/chart.png",
    "http://localhost:{port}/{bucket}/chart.png",
    "http://{endpoint}@127.0.0.1:{port}/{bucket}/chart.png",
    "http://user:pw@{endpoint}/{bucket}/chart.png",
    "s3://user@{bucket}/chart.png",
    "s3://{bucket}:{port}/chart.png",
    "s3://{bucket}/../other/chart.png",
    "s3://{bucket}/a/%2e%2e/chart.png",
    "s3://{bucket}/a/%252e%252e/chart.png",
    "s3://{bucket}/a\\..\\chart.png",
    "s3://{bucket}/chart.png\x00.txt",
    "s3://not-allowed/chart.png",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/x",
    "//127.0.0.1:{port}/{bucket}/chart.png",
]


@pytest.mark.parametrize("template", SSRF_URLS)
def test_hostile_urls_are_never_fetched(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
    s3_server: str,
    bucket: str,
    template: str,
) -> None:
    trap = CountingListener()
    try:
        put(s3_server, bucket, "chart.png", STORED_PNG)
        url = template.format(port=trap.port, bucket=bucket, endpoint=s3_server)
        artifact_id = chart_row(insert, url)
        with TestClient(create_app(image_settings(settings, s3_server, bucket))) as client:
            auto = client.get(f"/api/artifacts/{artifact_id}/image")
            strict = client.get(f"/api/artifacts/{artifact_id}/image?source=minio")
        time.sleep(0.3)  # let any stray connection land before counting
        assert trap.connections == 0
    finally:
        trap.listener.close()
    assert auto.status_code == 200
    assert auto.headers["x-chart-source"] == "regenerated"
    assert auto.content != STORED_PNG
    assert strict.status_code == 404
    assert strict.headers["content-type"] == "application/problem+json"


def test_http_form_on_the_configured_endpoint_is_accepted(
    client: TestClient,
    insert: Callable[..., int],
    s3_server: str,
    bucket: str,
) -> None:
    put(s3_server, bucket, "k/chart.png", STORED_PNG)
    artifact_id = chart_row(insert, f"http://{s3_server}/{bucket}/k/chart.png?X-Amz-Signature=abc")
    response = client.get(f"/api/artifacts/{artifact_id}/image?source=minio")
    assert response.content == STORED_PNG


def test_if_none_match_gives_304_and_etag_follows_the_snapshot(
    client: TestClient,
    insert: Callable[..., int],
    engine: Engine,
) -> None:
    artifact_id = chart_row(insert, "s3://nowhere-allowed/x.png")
    first = client.get(f"/api/artifacts/{artifact_id}/image")
    etag = first.headers["etag"]
    not_modified = client.get(
        f"/api/artifacts/{artifact_id}/image", headers={"if-none-match": etag}
    )
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    other = chart_row(insert, "s3://nowhere-allowed/x.png", bars=random_walk_bars(120, seed=6))
    assert client.get(f"/api/artifacts/{other}/image").headers["etag"] != etag
    renders = client.get("/metrics").text
    assert "gateway_chart_render_seconds_count 2.0" in renders  # the 304 rendered nothing


def test_source_regenerated_forces_a_render_even_when_the_object_exists(
    client: TestClient,
    insert: Callable[..., int],
    s3_server: str,
    bucket: str,
) -> None:
    put(s3_server, bucket, "c.png", STORED_PNG)
    artifact_id = chart_row(insert, f"s3://{bucket}/c.png")
    response = client.get(f"/api/artifacts/{artifact_id}/image?source=regenerated")
    assert response.headers["x-chart-source"] == "regenerated"
    assert response.content == regenerated()


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/api/artifacts/abc/image", 400, "positive integer"),
        ("/api/artifacts/999999/image", 404, "does not exist"),
        ("/api/artifacts/1/image?source=elsewhere", 400, "source must be one of"),
    ],
)
def test_bad_requests_get_problem_documents(
    client: TestClient,
    insert: Callable[..., int],
    path: str,
    status: int,
    detail: str,
) -> None:
    chart_row(insert, "s3://x/y.png")
    response = client.get(path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


def test_no_object_and_no_snapshot_is_404_and_bad_snapshot_is_422(
    client: TestClient,
    insert: Callable[..., int],
    bucket: str,
) -> None:
    bare = chart_row(insert, f"s3://{bucket}/absent.png", bars=None)
    response = client.get(f"/api/artifacts/{bare}/image")
    assert response.status_code == 404
    assert "no snapshot" in response.json()["detail"]
    broken = chart_row(insert, f"s3://{bucket}/absent.png", bars=[{"t": 1, "o": 1}])
    response = client.get(f"/api/artifacts/{broken}/image")
    assert response.status_code == 422
    assert "stored snapshot cannot be drawn" in response.json()["detail"]
    llm = insert(artifact_type="llm")
    assert client.get(f"/api/artifacts/{llm}/image").status_code == 404


def test_a_minio_miss_is_one_get_and_a_revalidation_one_stat(
    settings: Settings, s3_server: str, bucket: str
) -> None:
    upstream = RecordingProxy(f"http://{s3_server}").start()
    now = [1000.0]
    images = ImageService(
        settings=image_settings(settings, upstream.url.removeprefix("http://"), bucket),
        metrics=Metrics(),
        clock=lambda: now[0],
    )
    row = Artifact(
        id=7, name="c", artifact_type="chart", chart_data={"minio_url": f"s3://{bucket}/one.png"}
    )

    def served() -> tuple[bytes, bool, list[str]]:
        upstream.reset()
        image = asyncio.run(images.image(row))
        assert image.source == "minio"
        return image.data, image.cache_hit, [method for method, _, _ in upstream.requests]

    try:
        put(s3_server, bucket, "one.png", STORED_PNG)
        assert served() == (STORED_PNG, False, ["GET"])  # a cold miss: one round trip
        assert served() == (STORED_PNG, True, [])  # within 30 s: none
        now[0] += 31
        assert served() == (STORED_PNG, True, ["HEAD"])  # the same object: a stat, no body
        replaced = STORED_PNG + b"\0"
        put(s3_server, bucket, "one.png", replaced)
        now[0] += 31
        assert served() == (replaced, False, ["HEAD", "GET"])  # replaced: seen, fetched
    finally:
        images.close()
        upstream.stop()


def test_what_was_served_is_remembered_for_30_s_while_its_bytes_are_cached(
    settings: Settings,
) -> None:
    now = [1000.0]
    images = ImageService(settings=settings, metrics=Metrics(), clock=lambda: now[0])
    row = Artifact(id=9, name="c", artifact_type="chart", meta={"market_data_snapshot": BARS})
    try:
        assert images.recently_served(9, "auto") is None
        served = asyncio.run(images.image(row))
        again = images.recently_served(9, "auto")
        assert again is not None
        assert (again.data, again.etag, again.cache_hit) == (served.data, served.etag, True)
        assert images.recently_served(9, "regenerated") is None  # per source
        now[0] += 31
        assert images.recently_served(9, "auto") is None
    finally:
        images.close()
