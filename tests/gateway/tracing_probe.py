"""Run in a subprocess by test_tracing: the app in-process with the SDK's in-memory exporter.

A process of its own because OpenTelemetry's tracer provider is set once per process: installed
in the test process, it would trace every test that follows. Prints the finished spans as JSON.
"""

from __future__ import annotations

import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlmodel import Session
from starlette.testclient import TestClient

from dags_utils.artifacts import store_signal_artifact
from gateway.app import create_app
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from gateway.settings import Settings


def main(database_url: str, tracking_uri: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "probe"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    engine = make_engine(database_url)
    init_db(engine)
    with Session(engine) as session:
        row = Artifact(name="legacy", artifact_type="signal", workflow_id="wf-probe")
        session.add(row)
        session.commit()
        artifact_id = row.id
    engine.dispose()
    settings = Settings(
        database_url=database_url,
        mlflow_tracking_uri=tracking_uri,
        mlflow_timeout_s=0.5,
        answer_cache_s=0,
    )
    with TestClient(create_app(settings)) as client:
        graphql = client.post(
            "/graphql",
            json={"query": f"{{ artifact(id: {artifact_id}) {{ name lineage {{ status }} }} }}"},
        )
        rest = client.get(f"/api/artifacts/{artifact_id}")
    # A DAG task that traces: what dags_utils stores is a child of the task's span.
    engine = make_engine(database_url)
    with trace.get_tracer("airflow").start_as_current_span("airflow.task"):
        stored = store_signal_artifact(
            engine, name="signal", symbol="AAPL", workflow_id="wf-probe", signal="BUY"
        )
    engine.dispose()
    provider.force_flush()
    spans = [
        {
            "name": span.name,
            "span_id": format(span.context.span_id, "016x"),
            "trace_id": format(span.context.trace_id, "032x"),
            "parent": format(span.parent.span_id, "016x") if span.parent else None,
            "kind": span.kind.name,
            "status": span.status.status_code.name,
            "attributes": {k: v for k, v in (span.attributes or {}).items()},
        }
        for span in exporter.get_finished_spans()
    ]
    print(
        json.dumps(
            {"graphql": graphql.json(), "rest": rest.status_code, "stored": stored, "spans": spans}
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
