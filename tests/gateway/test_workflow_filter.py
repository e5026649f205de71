"""The workflowId filter runs in SQL, on an expression index, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.testclient import TestClient

from gateway.models import Artifact
from gateway.repository import WORKFLOW_INDEX, effective_workflow_id_expr


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
