"""The example DAG's tasks, run in order without Airflow, against the real servers.

MLflow is a real `mlflow server`, MinIO is moto's S3 server through the real minio client, the
database is SQLite and PostgreSQL. The artifacts are then read back the way users read them:
GraphQL (lineage STORED, chart fields) and the image route (the MinIO object, byte-equal to a
fresh regeneration).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import mlflow as mlflow_fluent
import pytest
from hypothesis import given
from hypothesis import settings as settings_profile
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.testclient import TestClient

import chartkit
from chartkit import ChartSpec, SnapshotError, load_snapshot, random_walk_bars, render_chart
from dags_utils import chart_object_key, publish_chart
from examples.market_analysis import tasks
from gateway.app import create_app
from gateway.minio_urls import ObjectLocation, parse_minio_url
from gateway.models import Artifact
from gateway.settings import Settings
from tests.servers import s3_client
from tests.support import with_overrides

KEY_SETTINGS = Settings(minio_allowed_buckets=("charts",))
CHART_FIELDS = """
  id type runId experimentId
  lineage { status source }
  chart {
    minioUrl bucket objectKey urlProblem rendererVersion spec
    snapshotBars snapshotRange { first last }
  }
"""


@pytest.fixture(autouse=True)
def _no_active_run(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    yield
    while mlflow_fluent.active_run() is not None:
        mlflow_fluent.end_run()


def gateway_settings(settings: Settings, *, s3: str, bucket: str, tracking_uri: str) -> Settings:
    return with_overrides(
        settings,
        mlflow_tracking_uri=tracking_uri,
        minio_endpoint=s3,
        minio_access_key="testing",
        minio_secret_key=SecretStr("testing"),
        minio_allowed_buckets=(bucket,),
    )


def count_rows(engine: Engine) -> int:
    with Session(engine) as session:
        return len(session.query(Artifact).all())


def run_the_dag(
    conn: tasks.Connections, symbol: str, dag_run_id: str
) -> tuple[Any, str, tuple[int, int, int]]:
    """The DAG, task by task: bars, the MLflow run id, and the chart, LLM and signal ids."""
    workflow_id = tasks.workflow_id_for(symbol, dag_run_id)
    bars = tasks.fetch_bars(symbol, end=datetime(2026, 11, 20, tzinfo=UTC))
    run_id = tasks.open_run(
        symbol=symbol, workflow_id=workflow_id, dag_run_id=dag_run_id, conn=conn
    )
    chart_id = tasks.publish(bars=bars, symbol=symbol, workflow_id=workflow_id, conn=conn)
    llm_id = tasks.analyse(bars=bars, symbol=symbol, workflow_id=workflow_id, conn=conn)
    signal_id = tasks.signal(bars=bars, symbol=symbol, workflow_id=workflow_id, conn=conn)
    assert tasks.log_run(bars=bars, symbol=symbol, workflow_id=workflow_id, conn=conn) == run_id
    assert tasks.backfill(workflow_id=workflow_id, run_id=run_id, conn=conn) == 0  # all stored
    return bars, run_id, (chart_id, llm_id, signal_id)


def expected_chart(bars: Any, bucket: str, key: str, symbol: str) -> dict[str, Any]:
    """What `Artifact.chart` must say of the published chart."""
    frame = load_snapshot(bars)
    return {
        "minioUrl": f"s3://{bucket}/{key}",
        "bucket": bucket,
        "objectKey": key,
        "urlProblem": None,
        "rendererVersion": chartkit.__version__,
        "spec": {
            **tasks.CHART_SPEC.to_dict(),
            "symbol": symbol,
            "sma": [20, 50],
            "bollinger": [20, 2.0],
            "macd": [12, 26, 9],
        },
        "snapshotBars": len(frame),
        "snapshotRange": {
            "first": frame.index[0].isoformat(),
            "last": frame.index[-1].isoformat(),
        },
    }


@pytest.mark.mlflow
def test_example_dag_tasks_publish_charts_the_gateway_serves_unchanged(
    engine: Engine,
    settings: Settings,
    database_url: str,
    mlflow_server: Any,
    s3_server: str,
    bucket: str,
) -> None:
    conn = tasks.Connections(
        database_url=database_url,
        tracking_uri=mlflow_server.url,
        minio_endpoint=s3_server,
        minio_access_key="testing",
        minio_secret_key="testing",
        bucket=bucket,
    )
    symbol = "AAPL"
    dag_run_id = f"scheduled__{uuid.uuid4().hex[:8]}"
    workflow_id = tasks.workflow_id_for(symbol, dag_run_id)
    bars, run_id, (chart_id, llm_id, signal_id) = run_the_dag(conn, symbol, dag_run_id)

    key = chart_object_key(symbol=symbol, workflow_id=workflow_id, name=f"{symbol} daily")
    assert key == f"AAPL/{workflow_id}/AAPL-daily.png"
    stat = s3_client(s3_server).stat_object(bucket, key)
    assert stat.content_type == "image/png"

    app = create_app(
        gateway_settings(settings, s3=s3_server, bucket=bucket, tracking_uri=mlflow_server.url)
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        body = client.post(
            "/graphql",
            json={
                "query": f"query($w: String) {{ artifacts(workflowId: $w, first: 10) "
                f"{{ edges {{ node {{ {CHART_FIELDS} }} }} }} }}",
                "variables": {"w": workflow_id},
            },
        ).json()
        assert "errors" not in body, body
        nodes = {n["id"]: n for n in (e["node"] for e in body["data"]["artifacts"]["edges"])}
        assert set(nodes) == {chart_id, llm_id, signal_id}
        experiment = str(mlflow_fluent.get_run(run_id).info.experiment_id)
        for node in nodes.values():
            assert node["runId"] == run_id
            assert node["experimentId"] == experiment
            assert node["lineage"] == {"status": "STORED", "source": "ROW"}
        assert nodes[chart_id]["chart"] == expected_chart(bars, bucket, key, symbol)
        assert nodes[llm_id]["chart"] is None
        assert nodes[llm_id]["type"] == "LLM"

        served = client.get(f"/api/artifacts/{chart_id}/image")
        assert served.status_code == 200
        assert served.headers["x-chart-source"] == "minio"
        fresh = client.get(f"/api/artifacts/{chart_id}/image?source=regenerated")
        assert fresh.headers["x-chart-source"] == "regenerated"
        assert served.content == fresh.content
        assert served.content == s3_client(s3_server).get_object(bucket, key).read()


def publish(engine: Engine, s3_server: str, bucket: str, **fields: Any) -> int:
    """publish_chart with the fields these tests do not vary filled in."""
    args: dict[str, Any] = {
        "engine": engine,
        "minio_client": s3_client(s3_server),
        "bucket": bucket,
        "snapshot": random_walk_bars(80, seed=4),
        "symbol": "MSFT",
        "workflow_id": "wf",
        "name": "chart",
        "run_id": "r" * 32,
        "experiment_id": "1",
    }
    return publish_chart(**{**args, **fields})


def test_a_failed_upload_stores_no_row(engine: Engine, s3_server: str, bucket: str) -> None:
    before = count_rows(engine)
    with pytest.raises(Exception, match="NoSuchBucket"):
        publish(engine, s3_server, "no-such-bucket", workflow_id="wf-upload-fails")
    assert count_rows(engine) == before


def test_a_snapshot_that_cannot_be_drawn_uploads_and_stores_nothing(
    engine: Engine, s3_server: str, bucket: str
) -> None:
    before = count_rows(engine)
    with pytest.raises(SnapshotError):
        publish(engine, s3_server, bucket, snapshot=[{"close": "x"}], workflow_id="wf-bad-bars")
    assert count_rows(engine) == before
    assert list(s3_client(s3_server).list_objects(bucket, recursive=True)) == []


def test_a_snapshot_holding_nan_is_refused_naming_the_key_path_before_upload(
    engine: Engine, s3_server: str, bucket: str
) -> None:
    # A pandas frame with a gap: refused before anything is rendered, uploaded or stored.
    bars = random_walk_bars(80, seed=4)
    before = count_rows(engine)
    with pytest.raises(ValueError, match=r"market_data_snapshot\[1\]\.volume is nan"):
        publish(
            engine,
            s3_server,
            bucket,
            snapshot=[bars[0], {**bars[1], "volume": float("nan")}, *bars[2:]],
            workflow_id="wf-nan",
        )
    assert count_rows(engine) == before
    assert list(s3_client(s3_server).list_objects(bucket, recursive=True)) == []


def test_a_retried_publish_overwrites_the_same_key_with_the_same_bytes(
    engine: Engine, s3_server: str, bucket: str
) -> None:
    bars = random_walk_bars(80, seed=4)
    spec = ChartSpec(width=640, height=400, theme="dark")
    ids = [
        publish(engine, s3_server, bucket, symbol="msft", workflow_id="wf-retry", spec=spec)
        for _ in range(2)
    ]
    objects = list(s3_client(s3_server).list_objects(bucket, recursive=True))
    assert [o.object_name for o in objects] == ["MSFT/wf-retry/chart.png"]
    stored = s3_client(s3_server).get_object(bucket, "MSFT/wf-retry/chart.png").read()
    assert stored == render_chart(bars, ChartSpec.from_dict({**spec.to_dict(), "symbol": "msft"}))
    with Session(engine) as session:
        row = session.get(Artifact, ids[1])
        assert row is not None
        assert row.chart_data is not None
        assert row.chart_data["minio_url"] == f"s3://{bucket}/MSFT/wf-retry/chart.png"
        assert row.meta is not None
        assert row.meta["chart_spec"]["theme"] == "dark"
        assert row.meta["chartkit_version"] == chartkit.__version__
        assert row.run_id == "r" * 32


@pytest.mark.parametrize(
    ("symbol", "workflow_id", "name", "expected"),
    [
        ("aapl", "wf-1", "chart", "AAPL/wf-1/chart.png"),
        (
            "BRK.B",
            "market analysis 2026/11/20",
            "Daily chart.png",
            "BRK.B/market-analysis-2026-11-20/Daily-chart.png",
        ),
        ("EUR/USD", "../../etc", "..", None),
        ("X", "wf", "%2e%2e", "X/wf/2e-2e.png"),
    ],
)
def test_object_keys_are_always_safe(
    symbol: str, workflow_id: str, name: str, expected: str | None
) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="no letters or digits"):
            chart_object_key(symbol=symbol, workflow_id=workflow_id, name=name)
        return
    key = chart_object_key(symbol=symbol, workflow_id=workflow_id, name=name)
    assert key == expected
    assert parse_minio_url(f"s3://charts/{key}", KEY_SETTINGS) == ObjectLocation("charts", key)


@settings_profile(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=120), st.text(max_size=120))
def test_any_names_give_a_key_the_gateway_accepts_or_a_clear_error(
    symbol: str, workflow_id: str, name: str
) -> None:
    cleaned = [
        re.sub(r"[^A-Za-z0-9._-]+", "-", v.strip()).strip(".-")
        for v in (symbol, workflow_id, name.removesuffix(".png"))
    ]
    if not all(cleaned):
        with pytest.raises(ValueError, match="no letters or digits"):
            chart_object_key(symbol=symbol, workflow_id=workflow_id, name=name)
        return
    key = chart_object_key(symbol=symbol, workflow_id=workflow_id, name=name)
    location = parse_minio_url(f"s3://charts/{key}", KEY_SETTINGS)
    assert location == ObjectLocation("charts", key)
    assert key.count("/") == 2
    assert key.endswith(".png")
