"""CORS for the front end, security headers, and the production admin-token length rule."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.settings import Settings
from tests.support import with_overrides

REPAIR = "mutation { repairLineage(dryRun: true) { scanned } }"


def test_security_headers_on_json_and_problem_responses(client: TestClient) -> None:
    for path in ("/healthz", "/api/artifacts/12345", "/graphql?query={__typename}"):
        headers = client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"


def test_no_cors_origin_is_allowed_by_default(client: TestClient) -> None:
    response = client.options(
        "/graphql",
        headers={"origin": "https://app.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_configured_origins_get_cors_headers(settings: Settings, engine: Engine) -> None:
    app = create_app(with_overrides(settings, cors_origins=("https://app.example",)))
    with TestClient(app) as client:
        preflight = client.options(
            "/graphql",
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        other = client.get("/healthz", headers={"origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_cors_origins_are_read_as_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_origins == ("https://a.example", "https://b.example")


def _repair(settings: Settings, token: str) -> dict[str, object]:
    app = create_app(settings)
    with TestClient(app) as client:
        body: dict[str, object] = client.post(
            "/graphql", json={"query": REPAIR}, headers={"authorization": f"Bearer {token}"}
        ).json()
        return body


def test_production_refuses_short_admin_tokens(
    settings: Settings, engine: Engine, insert: Callable[..., int]
) -> None:
    short = "short-token-123"
    production = with_overrides(settings, env="production", admin_token=SecretStr(short))
    body = _repair(production, short)
    assert body["data"] is None
    assert "shorter than 24 characters" in str(body["errors"])
    development = with_overrides(settings, admin_token=SecretStr(short))
    assert _repair(development, short)["data"] == {"repairLineage": {"scanned": 0}}
    long_token = "x" * 32
    ok = with_overrides(settings, env="production", admin_token=SecretStr(long_token))
    assert _repair(ok, long_token)["data"] == {"repairLineage": {"scanned": 0}}
