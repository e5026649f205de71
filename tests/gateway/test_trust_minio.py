"""The MinIO boundary: the object store's own words stay in the logs, never in an answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.gateway.image_support import chart_row, image_settings
from tests.servers import free_port


def test_a_minio_failure_is_named_to_the_client_in_the_gateways_words_only(
    settings: Settings,
    insert: Callable[..., int],
    log_events: list[dict[str, Any]],
) -> None:
    # A MinIO endpoint nobody listens on: the client library's error names the host and port
    # and the library's own exception text.
    endpoint = f"127.0.0.1:{free_port()}"
    artifact_id = chart_row(insert, "s3://charts/a/chart.png")
    app = create_app(image_settings(settings, endpoint, "charts", minio_timeout_s=0.5))
    with TestClient(app) as client:
        response = client.get(f"/api/artifacts/{artifact_id}/image?source=minio")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert detail == "stored chart unavailable (minio_error)"
    # What the client library said is in the log line, with the request id.
    (event,) = [e for e in log_events if e["event"] == "chart.unavailable"]
    assert event["reason"] == "minio_error"
    assert endpoint.rsplit(":", 1)[1] in event["detail"]
    assert event["request_id"] == response.headers["x-request-id"]


def test_a_refused_stored_url_is_named_by_its_reason_only(
    settings: Settings, insert: Callable[..., int]
) -> None:
    artifact_id = chart_row(insert, "http://169.254.169.254/charts/latest/meta-data")
    app = create_app(image_settings(settings, f"127.0.0.1:{free_port()}", "charts"))
    with TestClient(app) as client:
        response = client.get(f"/api/artifacts/{artifact_id}/image?source=minio")
    assert response.status_code == 404
    assert response.json()["detail"] == "stored chart unavailable (url_refused)"
