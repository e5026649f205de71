"""The workflowId filter runs in SQL, on an expression index, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from gateway.models import Artifact
from gateway.repository import WORKFLOW_INDEX, effective_workflow_id_expr
from tests.support import write_raw


def test_the_filter_finds_the_workflow_wherever_a_row_keeps_it(
    client: TestClient, insert: Callable[..., int]
) -> None:
    wanted = {
        insert(name="column", workflow_id="wf-1"),
        insert(name="metadata", meta={"workflow_id": "wf-1"}),
        insert(name="dag run", meta={"dag_run_id": "wf-1"}),
    }
    insert(name="other", workflow_id="wf-2", meta={"workflow_id": "wf-1"})  # column wins
    insert(name="array", meta=["wf-1"])
    insert(name="empty column", workflow_id="", meta={"workflow_id": "wf-3"})
    body = client.post(
        "/graphql",
        json={"query": '{ artifacts(workflowId: "wf-1") { edges { node { id workflowId } } } }'},
    ).json()
    nodes = [edge["node"] for edge in body["data"]["artifacts"]["edges"]]
    assert {n["id"] for n in nodes} == wanted
    assert {n["workflowId"] for n in nodes} == {"wf-1"}


def test_a_row_holding_a_lone_surrogate_does_not_break_the_filter(
    client: TestClient, engine: Engine, insert: Callable[..., int]
) -> None:
    # PostgreSQL's json type stores lone surrogate escapes but `->>` then fails the whole query
    # (and, with the index, the write): such a row is not matched by its metadata there.
    clean = insert(name="clean", meta={"workflow_id": "wf-9"})
    paired = insert(name="emoji")
    write_raw(engine, paired, "metadata", '{"note": "\\ud83d\\ude00", "workflow_id": "wf-9"}')
    odd = insert(name="odd")
    write_raw(engine, odd, "metadata", '{"note": "a\\ud800b", "workflow_id": "wf-9"}')
    body = client.post(
        "/graphql", json={"query": '{ artifacts(workflowId: "wf-9") { edges { node { id } } } }'}
    ).json()
    assert "errors" not in body, body
    found = {edge["node"]["id"] for edge in body["data"]["artifacts"]["edges"]}
    expected = {clean, paired} if engine.dialect.name == "postgresql" else {clean, paired, odd}
    assert found == expected


def test_the_filter_is_answered_from_the_expression_index(engine: Engine) -> None:
    statement = select(Artifact.id).where(effective_workflow_id_expr(engine.dialect.name) == "wf")
    sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
    with Session(engine) as session:
        if engine.dialect.name == "sqlite":
            plan = session.execute(text(f"EXPLAIN QUERY PLAN {sql}")).fetchall()
        else:
            session.execute(text("SET LOCAL enable_seqscan = off"))  # an empty table otherwise
            plan = session.execute(text(f"EXPLAIN {sql}")).fetchall()
    assert WORKFLOW_INDEX in " ".join(str(step) for step in plan)
