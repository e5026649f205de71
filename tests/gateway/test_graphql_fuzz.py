"""schemathesis generates GraphQL operations from schema.graphql; production mode must answer
every one without a 500, a traceback, or an unexpected (masked) error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from chartkit import random_walk_bars
from gateway.app import create_app
from gateway.settings import Settings
from tests.servers import free_port
from tests.support import with_overrides

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = schemathesis.graphql.from_file((ROOT / "schema.graphql").read_text(encoding="utf-8"))
OPERATIONS = st.one_of([result.ok().as_strategy() for result in SCHEMA.get_all_operations()])
TOKEN = "fuzz-admin-token-0123456789abcdef"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def prod(settings: Settings, engine: Engine, insert: Callable[..., int]) -> Iterator[TestClient]:
    insert(
        name="chart",
        symbol="AAPL",
        workflow_id="wf-1",
        chart_data={"minio_url": "s3://charts/a.png"},
        meta={"market_data_snapshot": random_walk_bars(30)},
    )
    insert(name="llm", artifact_type="llm", run_id="r", experiment_id="1", meta="odd")
    insert(name="signal", artifact_type="signal", meta={"mlflow_run_id": "abc"})
    app = create_app(
        with_overrides(
            settings,
            env="production",
            admin_token=SecretStr(TOKEN),
            # MLflow is absent: lineage and repair degrade, which is part of what is fuzzed.
            mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}",
            mlflow_timeout_s=0.5,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=OPERATIONS)
def test_generated_operations_never_fail_unexpectedly(prod: TestClient, case: object) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://gateway")  # type: ignore[attr-defined]
    response = prod.post(
        "/graphql", json=kwargs["json"], headers={"authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code in (200, 400), response.text
    assert "Traceback" not in response.text
    if response.status_code == 200:
        messages = [e["message"] for e in response.json().get("errors") or []]
        assert "Unexpected error." not in messages, kwargs["json"]
        assert all(isinstance(m, str) and m for m in messages)
