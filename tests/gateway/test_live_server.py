"""Real HTTP against uvicorn on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from starlette.applications import Starlette

from tests.servers import LiveServer


def test_uvicorn_serves_graphql_and_rest_over_real_http(
    app: Starlette, insert: Callable[..., int]
) -> None:
    artifact_id = insert(name="live", symbol="AAPL")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        body = http.post(
            "/graphql",
            json={
                "query": "query($id: Int!) { artifact(id: $id) { id name symbol } }",
                "variables": {"id": artifact_id},
            },
        ).json()
        assert body == {"data": {"artifact": {"id": artifact_id, "name": "live", "symbol": "AAPL"}}}
        rest = http.get(f"/api/artifacts/{artifact_id}")
        assert rest.status_code == 200
        assert rest.json()["name"] == "live"
        assert http.get("/readyz").status_code == 200
        assert "gateway_http_requests_total" in http.get("/metrics").text
