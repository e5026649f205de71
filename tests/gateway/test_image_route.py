"""The image route against an S3-protocol server (moto) through the real minio client."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from chartkit import ChartSpec, random_walk_bars, render_chart
from gateway.app import create_app
from gateway.settings import Settings
from tests.servers import LiveServer, SilentListener, free_port, s3_client

BARS = random_walk_bars(120, seed=5)
STORED_PNG = render_chart(random_walk_bars(80, seed=99), ChartSpec(width=640, height=480))


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"  # the image route is not DB-specific


def put(endpoint: str, bucket: str, key: str, data: bytes, content_type: str = "image/png") -> None:
    s3_client(endpoint).put_object(
        bucket, key, io.BytesIO(data), len(data), content_type=content_type
    )


def image_settings(settings: Settings, endpoint: str, bucket: str, **extra: Any) -> Settings:
    return settings.model_copy(
        update={
            "minio_endpoint": endpoint,
            "minio_access_key": "testing",
            "minio_secret_key": SecretStr("testing"),
            "minio_allowed_buckets": (bucket, "missing-bucket"),
            "minio_timeout_s": 1.0,
            **extra,
        }
    )


@pytest.fixture
def client(settings: Settings, engine: Engine, s3_server: str, bucket: str) -> Iterator[TestClient]:
    with TestClient(
        create_app(image_settings(settings, s3_server, bucket)), raise_server_exceptions=False
    ) as test_client:
        yield test_client


def chart_row(
    insert: Callable[..., int], url: Any, *, symbol: str = "AAPL", bars: Any = BARS
) -> int:
    meta = {"market_data_snapshot": bars} if bars is not None else {}
    return insert(artifact_type="chart", symbol=symbol, chart_data={"minio_url": url}, meta=meta)


def regenerated(bars: Any = BARS, symbol: str = "AAPL") -> bytes:
    return render_chart(bars, ChartSpec(symbol=symbol))


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


def test_fifty_concurrent_requests_for_one_uncached_chart_render_once(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
) -> None:
    artifact_id = chart_row(insert, "s3://charts/none.png")
    app = create_app(settings)
    results: list[bytes] = []
    lock = threading.Lock()
    with LiveServer(app) as server:
        barrier = threading.Barrier(50)

        def fetch() -> None:
            barrier.wait()
            body = httpx.get(f"{server.url}/api/artifacts/{artifact_id}/image", timeout=60).content
            with lock:
                results.append(body)

        threads = [threading.Thread(target=fetch) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = httpx.get(f"{server.url}/metrics").text
    assert len(results) == 50
    assert len(set(results)) == 1
    assert results[0] == regenerated()
    assert "gateway_chart_render_seconds_count 1.0" in metrics


def test_renders_beyond_the_queue_get_503_with_retry_after_and_the_rest_succeed(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
) -> None:
    # Ten distinct charts at once against a queue of 2: each request either gets its chart or
    # a 503 problem with Retry-After; none waits past the deadline, none 500s.
    ids = [
        chart_row(insert, "s3://charts/none.png", bars=random_walk_bars(400, seed=i))
        for i in range(10)
    ]
    app = create_app(settings.model_copy(update={"render_concurrency": 1, "render_queue": 2}))
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    with LiveServer(app) as server:
        barrier = threading.Barrier(len(ids))

        def fetch(artifact_id: int) -> None:
            barrier.wait()
            response = httpx.get(f"{server.url}/api/artifacts/{artifact_id}/image", timeout=60)
            with lock:
                answers.append(response)

        threads = [threading.Thread(target=fetch, args=(i,)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        retried = [httpx.get(f"{server.url}/api/artifacts/{i}/image", timeout=60) for i in ids]
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) == {200, 503}, statuses
    assert 2 <= statuses.count(200) < len(ids)
    for shed in (r for r in answers if r.status_code == 503):
        assert shed.headers["retry-after"] == "1"
        assert "retry" in shed.json()["detail"]
    # Retried one at a time, every chart is served: shedding lost nothing.
    assert [r.status_code for r in retried] == [200] * len(ids)


def connections_to(port: int) -> int:
    """Established TCP connections from this machine to a loopback port (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == port and fields[3] == "01":
            count += 1
    return count


def test_clients_hanging_up_mid_image_leave_no_minio_connections_behind(
    settings: Settings,
    engine: Engine,
    insert: Callable[..., int],
    s3_server: str,
    bucket: str,
) -> None:
    import socket

    big = STORED_PNG + b"\0" * (2 * 1024 * 1024)
    put(s3_server, bucket, "big.png", big)
    ids = [chart_row(insert, f"s3://{bucket}/big.png") for _ in range(20)]
    moto_port = int(s3_server.split(":")[1])
    app = create_app(image_settings(settings, s3_server, bucket))
    with LiveServer(app) as server:
        for artifact_id in ids:  # each a cache miss, each abandoned after a few bytes
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(
                    f"GET /api/artifacts/{artifact_id}/image HTTP/1.1\r\nHost: gw\r\n\r\n".encode()
                )
                assert sock.recv(64).startswith(b"HTTP/1.1 200")
        time.sleep(0.5)
        assert connections_to(moto_port) <= 16  # the client's pool size, not one per request
        after = httpx.get(f"{server.url}/api/artifacts/{ids[0]}/image", timeout=30)
        assert after.content == big
        assert after.headers["x-cache"] == "hit"
