"""GraphQL reads: artifact by id, the paginated list, filters and the guardrails."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from starlette.testclient import TestClient

NODE_FIELDS = (
    "id name type symbol workflowId createdAt runId experimentId chartData metadata imageUrl"
)


def gql(client: TestClient, query: str, **variables: Any) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def error_messages(body: dict[str, Any]) -> list[str]:
    return [e["message"] for e in body.get("errors") or []]


def test_artifact_by_id_returns_every_field(client: TestClient, insert: Callable[..., int]) -> None:
    artifact_id = insert(
        name="AAPL daily",
        artifact_type="chart",
        symbol="AAPL",
        workflow_id="wf-1",
        run_id="r1",
        experiment_id="7",
        chart_data={"minio_url": "s3://charts/a.png"},
        meta={"market_data_snapshot": [], "k": 1},
    )
    body = gql(
        client, f"query($id: Int!) {{ artifact(id: $id) {{ {NODE_FIELDS} }} }}", id=artifact_id
    )
    node = body["data"]["artifact"]
    assert node["id"] == artifact_id
    assert node["name"] == "AAPL daily"
    assert node["type"] == "CHART"
    assert node["workflowId"] == "wf-1"
    assert (node["runId"], node["experimentId"]) == ("r1", "7")
    assert node["chartData"] == {"minio_url": "s3://charts/a.png"}
    assert node["metadata"] == {"market_data_snapshot": [], "k": 1}
    assert node["imageUrl"] == f"/api/artifacts/{artifact_id}/image"
    assert node["createdAt"].endswith("+00:00")


def test_non_chart_artifacts_have_no_image_url(
    client: TestClient, insert: Callable[..., int]
) -> None:
    artifact_id = insert(artifact_type="llm", meta={"text": "hi"})
    body = gql(client, "query($id: Int!) { artifact(id: $id) { type imageUrl } }", id=artifact_id)
    assert body["data"]["artifact"] == {"type": "LLM", "imageUrl": None}


def test_workflow_id_falls_back_to_metadata(client: TestClient, insert: Callable[..., int]) -> None:
    a = insert(meta={"workflow_id": "wf-meta"})
    b = insert(meta={"dag_run_id": "manual__2026"})
    body = gql(
        client, "{ a: artifact(id: %d) { workflowId } b: artifact(id: %d) { workflowId } }" % (a, b)
    )
    assert body["data"] == {"a": {"workflowId": "wf-meta"}, "b": {"workflowId": "manual__2026"}}


def test_missing_artifact_is_null_not_an_error(client: TestClient) -> None:
    body = gql(client, "{ artifact(id: 999999) { id } }")
    assert body == {"data": {"artifact": None}}


def test_unknown_artifact_type_in_row_reads_as_null_type(
    client: TestClient, insert: Callable[..., int]
) -> None:
    artifact_id = insert(artifact_type="report")
    body = gql(client, "query($id: Int!) { artifact(id: $id) { id type } }", id=artifact_id)
    assert body == {"data": {"artifact": {"id": artifact_id, "type": None}}}


def _all_ids(client: TestClient, page_size: int, **filters: Any) -> list[int]:
    ids: list[int] = []
    after = None
    args = ", ".join(f"{k}: ${k}" for k in filters)
    decl = "".join(
        f", ${k}: {'ArtifactKind' if k == 'type' else 'Boolean' if k == 'missingLineage' else 'String'}"
        for k in filters
    )
    query = (
        f"query($first: Int!, $after: String{decl}) {{ artifacts(first: $first, after: $after"
        f"{', ' + args if args else ''}) {{ edges {{ cursor node {{ id }} }} "
        "pageInfo { hasNextPage endCursor } } }"
    )
    for _ in range(100):
        body = gql(client, query, first=page_size, after=after, **filters)
        assert "errors" not in body, body
        conn = body["data"]["artifacts"]
        ids += [edge["node"]["id"] for edge in conn["edges"]]
        if not conn["pageInfo"]["hasNextPage"]:
            return ids
        after = conn["pageInfo"]["endCursor"]
        assert after == conn["edges"][-1]["cursor"]
    raise AssertionError("pagination did not end")


def test_pagination_walks_every_row_once(client: TestClient, insert: Callable[..., int]) -> None:
    expected = [insert(name=f"a{i}") for i in range(23)]
    assert _all_ids(client, 5) == expected
    assert _all_ids(client, 100) == expected
    assert _all_ids(client, 23) == expected


def test_filters_combine(client: TestClient, insert: Callable[..., int]) -> None:
    chart_aapl_legacy = insert(artifact_type="chart", symbol="AAPL", workflow_id="wf-1")
    insert(artifact_type="chart", symbol="AAPL", workflow_id="wf-1", run_id="r", experiment_id="1")
    llm_aapl = insert(artifact_type="llm", symbol="AAPL", workflow_id="wf-2")
    insert(artifact_type="signal", symbol="MSFT", meta={"workflow_id": "wf-1"})
    half_linked = insert(artifact_type="chart", symbol="NVDA", run_id="r2")

    assert _all_ids(client, 2, type="LLM") == [llm_aapl]
    assert _all_ids(client, 2, symbol="AAPL", type="CHART") == [chart_aapl_legacy, 2]
    assert _all_ids(client, 2, workflowId="wf-1") == [chart_aapl_legacy, 2, 4]
    assert _all_ids(client, 2, missingLineage=True) == [chart_aapl_legacy, llm_aapl, 4, half_linked]
    assert _all_ids(client, 2, missingLineage=False) == [2]
    assert _all_ids(client, 2, symbol="TSLA") == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("{ artifact(id: -1) { id } }", "id must be a positive integer"),
        ("{ artifact(id: 0) { id } }", "id must be a positive integer"),
        ('{ artifact(id: "x") { id } }', "Int cannot represent non-integer value"),
        ("{ artifact(id: 99999999999) { id } }", "Int cannot represent non 32-bit signed integer"),
        ("{ artifacts(first: 1000) { edges { cursor } } }", "first must be between 1 and 100"),
        ("{ artifacts(first: 0) { edges { cursor } } }", "first must be between 1 and 100"),
        ('{ artifacts(after: "bm9wZQ==") { edges { cursor } } }', "invalid cursor"),
        ('{ artifacts(after: "%%%") { edges { cursor } } }', "invalid cursor"),
        ("{ artifacts(type: BOGUS) { edges { cursor } } }", "does not exist in 'ArtifactKind'"),
        ("{ nope }", "Cannot query field 'nope'"),
        ("{ artifact(id: 1) { id ", "Syntax Error"),
    ],
)
def test_bad_input_is_a_graphql_error_with_a_message(
    client: TestClient, query: str, expected: str
) -> None:
    response = client.post("/graphql", json={"query": query})
    assert response.status_code in {200, 400}
    messages = error_messages(response.json())
    assert any(expected in m for m in messages), messages


def test_forged_cursor_with_valid_shape_but_other_prefix_is_refused(client: TestClient) -> None:
    forged = base64.urlsafe_b64encode(b"user:1").decode()
    body = client.post(
        "/graphql", json={"query": f'{{ artifacts(after: "{forged}") {{ edges {{ cursor }} }} }}'}
    ).json()
    assert error_messages(body) == ["invalid cursor"]


def _nested_query(depth: int) -> str:
    # The schema has no cycles, so a deep document needs made-up fields below `node`
    # (depth 3); the depth rule must refuse it whatever else is wrong with it.
    inner = "leaf"
    for level in range(depth - 4):
        inner = f"f{level} {{ {inner} }}"
    return f"{{ artifacts {{ edges {{ node {{ {inner} }} }} }} }}"


def test_depth_limit_refuses_a_depth_12_query(client: TestClient) -> None:
    body = client.post("/graphql", json={"query": _nested_query(12)}).json()
    assert "'anonymous' exceeds maximum operation depth of 10" in error_messages(body)
    assert body["data"] is None
    shallow = client.post("/graphql", json={"query": _nested_query(10)}).json()
    assert not any("maximum operation depth" in m for m in error_messages(shallow))


def test_alias_limit_refuses_50_aliases(client: TestClient) -> None:
    query = "{ " + " ".join(f"a{i}: artifact(id: 1) {{ id }}" for i in range(50)) + " }"
    body = client.post("/graphql", json={"query": query}).json()
    assert any("aliases found. Allowed: 15" in m for m in error_messages(body))
    assert body.get("data") is None


def test_token_limit_refuses_huge_documents(client: TestClient) -> None:
    query = "{ artifact(id: 1) { " + " ".join(["id"] * 2500) + " } }"
    body = client.post("/graphql", json={"query": query}).json()
    assert error_messages(body) == [
        "Syntax Error: Document contains more than 2000 tokens. Parsing aborted."
    ]


def test_query_batching_is_refused(client: TestClient) -> None:
    response = client.post("/graphql", json=[{"query": "{ artifact(id: 1) { id } }"}] * 2)
    assert response.status_code == 400
    assert "Batching is not enabled" in response.text


def test_graphiql_is_served_in_development(client: TestClient) -> None:
    response = client.get("/graphql", headers={"accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()
