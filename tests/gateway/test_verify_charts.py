"""`gateway verify-charts` on a data set with matching, tampered, missing and odd charts.

Charts are published with `dags_utils.publish_chart` to moto's S3 server (the real minio client),
then tampered with the way production goes wrong; the CLI runs in-process with its environment.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

import chartkit
from chartkit import ChartSpec, random_walk_bars, render_chart
from dags_utils import publish_chart
from gateway.cli import main
from gateway.models import Artifact
from gateway.verify import pixel_difference
from tests.servers import s3_client

SPEC = ChartSpec(width=480, height=320)


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, s3_server: str, bucket: str
) -> None:
    for name, value in {
        "DATABASE_URL": database_url,
        "MINIO_ENDPOINT": s3_server,
        "MINIO_ACCESS_KEY": "testing",
        "MINIO_SECRET_KEY": "testing",
        "MINIO_ALLOWED_BUCKETS": bucket,
        "GATEWAY_LOG_LEVEL": "warning",
    }.items():
        monkeypatch.setenv(name, value)


def publish(engine: Engine, endpoint: str, bucket: str, name: str, seed: int, wf: str) -> int:
    return publish_chart(
        engine=engine,
        minio_client=s3_client(endpoint),
        bucket=bucket,
        snapshot=random_walk_bars(90, seed=seed),
        symbol="AAPL",
        workflow_id=wf,
        name=name,
        spec=SPEC,
        run_id="f" * 32,
        experiment_id="1",
    )


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()  # only what the command prints
    code = main(["verify-charts", *args])
    return code, capsys.readouterr().out


@pytest.fixture
def cases(
    cli_env: None, engine: Engine, s3_server: str, bucket: str, insert: Callable[..., int]
) -> dict[str, int]:
    """One chart per outcome (and an LLM row verify-charts must skip); their ids by case."""
    ids = {
        "matching": publish(engine, s3_server, bucket, "good", 1, "wf-good"),
        "tampered": publish(engine, s3_server, bucket, "tampered", 2, "wf-bad"),
        "missing": publish(engine, s3_server, bucket, "missing", 3, "wf-bad"),
        "no_snapshot": insert(
            name="no snapshot", symbol="AAPL", chart_data={"minio_url": f"s3://{bucket}/x.png"}
        ),
        "refused": insert(
            name="foreign host",
            meta={"market_data_snapshot": random_walk_bars(30, seed=4)},
            chart_data={"minio_url": "http://169.254.169.254/latest/meta-data.png"},
        ),
    }
    insert(name="words", artifact_type="llm", meta={"text": "not a chart"})
    client = s3_client(s3_server)
    # Tampered: the object was replaced by another (valid) chart of other bars.
    other = render_chart(random_walk_bars(90, seed=99), ChartSpec(width=480, height=320))
    tampered_key = "AAPL/wf-bad/tampered.png"
    client.put_object(bucket, tampered_key, io.BytesIO(other), len(other), "image/png")
    client.remove_object(bucket, "AAPL/wf-bad/missing.png")
    return ids


def test_verify_charts_reports_each_case_and_fails_on_differences(
    cases: dict[str, int],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    log_events: list[dict[str, Any]],
) -> None:
    metrics_file = tmp_path / "verify.prom"
    code, out = run_cli(capsys, "--json", "--metrics-file", str(metrics_file))
    assert code == 1
    report = json.loads(out)
    outcomes = {a["artifact_id"]: a["outcome"] for a in report["artifacts"]}
    assert outcomes == {
        cases["matching"]: "match",
        cases["tampered"]: "differs",
        cases["missing"]: "object_missing",
        cases["no_snapshot"]: "no_snapshot",
        cases["refused"]: "url_refused",
    }
    assert report["ok"] is False
    assert report["summary"]["match"] == 1
    assert report["summary"]["differs"] == 1
    by_id = {a["artifact_id"]: a for a in report["artifacts"]}
    ratio = by_id[cases["tampered"]]["pixel_ratio"]
    assert 0.01 < ratio < 1.0
    assert by_id[cases["tampered"]]["detail"] == f"{ratio:.2%} of pixels differ"
    assert by_id[cases["matching"]]["pixel_ratio"] == 0.0
    refused = by_id[cases["refused"]]["detail"]
    assert "MINIO_ALLOWED_BUCKETS" in refused or "host" in refused
    verified = {
        e["artifact_id"]: e["outcome"] for e in log_events if e["event"] == "chart.verified"
    }
    assert verified == outcomes
    prom = metrics_file.read_text()
    assert 'gateway_chart_verifications_total{outcome="differs"} 1.0' in prom
    assert 'gateway_chart_verifications_total{outcome="match"} 1.0' in prom


# log_events: the process-wide structlog configuration may print to stdout in tests; capturing
# the events keeps the command's own output alone on stdout, as in a real process (logs -> stderr).
@pytest.mark.usefixtures("log_events")
def test_verify_charts_prints_a_summary_and_the_charts_that_do_not_match(
    cases: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(capsys)
    assert code == 1
    assert (
        "5 charts checked: 1 match, 1 differs, 1 object_missing, 1 no_snapshot, 1 url_refused"
        in out
    )
    assert "not matching" in out
    assert "object_missing" in out
    assert "tampered" in out


@pytest.mark.usefixtures("log_events")
def test_verify_charts_filters_by_workflow_and_limit(
    cases: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    # Only the good workflow: everything matches, exit 0.
    code, out = run_cli(capsys, "--json", "--workflow-id", "wf-good")
    assert code == 0
    assert [a["artifact_id"] for a in json.loads(out)["artifacts"]] == [cases["matching"]]
    code, out = run_cli(capsys, "--json", "--limit", "2")
    assert [a["artifact_id"] for a in json.loads(out)["artifacts"]] == [
        cases["matching"],
        cases["tampered"],
    ]


@pytest.mark.usefixtures("cli_env")
def test_a_stored_object_that_is_not_a_png_differs(
    engine: Engine,
    s3_server: str,
    bucket: str,
    capsys: pytest.CaptureFixture[str],
    log_events: list[dict[str, Any]],
) -> None:
    artifact_id = publish(engine, s3_server, bucket, "chart", 5, "wf-html")
    page = b"<html>not a chart</html>"
    s3_client(s3_server).put_object(
        bucket, "AAPL/wf-html/chart.png", io.BytesIO(page), len(page), "text/html"
    )
    code, out = run_cli(capsys, "--json")
    assert code == 1
    (result,) = json.loads(out)["artifacts"]
    assert result["artifact_id"] == artifact_id
    assert result["outcome"] == "differs"
    assert "text/html" in result["detail"]


@pytest.mark.usefixtures("cli_env", "log_events")
def test_a_chart_an_older_chartkit_drew_is_reported_as_renderer_changed_not_differs(
    engine: Engine, s3_server: str, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old_id = publish(engine, s3_server, bucket, "old", 6, "wf-old")
    new_id = publish(engine, s3_server, bucket, "new", 7, "wf-new")
    # Both objects are replaced by other pixels of their own bars (what another renderer
    # version draws); only the first row says an older chartkit published it.
    client = s3_client(s3_server)
    for seed, key in ((6, "AAPL/wf-old/old.png"), (7, "AAPL/wf-new/new.png")):
        other = render_chart(
            random_walk_bars(90, seed=seed), ChartSpec(width=480, height=320, theme="dark")
        )
        client.put_object(bucket, key, io.BytesIO(other), len(other), "image/png")
    with Session(engine) as session:
        row = session.get(Artifact, old_id)
        assert row is not None
        assert row.meta is not None
        assert row.meta["chartkit_version"] == chartkit.__version__
        row.meta = {**row.meta, "chartkit_version": "1.0.0"}
        session.add(row)
        session.commit()
    code, out = run_cli(capsys, "--json")
    by_id = {a["artifact_id"]: a for a in json.loads(out)["artifacts"]}
    assert by_id[old_id]["outcome"] == "renderer_changed"
    assert by_id[old_id]["detail"].startswith(
        f"drawn by chartkit 1.0.0, regenerated by {chartkit.__version__}: "
    )
    assert 0.01 < by_id[old_id]["pixel_ratio"] <= 1.0
    assert by_id[new_id]["outcome"] == "differs"
    assert code == 1  # the current version's chart still fails the run
    code, out = run_cli(capsys, "--json", "--workflow-id", "wf-old")
    assert code == 0  # new pixels from a new renderer are expected, not a failure
    assert json.loads(out)["summary"]["renderer_changed"] == 1


def test_without_minio_the_command_refuses_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("MINIO_ENDPOINT", raising=False)
    assert main(["verify-charts"]) == 2
    assert "MINIO_ENDPOINT" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("same", 0.0),
        ("other size", 1.0),
        ("garbage", 1.0),
    ],
)
def test_pixel_difference(stored: str, expected: float) -> None:
    bars = random_walk_bars(40, seed=1)
    base = render_chart(bars, ChartSpec(width=320, height=240))
    candidates = {
        "same": base,
        "other size": render_chart(bars, ChartSpec(width=330, height=240)),
        "garbage": b"\x89PNG\r\n\x1a\nnot really",
    }
    assert pixel_difference(candidates[stored], base) == expected


def test_pixel_difference_counts_changed_pixels() -> None:
    bars = random_walk_bars(40, seed=1)
    light = render_chart(bars, ChartSpec(width=320, height=240, theme="light"))
    dark = render_chart(bars, ChartSpec(width=320, height=240, theme="dark"))
    ratio = pixel_difference(light, dark)
    assert 0.5 < ratio <= 1.0  # the background changes almost everywhere
