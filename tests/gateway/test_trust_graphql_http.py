"""GraphQL over HTTP as the specs say: operation choice, HEAD, media types, large answers."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.testclient import TestClient

from gateway.strictjson import EncodedJSON, dumps_bytes


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"  # transport-level checks: one database is enough


TWO_OPERATIONS = "query A { artifacts(first: 1) { edges { cursor } } } query B { __typename }"


def test_two_operations_without_an_operation_name_is_an_error_and_runs_neither(
    client: TestClient, insert: Callable[..., int]
) -> None:
    insert()
    body = client.post("/graphql", json={"query": TWO_OPERATIONS}).json()
    assert body.get("data") is None
    (error,) = body["errors"]
    assert "operation name" in error["message"].lower()


def test_two_operations_without_an_operation_name_over_get_is_an_error(
    client: TestClient,
) -> None:
    body = client.get("/graphql", params={"query": TWO_OPERATIONS}).json()
    assert body.get("data") is None
    assert "operation name" in body["errors"][0]["message"].lower()


def test_the_named_operation_of_two_runs(client: TestClient) -> None:
    body = client.post("/graphql", json={"query": TWO_OPERATIONS, "operationName": "B"}).json()
    assert body == {"data": {"__typename": "Query"}}


def test_an_operation_name_the_document_lacks_is_a_400(client: TestClient) -> None:
    response = client.post("/graphql", json={"query": TWO_OPERATIONS, "operationName": "C"})
    assert response.status_code == 400
    assert 'Unknown operation named "C"' in response.text


def test_head_graphql_answers_as_get_without_a_body(client: TestClient) -> None:
    query = {"query": "{ __typename }"}
    got = client.get("/graphql", params=query)
    head = client.head("/graphql", params=query)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == str(len(got.content))


def test_head_graphql_without_a_query_answers_as_get_does(client: TestClient) -> None:
    got = client.get("/graphql", headers={"accept": "text/html"})
    head = client.head("/graphql", headers={"accept": "text/html"})
    assert head.status_code == got.status_code
    assert head.content == b""


def test_head_graphql_runs_no_mutation(client: TestClient) -> None:
    response = client.head("/graphql", params={"query": "mutation { repairLineage { scanned } }"})
    assert response.status_code == 400


def test_graphiql_is_served_to_an_accept_header_in_any_case(client: TestClient) -> None:
    response = client.get("/graphql", headers={"accept": "TEXT/HTML"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    "content_type",
    ["APPLICATION/JSON", "Application/Json; charset=UTF-8", "application/json;CHARSET=utf-8"],
)
def test_json_media_types_are_matched_without_case(client: TestClient, content_type: str) -> None:
    response = client.post(
        "/graphql",
        content=json.dumps({"query": "{ __typename }"}).encode(),
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/jsonp", "text/application/json", "x/json"]
)
def test_media_types_that_only_contain_json_are_refused(
    client: TestClient, content_type: str
) -> None:
    response = client.post(
        "/graphql",
        content=json.dumps({"query": "{ __typename }"}).encode(),
        headers={"content-type": content_type},
    )
    assert response.status_code == 400
    assert "content type" in response.text.lower()


# --- Encoding large answers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"data": None},
        {"data": {"a": [1, 2.5, None, True, "x" * 70_000, {"k": "é\u2028"}] * 50}},
        {"data": {f"a{i}": {"edges": [{"node": {"name": "n" * 999}}] * 300} for i in range(5)}},
        {"data": {"m": EncodedJSON('{"x":[1,2]}'), "big": EncodedJSON("[" + "1," * 99_999 + "1]")}},
        {"data": {"nan": float("nan"), "lone": "\ud800", "deep": [[[[["x" * 100_000]]]]]}},
        [{"data": {"a": "x" * 200_000}}, {"data": None, "errors": [{"message": "m"}]}],
    ],
)
def test_answers_encode_in_pieces_to_the_same_bytes(value: Any) -> None:
    from gateway.gql.encoding import encode_answer

    assert anyio.run(encode_answer, value, 1 << 30) == dumps_bytes(value)


def test_encoding_stops_once_the_answer_passes_the_limit() -> None:
    from gateway.gql.encoding import encode_answer

    # 100 MB of JSON from one 1 KB string: the value is small, its encoding is not.
    value = {"data": {"rows": ["x" * 1024] * 100_000}}
    tracemalloc.start()
    try:
        encoded = anyio.run(encode_answer, value, 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert encoded is None
    assert peak < 8 * 1024 * 1024  # today's encoder held all 100 MB (then a copy as bytes)


def test_a_query_far_past_the_response_cap_is_refused_without_building_it(
    make_client: Callable[..., TestClient], insert: Callable[..., int]
) -> None:
    client = make_client(max_response_mb=1)
    for _ in range(60):
        insert(name="x" * 20_000)  # 1.2 MB a page; 15 aliases of it would be 18 MB
    aliases = " ".join(
        f"a{i}: artifacts(first: 60) {{ edges {{ node {{ name }} }} }}" for i in range(15)
    )
    client.post("/graphql", json={"query": "{ __typename }"})  # lifespan, caches warm
    tracemalloc.start()
    try:
        response = client.post("/graphql", json={"query": f"{{ {aliases} }}"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (error,) = response.json()["errors"]
    assert error["extensions"] == {"code": "RESPONSE_TOO_LARGE"}
    assert "more than GATEWAY_MAX_RESPONSE_MB (1 MB)" in error["message"]
    # Each alias reads its page (18 MB of names in all); today's encoder then held the 18 MB
    # answer as text and again as bytes (over 54 MB). Now: the names and one cap of answer.
    assert peak < 1.5 * 15 * 60 * 20_000


def test_a_large_answer_whose_first_middle_and_last_rows_are_small_is_encoded_in_pieces() -> None:
    """No guess from a few rows decides that an answer is small: 97 of these 100 rows hold
    200 KB each, and the first, middle and last 10 characters."""
    from gateway.gql.encoding import PIECE_CHARS, encode_answer

    small, large = {"node": {"name": "s" * 10}}, {"node": {"name": "l" * 200_000}}
    edges = [large] * 100
    edges[0] = edges[50] = edges[-1] = small
    value = {"data": {"artifacts": {"edges": edges}}}
    expected = dumps_bytes(value)

    async def scenario() -> tuple[bytes | None, int]:
        turns = 0
        done = False

        async def ticker() -> None:
            nonlocal turns
            while not done:
                await anyio.lowlevel.checkpoint()
                turns += 1

        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            await anyio.lowlevel.checkpoint()
            before = turns
            body = await encode_answer(value, 64 * 1024 * 1024)
            during = turns - before
            done = True
        return body, during

    body, during = anyio.run(scenario)
    assert body == expected
    # 19 MB: the loop turns many times (at the most one slice of 16 rows is made at once).
    assert during >= len(expected) // (16 * 200_000 + PIECE_CHARS), during


def test_the_event_loop_turns_while_a_large_answer_is_encoded() -> None:
    """Other tasks run between the pieces of a large answer's encoding: today's encoder was
    one C call that held the loop until the whole text existed. Counted in loop turns, not
    seconds, so a slow runner cannot fail it."""
    from gateway.gql.encoding import PIECE_CHARS, encode_answer

    # What 15 aliases of a page of long names look like once executed: about 18 MB.
    value = {
        "data": {
            f"a{i}": {"edges": [{"node": {"name": "x" * 20_000}} for _ in range(60)]}
            for i in range(15)
        }
    }
    expected = dumps_bytes(value)

    async def scenario() -> tuple[bytes | None, int]:
        turns = 0
        done = False

        async def ticker() -> None:
            nonlocal turns
            while not done:
                await anyio.lowlevel.checkpoint()
                turns += 1

        async with anyio.create_task_group() as group:
            group.start_soon(ticker)
            await anyio.lowlevel.checkpoint()  # the ticker is running before encoding starts
            before = turns
            body = await encode_answer(value, 64 * 1024 * 1024)
            during = turns - before
            done = True
        return body, during

    body, during = anyio.run(scenario)
    assert body == expected
    # At least one turn of the loop for every two pieces of the answer.
    assert during >= len(expected) // PIECE_CHARS // 2, during
