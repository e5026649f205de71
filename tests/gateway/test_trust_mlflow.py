"""What the gateway trusts of MLflow and of the ids it sends there, against a real server.

Only outages (no connection, timeouts, 5xx) feed the circuit breaker; a request MLflow refuses
(4xx) fails that lookup alone. Ids are checked as whole strings before any call, workflow ids of
any text are searched exactly, and MLflow's own error text is logged, never shown.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.breaker import CircuitBreaker
from gateway.mlflow_backend import (
    LocalStoreBackend,
    MlflowRequestRefusedError,
    MlflowUnavailableError,
    RestBackend,
    SearchBackend,
)
from gateway.settings import Settings
from tests.faults import RecordingProxy
from tests.servers import MlflowServer, free_port
from tests.support import lineage_settings, make_run, write_raw

LINEAGE = "lineage { status source reason runId experimentId }"
ARTIFACT = f"query($id: Int!) {{ artifact(id: $id) {{ id runId {LINEAGE} }} }}"
RUN = "query($id: String!) { run(id: $id) { id experimentId } }"
# MLflow's refusal of a malformed filter names the clause it could not parse.
MLFLOW_PARSE_ERROR = "Invalid clause(s) in filter string"
SECRET = "secret-internal-detail at /var/lib/mlflow/db.sqlite"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def gql(client: TestClient, query: str, **variables: Any) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def lineage_of(client: TestClient, artifact_id: int) -> dict[str, Any]:
    body = gql(client, ARTIFACT, id=artifact_id)
    assert "errors" not in body, body
    lineage: dict[str, Any] = body["data"]["artifact"]["lineage"]
    return lineage


def breaker_of(client: TestClient) -> CircuitBreaker:
    breaker: CircuitBreaker = client.app_state["services"].resolver.breaker
    return breaker


def sent_to_mlflow(proxy: RecordingProxy) -> str:
    """Every body the gateway sent to MLflow's search endpoints, decoded, in one text."""
    return "\n".join(
        body.decode("utf-8", "replace")
        for _method, path, body in proxy.requests
        if path.startswith("/api/2.0/mlflow/")
    )


def _backends(mlflow_server: MlflowServer, settings: Settings) -> list[tuple[str, str]]:
    """Both backends: REST to the real server, and MlflowClient on the test's local store."""
    return [("rest", mlflow_server.url), ("local", settings.mlflow_tracking_uri)]


@pytest.fixture
def trust_client(
    settings: Settings, engine: Engine, mlflow_proxy: RecordingProxy
) -> Iterator[TestClient]:
    # The default threshold (5): the hostile requests below are ten of each kind.
    app = create_app(lineage_settings(settings, mlflow_proxy.url, mlflow_breaker_cooldown_s=30))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


# -- the breaker ---------------------------------------------------------------------------


def test_a_refused_request_neither_opens_nor_closes_the_breaker() -> None:
    async def refused() -> None:
        raise MlflowRequestRefusedError("HTTP 400 from runs/search")

    async def down() -> None:
        raise MlflowUnavailableError("HTTP 503 from runs/search")

    async def attempt(breaker: CircuitBreaker, fn: Callable[[], Any]) -> str:
        try:
            await breaker.call(fn)
        except MlflowRequestRefusedError:
            return "refused"
        except MlflowUnavailableError:
            return "failed"
        except Exception as exc:
            return type(exc).__name__
        return "ok"

    async def scenario() -> None:
        clock = FakeClock()
        breaker = CircuitBreaker(threshold=2, cooldown_s=10, clock=clock)
        assert [await attempt(breaker, refused) for _ in range(10)] == ["refused"] * 10
        assert not breaker.is_open
        # A refusal between two failures does not reset their count either.
        assert await attempt(breaker, down) == "failed"
        assert await attempt(breaker, refused) == "refused"
        assert await attempt(breaker, down) == "failed"
        assert breaker.is_open
        clock.now += 10
        assert await attempt(breaker, refused) == "refused"  # the trial proves nothing
        assert breaker.is_open is False  # the next call is a trial again
        assert await attempt(breaker, down) == "failed"
        assert breaker.is_open

    asyncio.run(scenario())


def test_mlflow_refusing_a_search_is_a_refusal_not_an_outage(
    mlflow_server: MlflowServer, settings: Settings, log_events: list[dict[str, Any]]
) -> None:
    async def scenario(backend: SearchBackend, experiment: str) -> None:
        breaker = CircuitBreaker(threshold=1, cooldown_s=30)
        try:
            for _ in range(3):
                with pytest.raises(MlflowRequestRefusedError) as refused:
                    await breaker.call(
                        lambda: backend.search([experiment], "tags.x = 'open", max_results=1)
                    )
                assert MLFLOW_PARSE_ERROR not in str(refused.value)
            assert not breaker.is_open
            assert await breaker.call(lambda: backend.search([experiment], "", max_results=1)) == []
        finally:
            await backend.aclose()

    for name, uri in _backends(mlflow_server, settings):
        experiment = str(MlflowClient(tracking_uri=uri).create_experiment(uuid.uuid4().hex))
        backend: SearchBackend = (
            RestBackend(uri, timeout_s=5.0) if name == "rest" else LocalStoreBackend(uri)
        )
        log_events.clear()
        asyncio.run(scenario(backend, experiment))
        logged = [e for e in log_events if e["event"] == "mlflow.refused"]
        assert len(logged) == 3, name
        texts = [e["body"] if name == "rest" else e["error"] for e in logged]
        assert all(MLFLOW_PARSE_ERROR in text for text in texts), name
        if name == "rest":
            assert {e["status"] for e in logged} == {400}


def test_every_run_id_the_check_admits_makes_a_search_mlflow_accepts(
    mlflow_server: MlflowServer, experiment: str
) -> None:
    admitted = ["-", "--", "_", "---x", "-" * 64, "_" * 64, "0", "Z" * 64]

    async def scenario() -> list[str]:
        backend = RestBackend(mlflow_server.url, timeout_s=5.0)
        try:
            return [run.run_id for run in await backend.runs_by_id(admitted, [experiment])]
        finally:
            await backend.aclose()

    assert asyncio.run(scenario()) == []


# -- hostile ids from clients --------------------------------------------------------------


def test_run_ids_with_a_trailing_newline_never_reach_mlflow_nor_open_the_breaker(
    trust_client: TestClient,
    mlflow_proxy: RecordingProxy,
    mlflow: MlflowClient,
    experiment: str,
    insert: Callable[..., int],
) -> None:
    legit = make_run(mlflow, experiment)
    hostile = uuid.uuid4().hex + "\n"
    for _ in range(10):
        body = gql(trust_client, RUN, id=hostile)
        assert body["data"] == {"run": None}
        assert [e["message"] for e in body["errors"]] == [
            "run id must be 1-64 letters, digits, '-' or '_'"
        ]
    assert hostile.strip() not in sent_to_mlflow(mlflow_proxy)
    assert not breaker_of(trust_client).is_open
    assert_legitimate_reads_resolve(trust_client, mlflow, experiment, insert, legit)


def assert_legitimate_reads_resolve(
    client: TestClient,
    mlflow: MlflowClient,
    experiment: str,
    insert: Callable[..., int],
    legit: str,
) -> None:
    """A legitimate run and a legacy row resolve, the pages answer, the breaker is closed."""
    body = gql(client, RUN, id=legit)
    assert body == {"data": {"run": {"id": legit, "experimentId": experiment}}}
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    tagged = make_run(mlflow, experiment, workflow_id=wf)
    legacy = insert(name="legacy", workflow_id=wf)
    lineage = lineage_of(client, legacy)
    assert (lineage["status"], lineage["runId"]) == ("HYDRATED", tagged), lineage
    assert client.get(f"/ui/runs/{legit}").status_code == 200
    assert client.get("/healthz").status_code == 200
    assert not breaker_of(client).is_open


# -- hostile stored rows -------------------------------------------------------------------


def test_a_stored_run_id_with_a_trailing_newline_is_a_row_error_and_never_a_call(
    trust_client: TestClient,
    mlflow_proxy: RecordingProxy,
    mlflow: MlflowClient,
    experiment: str,
    insert: Callable[..., int],
) -> None:
    legit = make_run(mlflow, experiment)
    hostile = uuid.uuid4().hex
    both = insert(name="both", run_id=hostile + "\n", experiment_id=experiment)
    half = insert(name="half", run_id=hostile + "\n")
    query = f"query($id: Int!) {{ artifact(id: $id) {{ runId run {{ id }} {LINEAGE} }} }}"
    for _ in range(10):
        for artifact_id in (both, half):
            body = gql(trust_client, query, id=artifact_id)
            assert "errors" not in body, body
            node = body["data"]["artifact"]
            assert node["run"] is None
            assert node["lineage"] == {
                "status": "UNRESOLVED",
                "source": "ROW",
                "reason": "the stored run_id is not an MLflow run id",
                "runId": None,
                "experimentId": None,
            }
    assert hostile not in sent_to_mlflow(mlflow_proxy)
    assert not breaker_of(trust_client).is_open
    assert_legitimate_reads_resolve(trust_client, mlflow, experiment, insert, legit)


def test_a_stored_workflow_id_no_text_encoding_holds_is_unresolved_not_an_outage(
    settings: Settings,
    engine: Engine,
    mlflow_server: MlflowServer,
    insert: Callable[..., int],
) -> None:
    # SQLite keeps a lone surrogate escape in JSON; no MLflow tag can hold one.
    for tracking_uri in (mlflow_server.url, settings.mlflow_tracking_uri):
        app = create_app(lineage_settings(settings, tracking_uri, mlflow_breaker_threshold=1))
        artifact_id = insert(name="odd")
        write_raw(engine, artifact_id, "metadata", '{"workflow_id": "wf-\\ud800"}')
        with TestClient(app, raise_server_exceptions=False) as client:
            for _ in range(3):
                lineage = lineage_of(client, artifact_id)
                assert lineage["status"] == "UNRESOLVED", (tracking_uri, lineage)
            assert not breaker_of(client).is_open, tracking_uri


# -- MLflow's answers ----------------------------------------------------------------------


def test_mlflow_error_text_is_logged_with_the_request_id_never_shown(
    settings: Settings,
    engine: Engine,
    mlflow_server: MlflowServer,
    insert: Callable[..., int],
    log_events: list[dict[str, Any]],
) -> None:
    # A tracking URI with a wrong path: the real server answers every call 404 with its page.
    app = create_app(lineage_settings(settings, mlflow_server.url + "/no-such-prefix"))
    artifact_id = insert(name="legacy", workflow_id="wf-refused")
    with TestClient(app, raise_server_exceptions=False) as client:
        # The start-up's experiment listing (no request of its own) may serve the first read.
        lineage_of(client, artifact_id)
        for attempt in range(10):
            response = client.post(
                "/graphql",
                json={"query": ARTIFACT, "variables": {"id": artifact_id}},
                headers={"x-request-id": f"trust-{attempt}"},
            )
            lineage = response.json()["data"]["artifact"]["lineage"]
            assert lineage["status"] == "UNRESOLVED", lineage
            assert lineage["reason"] == "MLflow refused the lookup", lineage
            assert "Not Found" not in response.text
            assert "<" not in response.text
        assert not breaker_of(client).is_open
    refused = [e for e in log_events if e["event"] == "mlflow.refused"]
    assert refused
    assert all(e["status"] == 404 and "Not Found" in e["body"] for e in refused)
    # Each read asks again (a refusal is not kept), and its log lines carry its request id.
    named = {e.get("request_id") for e in refused if str(e.get("request_id")).startswith("trust-")}
    assert named == {f"trust-{i}" for i in range(10)}


class _ServerErrorHandler(BaseHTTPRequestHandler):
    """Answers every request 503 with internals in the body, as a broken proxy or MLflow does."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.dumps({"error_code": "INTERNAL_ERROR", "message": SECRET}).encode()
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        return


@pytest.fixture
def failing_mlflow() -> Iterator[str]:
    """A loopback HTTP server answering 503 with internals in the body; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _ServerErrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_mlflow_server_error_feeds_the_breaker_and_its_text_is_never_shown(
    settings: Settings,
    engine: Engine,
    failing_mlflow: str,
    insert: Callable[..., int],
    log_events: list[dict[str, Any]],
) -> None:
    app = create_app(lineage_settings(settings, failing_mlflow, mlflow_breaker_threshold=2))
    artifact_id = insert(name="legacy", workflow_id="wf-down")
    with TestClient(app, raise_server_exceptions=False) as client:
        first = client.post("/graphql", json={"query": ARTIFACT, "variables": {"id": artifact_id}})
        lineage = first.json()["data"]["artifact"]["lineage"]
        assert lineage["status"] == "UNAVAILABLE"
        assert lineage["reason"] == "MLflow unavailable: HTTP 503 from experiments/search"
        assert "secret" not in first.text
        lineage_of(client, artifact_id)
        assert breaker_of(client).is_open
    logged = [e for e in log_events if e["event"] == "mlflow.server_error"]
    assert logged
    assert all(e["status"] == 503 and SECRET in e["body"] for e in logged)


# -- workflow ids of any text, searched exactly --------------------------------------------

AWKWARD_WORKFLOW_IDS = [
    "both'and\"quotes",
    "back\\slash",
    "ends-with-a-backslash\\",
    "q'uote\\\"escaped",
    "per%cent_and'\"",
    "' OR tags.workflow_id != '",
    "new\nline'\"",
    "ctl\x01char",
]


def _decoy(workflow_id: str) -> str:
    """A different value that a LIKE pattern with `_` for the awkward characters matches."""
    return "".join("Z" if ch in "'\"\\\n\x01%_" else ch for ch in workflow_id)


def test_awkward_workflow_ids_find_their_own_latest_run_in_both_backends(
    settings: Settings, mlflow_server: MlflowServer
) -> None:
    async def runs_of(backend: SearchBackend, wf: str, experiment: str) -> list[str]:
        try:
            return [r.run_id for r in await backend.workflow_runs(wf, [experiment], max_results=5)]
        finally:
            await backend.aclose()

    for name, uri in _backends(mlflow_server, settings):
        client = MlflowClient(tracking_uri=uri)
        experiment = str(client.create_experiment(f"awkward-{uuid.uuid4().hex[:8]}"))
        for awkward in AWKWARD_WORKFLOW_IDS:
            wf = f"{uuid.uuid4().hex[:6]}-{awkward}"  # searches span every experiment
            older = make_run(client, experiment, workflow_id=wf, start_time=1_700_000_000_000)
            newer = make_run(client, experiment, workflow_id=wf, start_time=1_700_000_100_000)
            # Newer than both: a broader search answers it first.
            make_run(client, experiment, workflow_id=_decoy(wf), start_time=1_700_000_200_000)
            backend: SearchBackend = (
                RestBackend(uri, timeout_s=5.0) if name == "rest" else LocalStoreBackend(uri)
            )
            found = asyncio.run(runs_of(backend, wf, experiment))
            assert found == [newer, older], (name, wf)


def test_a_legacy_row_with_an_awkward_workflow_id_is_hydrated(
    trust_client: TestClient,
    mlflow: MlflowClient,
    experiment: str,
    insert: Callable[..., int],
) -> None:
    for awkward in AWKWARD_WORKFLOW_IDS:
        wf = f"{uuid.uuid4().hex[:6]}-{awkward}"  # searches span every experiment
        tagged = make_run(mlflow, experiment, workflow_id=wf, start_time=1_700_000_000_000)
        make_run(mlflow, experiment, workflow_id=_decoy(wf), start_time=1_700_000_100_000)
        lineage = lineage_of(trust_client, insert(name="legacy", workflow_id=wf))
        assert (lineage["status"], lineage["runId"]) == ("HYDRATED", tagged), (wf, lineage)
    assert not breaker_of(trust_client).is_open


# -- acceptance: ten hostile requests of each kind, then legitimate reads ------------------


def test_after_ten_hostile_requests_of_each_kind_legitimate_reads_resolve(
    trust_client: TestClient,
    mlflow: MlflowClient,
    experiment: str,
    insert: Callable[..., int],
    engine: Engine,
) -> None:
    legit = make_run(mlflow, experiment)
    hostile = uuid.uuid4().hex
    stored_both = insert(name="both", run_id=hostile + "\n", experiment_id=experiment)
    stored_half = insert(name="half", run_id=hostile + "\n")
    odd = insert(name="odd")
    write_raw(engine, odd, "metadata", '{"workflow_id": "wf-\\ud800"}')
    quoted = insert(name="quoted", workflow_id="wf-'\"\\-missing")
    started = time.monotonic()
    for _ in range(10):
        gql(trust_client, RUN, id=hostile + "\n")
        gql(trust_client, "query($id: String!) { workflow(id: $id) { id } }", id="w'\"\\\n")
        assert trust_client.get(f"/api/artifacts/{stored_both}%0A").status_code == 400
        for artifact_id in (stored_both, stored_half, odd, quoted):
            assert lineage_of(trust_client, artifact_id)["status"] == "UNRESOLVED"
    # Never a lookup budget per hostile request: 70 requests, well under one budget each.
    timeout_s = trust_client.app_state["services"].settings.mlflow_timeout_s
    assert time.monotonic() - started < 20 * timeout_s
    assert not breaker_of(trust_client).is_open
    assert_legitimate_reads_resolve(trust_client, mlflow, experiment, insert, legit)
