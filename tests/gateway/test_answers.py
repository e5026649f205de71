"""Kept answers: identical reads within GATEWAY_ANSWER_CACHE_S get the same answer without the
work; errors and mutations are never kept; a repair made here forgets them; a row change shows
once the answer has aged out."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.testclient import TestClient

from gateway import repository
from gateway.answers import MAX_ANSWER_BYTES, AnswerCache, AnswerKey
from gateway.models import Artifact
from gateway.settings import Settings

NAMES = "{ artifacts(first: 10) { edges { node { id name } } } }"
TOKEN = "answers-admin-token-0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def answers_count(client: TestClient, api: str, outcome: str) -> float:
    text = client.get("/metrics").text
    pattern = rf'^gateway_answers_total\{{api="{api}",outcome="{outcome}"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def rename(engine: Engine, artifact_id: int, name: str) -> None:
    with Session(engine) as session:
        row = session.get(Artifact, artifact_id)
        assert row is not None
        row.name = name
        session.add(row)
        session.commit()


# --- the cache ----------------------------------------------------------------------------


def test_an_answer_is_served_until_it_is_older_than_the_ttl() -> None:
    clock = Clock()
    answers = AnswerCache(ttl_s=2.0, clock=clock)
    answers.keep(("q",), b'{"a":1}')
    clock.now += 1.9
    assert answers.get(("q",)) == b'{"a":1}'
    clock.now += 0.2
    assert answers.get(("q",)) is None


def test_a_ttl_of_zero_keeps_nothing() -> None:
    answers = AnswerCache(ttl_s=0)
    answers.keep(("q",), b"{}")
    assert not answers.enabled
    assert answers.get(("q",)) is None


def test_an_answer_too_large_to_be_worth_keeping_is_not_kept() -> None:
    answers = AnswerCache(ttl_s=2.0)
    answers.keep(("big",), b'"' + b"x" * MAX_ANSWER_BYTES + b'"')
    answers.keep(("small",), b'"x"')
    assert answers.get(("big",)) is None
    assert answers.get(("small",)) == b'"x"'


def test_kept_answers_stay_within_their_byte_budget() -> None:
    answers = AnswerCache(ttl_s=60, max_bytes=10_000)
    for i in range(100):
        answers.keep((str(i),), b'"' + b"x" * 1_000 + b'"')
    kept = [i for i in range(100) if answers.get((str(i),)) is not None]
    assert 0 < len(kept) < 10
    assert kept == list(range(100 - len(kept), 100))  # the newest are kept


def test_clear_forgets_every_answer() -> None:
    answers = AnswerCache(ttl_s=60)
    answers.keep(("a",), b"1")
    answers.clear()
    assert answers.get(("a",)) is None


async def _answer_while(answers: AnswerCache, key: AnswerKey, body: bytes | None) -> None:
    """Answer `key` (keeping `body`, unless None) while the event loop runs other reads."""
    with answers.answering(key):
        await asyncio.sleep(0.05)
        if body is not None:
            answers.keep(key, body)


def test_a_read_arriving_while_the_identical_one_is_answered_gets_its_answer() -> None:
    async def scenario() -> tuple[bytes | None, bytes | None]:
        answers = AnswerCache(ttl_s=60)
        producing = asyncio.ensure_future(_answer_while(answers, ("a",), b"kept"))
        await asyncio.sleep(0)  # the first read is being answered
        waited = await answers.wait_for_answer(("a",))
        await producing
        return waited, await answers.wait_for_answer(("b",))

    assert asyncio.run(scenario()) == (b"kept", None)


def test_a_waiting_read_answers_itself_when_the_other_answer_was_not_kept() -> None:
    async def scenario() -> bytes | None:
        answers = AnswerCache(ttl_s=60)
        producing = asyncio.ensure_future(_answer_while(answers, ("a",), None))
        await asyncio.sleep(0)
        waited = await answers.wait_for_answer(("a",))
        assert producing.done()
        return waited

    assert asyncio.run(scenario()) is None


def test_a_read_stopped_while_answering_releases_the_reads_waiting_for_it() -> None:
    async def scenario() -> tuple[bytes | None, bytes | None]:
        answers = AnswerCache(ttl_s=60)
        producing = asyncio.ensure_future(_answer_while(answers, ("a",), b"never"))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(answers.wait_for_answer(("a",)))
        await asyncio.sleep(0)
        producing.cancel()  # its client left, or its deadline passed
        waited = await asyncio.wait_for(waiting, timeout=5)
        # Nothing is left marked as being answered: a later read does not wait at all.
        later = await asyncio.wait_for(answers.wait_for_answer(("a",)), timeout=1)
        return waited, later

    assert asyncio.run(scenario()) == (None, None)


# --- GraphQL ------------------------------------------------------------------------------


def test_an_identical_query_within_the_ttl_gets_the_kept_answer(
    client: TestClient, insert: Callable[..., int], engine: Engine
) -> None:
    artifact_id = insert(name="before")
    first = client.post("/graphql", json={"query": NAMES})
    rename(engine, artifact_id, "after")
    second = client.post("/graphql", json={"query": NAMES})
    assert second.status_code == 200
    assert second.content == first.content
    assert "before" in second.text
    assert answers_count(client, "graphql", "hit") == 1
    assert answers_count(client, "graphql", "miss") == 1


def test_a_changed_row_shows_once_the_answer_has_aged_out(
    make_client: Callable[..., TestClient], insert: Callable[..., int], engine: Engine
) -> None:
    client = make_client(answer_cache_s=0.3)
    artifact_id = insert(name="before")
    assert "before" in client.post("/graphql", json={"query": NAMES}).text
    rename(engine, artifact_id, "after")
    time.sleep(0.4)
    assert "after" in client.post("/graphql", json={"query": NAMES}).text


def test_other_variables_are_another_read(client: TestClient, insert: Callable[..., int]) -> None:
    first, second = insert(name="first"), insert(name="second")
    query = "query($id: Int!) { artifact(id: $id) { name } }"
    answers = [
        client.post("/graphql", json={"query": query, "variables": {"id": i}}).json()
        for i in (first, second)
    ]
    assert [a["data"]["artifact"]["name"] for a in answers] == ["first", "second"]
    assert answers_count(client, "graphql", "hit") == 0


def test_an_answer_with_errors_is_not_kept(client: TestClient) -> None:
    query = '{ artifacts(after: "%%%") { edges { cursor } } }'
    for _ in range(2):
        body = client.post("/graphql", json={"query": query}).json()
        assert "invalid cursor" in body["errors"][0]["message"]
    assert answers_count(client, "graphql", "hit") == 0
    assert answers_count(client, "graphql", "miss") == 2


def test_a_missing_artifact_is_an_answer_too_and_ages_out(
    make_client: Callable[..., TestClient], insert: Callable[..., int]
) -> None:
    client = make_client(answer_cache_s=0.3)
    query = {"query": "{ artifact(id: 424242) { name } }"}
    assert client.post("/graphql", json=query).json() == {"data": {"artifact": None}}
    insert(id=424242, name="arrived")
    time.sleep(0.4)
    assert client.post("/graphql", json=query).json() == {"data": {"artifact": {"name": "arrived"}}}


def test_a_document_the_gateway_refuses_is_refused_every_time(client: TestClient) -> None:
    costly = "{ artifacts(first: 100) { edges { node { chart { snapshotBars } } } } }"
    codes = [
        client.post("/graphql", json={"query": costly}).json()["errors"][0]["extensions"]["code"]
        for _ in range(2)
    ]
    assert codes == ["QUERY_TOO_COSTLY", "QUERY_TOO_COSTLY"]
    assert answers_count(client, "graphql", "hit") == 0


def test_the_same_query_sent_differently_is_checked_and_worked_out_again(
    client: TestClient, insert: Callable[..., int], engine: Engine
) -> None:
    artifact_id = insert(name="before")
    client.post("/graphql", json={"query": NAMES})
    rename(engine, artifact_id, "after")
    respaced = client.post("/graphql", json={"query": NAMES.replace(" ", "  ")})
    as_get = client.get("/graphql", params={"query": NAMES})
    assert "after" in respaced.text
    assert "after" in as_get.text
    assert answers_count(client, "graphql", "hit") == 0


def test_an_answer_past_the_response_cap_is_not_kept(
    make_client: Callable[..., TestClient], insert: Callable[..., int]
) -> None:
    client = make_client(max_response_mb=1)
    for _ in range(60):
        insert(name="x" * 20_000)  # 60 names of 20 KB: 1.2 MB of answer
    query = {"query": "{ artifacts(first: 100) { edges { node { name } } } }"}
    for _ in range(2):
        body = client.post("/graphql", json=query).json()
        assert body["errors"][0]["extensions"]["code"] == "RESPONSE_TOO_LARGE"
    assert answers_count(client, "graphql", "hit") == 0


def test_with_a_ttl_of_zero_every_query_is_worked_out(
    make_client: Callable[..., TestClient], insert: Callable[..., int], engine: Engine
) -> None:
    client = make_client(answer_cache_s=0)
    artifact_id = insert(name="before")
    client.post("/graphql", json={"query": NAMES})
    rename(engine, artifact_id, "after")
    assert "after" in client.post("/graphql", json={"query": NAMES}).text
    assert answers_count(client, "graphql", "hit") == answers_count(client, "graphql", "miss") == 0


def test_a_repair_made_here_forgets_the_kept_answers(
    make_client: Callable[..., TestClient], insert: Callable[..., int], settings: Settings
) -> None:
    mlflow = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = mlflow.create_experiment(f"answers-{uuid.uuid4().hex[:8]}")
    workflow = f"wf-{uuid.uuid4().hex[:8]}"
    run = mlflow.create_run(experiment, tags={"workflow_id": workflow}).info.run_id
    artifact_id = insert(workflow_id=workflow)
    client = make_client(admin_token=SecretStr(TOKEN))
    query = {"query": f"{{ artifact(id: {artifact_id}) {{ runId lineage {{ status }} }} }}"}

    def lineage() -> dict[str, Any]:
        found: dict[str, Any] = client.post("/graphql", json=query).json()["data"]["artifact"]
        return found

    assert lineage() == {"runId": run, "lineage": {"status": "HYDRATED"}}
    repair = client.post(
        "/graphql",
        json={"query": "mutation { repairLineage { repaired } }"},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert repair.json()["data"]["repairLineage"]["repaired"] == 1
    assert lineage() == {"runId": run, "lineage": {"status": "STORED"}}
    again = client.post(  # a mutation is never answered from a kept answer: it runs again
        "/graphql",
        json={"query": "mutation { repairLineage { repaired } }"},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert again.json()["data"]["repairLineage"]["repaired"] == 0


# --- REST ---------------------------------------------------------------------------------


def test_an_identical_rest_read_within_the_ttl_gets_the_kept_document(
    client: TestClient, insert: Callable[..., int], engine: Engine
) -> None:
    artifact_id = insert(name="before", meta={"note": "x"})
    first = client.get(f"/api/artifacts/{artifact_id}")
    rename(engine, artifact_id, "after")
    second = client.get(f"/api/artifacts/{artifact_id}")
    assert (second.status_code, second.headers["content-type"]) == (200, "application/json")
    assert second.content == first.content
    assert second.json()["name"] == "before"
    assert answers_count(client, "rest", "hit") == 1


def test_a_rest_read_that_failed_is_not_kept(
    client: TestClient, insert: Callable[..., int]
) -> None:
    assert client.get("/api/artifacts/424242").status_code == 404
    insert(id=424242, name="arrived")
    assert client.get("/api/artifacts/424242").json()["name"] == "arrived"
    assert answers_count(client, "rest", "hit") == 0


def test_identical_rest_reads_at_once_are_worked_out_once(
    client: TestClient, insert: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact_id = insert(name="popular")
    reads: list[int] = []
    real = repository.get_artifact_document

    def slow_read(session: Session, *, artifact_id: int) -> Any:
        reads.append(artifact_id)
        time.sleep(0.5)  # the other reads arrive while this one is being answered
        return real(session, artifact_id=artifact_id)

    monkeypatch.setattr(repository, "get_artifact_document", slow_read)
    with ThreadPoolExecutor(max_workers=6) as pool:
        bodies = list(pool.map(lambda _: client.get(f"/api/artifacts/{artifact_id}"), range(6)))
    assert [b.status_code for b in bodies] == [200] * 6
    assert len({b.content for b in bodies}) == 1
    assert reads == [artifact_id]
    assert answers_count(client, "rest", "miss") == 1


def test_identical_queries_at_once_are_worked_out_once(
    client: TestClient, insert: Callable[..., int], monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(name="listed")
    pages: list[int] = []
    real = repository.list_artifacts

    def slow_page(session: Session, **kwargs: Any) -> Any:
        pages.append(1)
        time.sleep(0.5)
        return real(session, **kwargs)

    monkeypatch.setattr(repository, "list_artifacts", slow_page)
    with ThreadPoolExecutor(max_workers=6) as pool:
        bodies = list(pool.map(lambda _: client.post("/graphql", json={"query": NAMES}), range(6)))
    assert [b.status_code for b in bodies] == [200] * 6
    assert len({b.content for b in bodies}) == 1
    assert "listed" in bodies[0].text
    assert len(pages) == 1
    assert answers_count(client, "graphql", "miss") == 1


def test_a_rest_read_with_a_ttl_of_zero_sees_the_change(
    make_client: Callable[..., TestClient], insert: Callable[..., int], engine: Engine
) -> None:
    client = make_client(answer_cache_s=0)
    artifact_id = insert(name="before")
    client.get(f"/api/artifacts/{artifact_id}")
    rename(engine, artifact_id, "after")
    assert client.get(f"/api/artifacts/{artifact_id}").json()["name"] == "after"
