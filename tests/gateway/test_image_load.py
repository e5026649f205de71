"""The image route under concurrency: single flight, the render queue, clients hanging up."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import Engine

from chartkit import random_walk_bars
from gateway.app import create_app
from gateway.settings import Settings
from tests.gateway.image_support import STORED_PNG, chart_row, image_settings, put, regenerated
from tests.servers import LiveServer
from tests.support import with_overrides


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"  # the image route is not DB-specific


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
    app = create_app(with_overrides(settings, render_concurrency=1, render_queue=2))
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
