"""What clients put in headers stays bounded and stays here: header cap, log line cap, trace
context taken in and sent on (a real `gateway serve`, a real MLflow behind a recording proxy)."""

from __future__ import annotations

import json
import logging
import secrets
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow.tracking import MlflowClient
from opentelemetry import baggage, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from sqlmodel import Session

from gateway.db import init_db, make_engine
from gateway.models import Artifact
from gateway.observability import _request_id_from
from gateway.strictjson import dumps
from tests.faults import RecordingProxy
from tests.servers import GatewayProcess, OtlpReceiver
from tests.support import make_run


def traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def raw_request(url: str, head: bytes) -> bytes:
    """Send `head` (a request without a body) on a fresh connection; what came back, until the
    server closed (empty when it reset the connection first)."""
    host, port = url.removeprefix("http://").split(":")
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        try:
            sock.sendall(head)
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and b"connection: close" not in answer.lower():
                    break
        except (ConnectionResetError, BrokenPipeError):
            pass
    return answer


def json_lines(gateway: GatewayProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gateway.output_lines() if line.startswith("{")]


# --- The header block cap -------------------------------------------------------------------


def test_a_header_block_past_the_cap_is_a_431_and_one_under_it_is_served(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
        "GATEWAY_MAX_REQUEST_HEADER_BYTES": "16384",
    }
    with GatewayProcess(tmp_path, env) as gateway:
        gateway.wait_until_listening()
        under = httpx.get(f"{gateway.url}/healthz", headers={"x-pad": "u" * 15_000})
        over = raw_request(
            gateway.url,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: " + b"o" * 20_000 + b"\r\n\r\n",
        )
        many = raw_request(
            gateway.url,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\n"
            + b"".join(b"x-h%d: vvvvvvvvvvvvvvvv\r\n" % i for i in range(2000))
            + b"\r\n",
        )
        # 1 MB in one header: refused (or the connection reset) once the cap is passed.
        huge = raw_request(
            gateway.url,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nbaggage: k=" + b"h" * (1024 * 1024) + b"\r\n\r\n",
        )
        after = httpx.get(f"{gateway.url}/healthz")
        gateway.stop()
        lines = json_lines(gateway)
        raw = "\n".join(gateway.output_lines())
    assert under.status_code == 200
    assert over.startswith(b"HTTP/1.1 431 ")
    assert many.startswith(b"HTTP/1.1 431 ")
    assert huge == b"" or huge.startswith(b"HTTP/1.1 431 ")
    assert after.status_code == 200
    refused = [e for e in lines if e.get("event") == "http.headers_too_large"]
    assert len(refused) == 3
    assert all(e["limit_bytes"] == 16384 for e in refused)
    assert max(e["seen_bytes"] for e in refused) < 16384 + 512 * 1024  # never the whole 1 MB
    # The app never saw them: one access line per served request, none for the refused.
    served = [e for e in lines if e.get("event") == "http.request"]
    assert all(e["status"] == 200 for e in served)
    assert "oooooooooo" not in raw
    assert "hhhhhhhhhh" not in raw


# --- The log line cap -----------------------------------------------------------------------


def test_every_line_the_process_writes_fits_the_line_cap(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'gw.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}",
        "GATEWAY_LOG_MAX_LINE_BYTES": "2048",
    }
    with GatewayProcess(tmp_path, env) as gateway:
        gateway.wait_until_listening()
        long_path = "/" + "p" * 10_000
        assert httpx.get(f"{gateway.url}{long_path}").status_code == 404
        gateway.stop()
        out = [
            line
            for path in (gateway.stdout, gateway.stderr)
            for line in path.read_bytes().splitlines()
        ]
        lines = json_lines(gateway)
    assert max(len(line) for line in out) <= 2048
    (access,) = [e for e in lines if e.get("event") == "http.request" and e["status"] == 404]
    assert "path" in access["truncated"]
    assert access["path"].startswith("/ppp")
    assert access["route"] == "unmatched"


def test_the_line_cap_cuts_the_longest_values_and_keeps_the_event() -> None:
    from gateway.observability import LineCap

    def render(_logger: Any, _method: str, event: dict[str, Any]) -> str:
        return dumps(event)

    cap = LineCap(render, 1024)
    line = cap(None, "info", {"event": "x.y", "a": "é" * 5000, "b": {"deep": ["z" * 3000]}, "n": 7})
    assert len(line.encode()) <= 1024
    event = json.loads(line)
    assert event["event"] == "x.y"
    assert event["n"] == 7
    assert event["truncated"] == ["a", "b"]
    assert event["a"].startswith("éé")
    many = cap(None, "info", {"event": "x.y", **{f"k{i}": "v" * 100 for i in range(200)}})
    assert len(many.encode()) <= 1024
    assert json.loads(many)["event"] == "x.y"
    short = cap(None, "info", {"event": "x.y", "a": "b"})
    assert json.loads(short) == {"event": "x.y", "a": "b"}


def test_a_request_id_with_a_trailing_newline_is_replaced() -> None:
    scope: dict[str, Any] = {"headers": [(b"x-request-id", b"abc\n")]}
    assert _request_id_from(scope) != "abc\n"
    assert _request_id_from({"headers": [(b"x-request-id", b"abc")]}) == "abc"


# --- Trace context in and out ---------------------------------------------------------------


def child_of(context: Any) -> Any:
    """The context of a span of this process below the caller's (what the gateway sends from)."""
    parent = trace.get_current_span(context).get_span_context()
    span = NonRecordingSpan(
        SpanContext(parent.trace_id, int(secrets.token_hex(8), 16), False, TraceFlags(1))
    )
    return trace.set_span_in_context(span, context)


def test_by_default_only_the_callers_traceparent_is_taken_and_only_ours_sent() -> None:
    from gateway.tracing import GatewayPropagator

    header, trace_id, span_id = traceparent()
    propagator = GatewayPropagator(trust_baggage=False)
    incoming = {"traceparent": header, "tracestate": "vendor=secret", "baggage": "user=alice"}
    context = propagator.extract(incoming)
    assert format(trace.get_current_span(context).get_span_context().trace_id, "032x") == trace_id
    assert baggage.get_all(context) == {}
    outgoing: dict[str, str] = {}
    propagator.inject(outgoing, child_of(context))
    assert list(outgoing) == ["traceparent"]
    assert trace_id in outgoing["traceparent"]
    assert span_id not in outgoing["traceparent"]


def test_trusted_baggage_is_taken_in_process_but_never_sent_on_nor_tracestate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from gateway.tracing import GatewayPropagator

    header, _, _ = traceparent()
    propagator = GatewayPropagator(trust_baggage=True)
    incoming = {"traceparent": header, "tracestate": "v=s", "baggage": "user = alice ,x=%41"}
    taken = propagator.extract(incoming)
    assert baggage.get_all(taken) == {"user": "alice", "x": "A"}
    outgoing: dict[str, str] = {}
    propagator.inject(outgoing, child_of(taken))
    assert set(outgoing) == {"traceparent"}
    caplog.set_level(logging.DEBUG)
    oversized = {"traceparent": header, "baggage": "k=" + "q" * 9000}
    assert baggage.get_all(propagator.extract(oversized)) == {}
    assert all("qqqq" not in record.getMessage() for record in caplog.records)


@pytest.mark.mlflow
def test_a_clients_baggage_and_tracestate_reach_neither_mlflow_nor_the_log(
    tmp_path: Path, mlflow: MlflowClient, experiment: str, mlflow_proxy: RecordingProxy
) -> None:
    database = f"sqlite:///{tmp_path / 'gw.db'}"
    engine = make_engine(database)
    init_db(engine)
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    run_id = make_run(mlflow, experiment, workflow_id=wf)
    with Session(engine) as session:
        legacy = Artifact(name="legacy", artifact_type="signal", workflow_id=wf)
        session.add(legacy)
        session.commit()
        legacy_id = legacy.id
    engine.dispose()
    with OtlpReceiver() as receiver:
        env = {
            "DATABASE_URL": database,
            "MLFLOW_TRACKING_URI": mlflow_proxy.url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with GatewayProcess(tmp_path, env) as gateway:
            gateway.wait_until_ready()
            header, trace_id, caller_span = traceparent()
            mlflow_proxy.reset()
            answer = httpx.post(
                f"{gateway.url}/graphql",
                json={"query": f"{{ artifact(id: {legacy_id}) {{ runId }} }}"},
                headers={
                    "traceparent": header,
                    "tracestate": "vendor=client-secret",
                    "baggage": "user=alice,secret=client-secret",
                    "user-agent": "agent/" + "u" * 10_000,
                },
                timeout=60,
            )
            # Over W3C Baggage's 8 KB, under the header cap: once written whole into a warning.
            big = httpx.get(
                f"{gateway.url}/healthz",
                headers={"traceparent": traceparent()[0], "baggage": "k=" + "b" * 12_000},
            )
            deadline = time.monotonic() + 60
            while not any(s.name == "POST /graphql" for s in receiver.in_trace(trace_id)):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            spans = receiver.in_trace(trace_id)
            gateway.stop()
            raw = "\n".join(gateway.output_lines())
    assert answer.json()["data"]["artifact"] == {"runId": run_id}
    assert big.status_code == 200
    sent = mlflow_proxy.headers
    assert sent
    assert all("baggage" not in h and "tracestate" not in h for h in sent), sent
    # MLflow is told this trace, from the gateway's spans, never the caller's span as sent.
    assert all(trace_id in h["traceparent"] for h in sent)
    assert all(caller_span not in h["traceparent"] for h in sent)
    assert "client-secret" not in str(sent)
    assert "bbbbbbbbbb" not in raw
    assert "client-secret" not in raw
    # Span attributes quote the client (User-Agent), each cut to 1024 characters.
    quoted = [v for span in spans for v in span.attributes.values() if isinstance(v, str)]
    assert any(v.startswith("agent/uuu") for v in quoted)
    assert max(len(v) for v in quoted) <= 1024
