"""OpenTelemetry tracing: a real `gateway serve` exporting OTLP/HTTP to a receiver on loopback."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient
from sqlmodel import Session
from starlette.testclient import TestClient

from chartkit import random_walk_bars
from gateway import tracing
from gateway.app import create_app
from gateway.db import init_db, make_engine
from gateway.models import Artifact
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.servers import GatewayProcess, OtlpReceiver, ReceivedSpan, free_port
from tests.support import make_run

SERVER, CLIENT = 2, 3  # OTLP span kinds
ERROR = 2  # OTLP status code


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def wait_for(receiver: OtlpReceiver, trace_id: str, names: set[str]) -> list[ReceivedSpan]:
    deadline = time.monotonic() + 60
    while True:
        spans = receiver.in_trace(trace_id)
        if names <= {span.name for span in spans}:
            return spans
        assert time.monotonic() < deadline, sorted(span.name for span in spans)
        time.sleep(0.1)


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    by_id = {s.span_id: s for s in spans}
    chain, current = [], span
    while current.parent_span_id in by_id:
        current = by_id[current.parent_span_id]
        chain.append(current.name)
    return chain


def test_wanted_only_with_an_endpoint_and_not_disabled() -> None:
    assert not tracing.wanted({})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}
    )


def test_without_the_variables_the_app_is_not_instrumented(settings: Settings) -> None:
    app = create_app(settings)
    assert not tracing.enabled()
    assert all("OpenTelemetry" not in m.cls.__name__ for m in app.user_middleware)  # type: ignore[attr-defined]
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.mlflow
def test_a_traced_request_reaches_mlflow_the_database_and_a_render_worker_in_one_trace(
    tmp_path: Path,
    mlflow: MlflowClient,
    experiment: str,
    mlflow_proxy: RecordingProxy,
) -> None:
    database = f"sqlite:///{tmp_path / 'gw.db'}"
    engine = make_engine(database)
    init_db(engine)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = make_run(mlflow, experiment, workflow_id=wf)
    with Session(engine) as session:
        legacy = Artifact(name="legacy", artifact_type="signal", workflow_id=wf)
        chart = Artifact(
            name="chart",
            artifact_type="chart",
            symbol="AAPL",
            meta={"market_data_snapshot": random_walk_bars(80, seed=3)},
        )
        session.add_all([legacy, chart])
        session.commit()
        legacy_id, chart_id = legacy.id, chart.id
    engine.dispose()
    with OtlpReceiver() as receiver:
        env = {
            "DATABASE_URL": database,
            "MLFLOW_TRACKING_URI": mlflow_proxy.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_SERVICE_NAME": "gateway-e2e",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with GatewayProcess(tmp_path, env) as gateway:
            # Ready: the start-up MLflow warm-up (a trace of its own) has sent its requests.
            gateway.wait_until_ready()
            header, graphql_trace, caller_span = traceparent()
            mlflow_proxy.reset()
            answer = httpx.post(
                f"{gateway.url}/graphql",
                json={"query": f"{{ artifact(id: {legacy_id}) {{ runId run {{ id }} }} }}"},
                headers={"traceparent": header},
                timeout=60,
            )
            image_header, image_trace, _ = traceparent()
            image = httpx.get(
                f"{gateway.url}/api/artifacts/{chart_id}/image",
                headers={"traceparent": image_header},
                timeout=60,
            )
            graphql_spans = wait_for(
                receiver, graphql_trace, {"POST /graphql", "lineage.resolve", "mlflow.search_runs"}
            )
            image_spans = wait_for(
                receiver, image_trace, {"GET /api/artifacts/{artifact_id}/image", "chart.render"}
            )
            gateway.stop()
            lines = [json.loads(line) for line in gateway.output_lines() if line.startswith("{")]

    assert answer.status_code == 200, answer.text
    assert answer.json()["data"]["artifact"] == {"runId": run_id, "run": {"id": run_id}}
    assert image.status_code == 200

    # The server span is the caller's child, named by the route; everything else is below it.
    (server,) = [s for s in graphql_spans if s.kind == SERVER and s.name == "POST /graphql"]
    assert server.parent_span_id == caller_span
    assert server.resource["service.name"] == "gateway-e2e"
    lookup = next(s for s in graphql_spans if s.name == "lineage.resolve")
    assert "POST /graphql" in ancestors(lookup, graphql_spans)
    assert lookup.attributes["lineage.found"] >= 1
    search = next(s for s in graphql_spans if s.name == "mlflow.search_runs")
    assert search.attributes["mlflow.search_by"] in {"id", "workflow"}
    mlflow_calls = {s.span_id for s in graphql_spans if s.name.startswith("mlflow.")}
    http_calls = [s for s in graphql_spans if s.kind == CLIENT and s.parent_span_id in mlflow_calls]
    assert http_calls, "no HTTP client span below an MLflow call"
    assert any(
        "db.system" in s.attributes or "db.system.name" in s.attributes for s in graphql_spans
    )
    assert "GraphQL Query" in {s.name for s in graphql_spans}
    # MLflow got the trace: every call it received carried a traceparent of this trace.
    sent = [h.get("traceparent", "") for h in mlflow_proxy.headers]
    assert sent
    assert all(graphql_trace in value for value in sent), sent

    # The render ran in a worker process; its span is still in the request's trace, below it.
    (render,) = [s for s in image_spans if s.name == "chart.render"]
    assert "GET /api/artifacts/{artifact_id}/image" in ancestors(render, image_spans)
    (image_server,) = [s for s in image_spans if s.name == "GET /api/artifacts/{artifact_id}/image"]
    assert image_server.attributes["artifact.id"] == chart_id
    assert image_server.attributes["chart.source"] == "regenerated"

    # The request's log lines carry its trace id.
    logged = [e for e in lines if e.get("event") == "http.request" and e.get("path") == "/graphql"]
    assert [e.get("trace_id") for e in logged] == [graphql_trace]
    assert all(len(e["span_id"]) == 16 for e in logged)


def test_without_the_variables_nothing_is_exported_and_logs_have_no_trace_ids(
    tmp_path: Path,
) -> None:
    with OtlpReceiver() as receiver:
        env = {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
            # A collector is there, but nothing tells the gateway about it.
            "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        }
        with GatewayProcess(tmp_path, env) as gateway:
            gateway.wait_until_listening()
            header, _, _ = traceparent()
            assert (
                httpx.get(f"{gateway.url}/healthz", headers={"traceparent": header}).status_code
                == 200
            )
            time.sleep(0.5)
            gateway.stop()
            lines = [json.loads(line) for line in gateway.output_lines() if line.startswith("{")]
        assert receiver.spans == []
    assert lines
    assert not any("trace_id" in line for line in lines)


def probe(tmp_path: Path, tracking_uri: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.gateway.tracing_probe",
            f"sqlite:///{tmp_path / 'p.db'}",
            tracking_uri,
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_in_process_spans_nest_under_the_request_and_carry_outcomes(tmp_path: Path) -> None:
    result = probe(tmp_path, f"http://127.0.0.1:{free_port()}")  # MLflow is down
    assert result["graphql"]["data"]["artifact"]["lineage"]["status"] == "UNAVAILABLE"
    assert result["rest"] == 200
    spans = result["spans"]
    by_id = {s["span_id"]: s for s in spans}

    def root_of(span: dict[str, Any]) -> dict[str, Any]:
        while span["parent"] in by_id:
            span = by_id[span["parent"]]
        return span

    # HTTP server spans (Strawberry's operation span is a SERVER span too, named "GraphQL ...").
    servers = [
        s for s in spans if s["kind"] == "SERVER" and s["name"].startswith(("GET ", "POST "))
    ]
    assert sorted(s["name"] for s in servers) == [
        "GET /api/artifacts/{artifact_id}",
        "POST /graphql",
    ]
    graphql_server = next(s for s in servers if s["name"] == "POST /graphql")
    resolve = [s for s in spans if s["name"] == "lineage.resolve"]
    assert resolve
    assert all(
        root_of(s)["name"] in {"POST /graphql", "GET /api/artifacts/{artifact_id}"} for s in resolve
    )
    in_graphql = [s for s in resolve if root_of(s) is graphql_server]
    assert in_graphql[0]["attributes"]["lineage.unavailable"] == 1
    assert in_graphql[0]["status"] == "ERROR"
    listing = [s for s in spans if s["name"] == "mlflow.search_experiments"]
    assert listing
    assert all(s["status"] == "ERROR" for s in listing)
    operation = [s for s in spans if s["name"] == "GraphQL Query"]
    assert len(operation) == 1
    assert root_of(operation[0]) is graphql_server
    rest_server = next(s for s in servers if s["name"] == "GET /api/artifacts/{artifact_id}")
    assert rest_server["attributes"]["artifact.id"] == 1
    assert rest_server["attributes"]["lineage.status"] == "UNAVAILABLE"
    database = [s for s in spans if root_of(s) is rest_server and "db.system" in s["attributes"]]
    assert database, "no SQL span below the REST request"
    assert not [s for s in spans if s["name"].endswith((" http receive", " http send"))]
    (task,) = [s for s in spans if s["name"] == "airflow.task"]
    (store,) = [s for s in spans if s["name"] == "dags_utils.store_artifact"]
    assert store["parent"] == task["span_id"]
    assert store["attributes"]["artifact.id"] == result["stored"]
    assert store["attributes"]["artifact.type"] == "signal"
