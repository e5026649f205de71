"""Hostile GraphQL requests in production mode: each gets a clear 4xx or GraphQL error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"  # transport-level checks: one database is enough


@pytest.fixture
def prod(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(env="production")


ALIASES_IN_FRAGMENT = (
    "query { ...F } fragment F on Query { "
    + " ".join(f"a{i}: artifact(id: 1) {{ id }}" for i in range(20))
    + " }"
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {
                "query": "query { artifacts { ...A } } fragment A on ArtifactConnection "
                "{ edges { node { id } } ...B } fragment B on ArtifactConnection { ...A }"
            },
            "Cannot spread fragment 'A' within itself via 'B'.",
        ),
        ({"query": ALIASES_IN_FRAGMENT}, "20 aliases found. Allowed: 15"),
        (
            {"query": "query($id: Int!) { artifact(id: $id) { id } }", "variables": {"id": "x"}},
            "Variable '$id' has invalid value: Int cannot represent non-integer value: 'x'",
        ),
        (
            {"query": "query($id: Int!) { artifact(id: $id) { id } }", "variables": {"id": 1.5}},
            "Variable '$id' has invalid value: Int cannot represent non-integer value: 1.5",
        ),
        (
            {"query": "query($id: Int!) { artifact(id: $id) { id } }", "variables": {}},
            "Variable '$id' has invalid value: Expected a value of non-null type 'Int!'",
        ),
        ({"query": "{" * 3000 + "}" * 3000}, "Syntax Error"),
    ],
)
def test_hostile_documents_get_graphql_errors_with_messages(
    prod: TestClient, body: dict[str, Any], message: str
) -> None:
    response = prod.post("/graphql", json=body)
    assert response.status_code == 200
    messages = [e["message"] for e in response.json()["errors"]]
    assert any(message in m for m in messages), messages
    assert "Unexpected error." not in messages


JSON_TYPE = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("kwargs", "status", "text"),
    [
        (
            {"json": {"query": "query A { artifact(id: 1) { id } }", "operationName": "B"}},
            400,
            'Unknown operation named "B"',
        ),
        ({"json": {"variables": {}}}, 400, "No GraphQL query found"),
        (
            {"json": {"query": "{ artifact(id: 1) { id } }", "variables": [1]}},
            400,
            "`variables` must be an object",
        ),
        ({"json": {"query": 123}}, 400, "`query` must be a string"),
        ({"json": [{"query": "{ artifact(id: 1) { id } }"}]}, 400, "Batching is not enabled"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            400,
            "Unable to parse request body as JSON",
        ),
        (
            {"content": b"\xff\xfe", "headers": {"content-type": "application/json"}},
            400,
            "Unable to parse request body as JSON",
        ),
        (
            {"content": b"query { a }", "headers": {"content-type": "text/plain"}},
            400,
            "Unsupported content type",
        ),
        ({"content": b"1", "headers": JSON_TYPE}, 400, "Expected a JSON object, got int"),
        ({"content": b'"{ a }"', "headers": JSON_TYPE}, 400, "Expected a JSON object, got str"),
        ({"content": b"null", "headers": JSON_TYPE}, 400, "Expected a JSON object, got NoneType"),
        ({"content": b'{"query":"\xff"}', "headers": JSON_TYPE}, 400, "not valid UTF-8"),
        (
            {"content": b"[" * 5000 + b"]" * 5000, "headers": JSON_TYPE},
            400,
            "nested deeper than 64 levels",
        ),
        (
            {
                "content": b'{"query": "{ __typename }", "variables": {"v": '
                + b"[" * 5000
                + b"]" * 5000
                + b"}}",
                "headers": JSON_TYPE,
            },
            400,
            "nested deeper than 64 levels",
        ),
        (
            {
                "content": b'{"query": "{ __typename }", "variables": {"v": NaN}}',
                "headers": JSON_TYPE,
            },
            400,
            "NaN is not a JSON number",
        ),
        (
            {
                "content": b'{"query": "query($s: String) { artifacts(symbol: $s) { edges '
                b'{ node { id } } } }", "variables": {"s": "\\ud800"}}',
                "headers": JSON_TYPE,
            },
            400,
            "lone UTF-16 surrogate",
        ),
        (
            {"content": b"x" * (1024 * 1024), "headers": {"content-type": "application/json"}},
            413,
            "Content Too Large",
        ),
    ],
)
def test_malformed_requests_get_4xx_with_a_message(
    prod: TestClient, kwargs: dict[str, Any], status: int, text: str
) -> None:
    response = prod.post("/graphql", **kwargs)
    assert response.status_code == status
    assert text in response.text
    assert "Traceback" not in response.text


def test_mutations_over_get_are_refused(prod: TestClient) -> None:
    response = prod.get("/graphql", params={"query": "mutation { repairLineage { scanned } }"})
    assert response.status_code == 400
    assert "mutations are not allowed when using GET" in response.text


def test_graphql_errors_are_counted_by_kind(prod: TestClient) -> None:
    prod.post("/graphql", json={"query": "{ artifact(id: -1) { id } }"})
    prod.post("/graphql", json={"query": "{ nope }"})
    metrics = prod.get("/metrics").text
    assert 'gateway_graphql_errors_total{kind="client"} 2.0' in metrics
