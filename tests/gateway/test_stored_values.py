"""Values other writers store that this gateway never would: no stored value breaks a response.

Each row is written as raw JSON text, as a foreign writer would; every answer must be strict
JSON (a browser's JSON.parse accepts it), every page lists every row, and only the field
holding an unreadable value says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from chartkit import ChartSpec, random_walk_bars, render_chart
from gateway.strictjson import MAX_DEPTH
from tests.jsonstrict import strict_parse
from tests.support import write_raw

BARS = random_walk_bars(60, seed=21)
DEEP = "[" * 3000 + "]" * 3000
VERY_DEEP = "[" * 100_000 + "]" * 100_000
TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"

# name -> (raw metadata JSON, what REST answers for metadata, can PostgreSQL's json hold it)
STORED: dict[str, tuple[str, Any, bool]] = {
    "nan": (
        '{"note": "gap", "close": NaN, "hi": Infinity}',
        {"note": "gap", "close": None, "hi": None},
        False,
    ),
    "surrogate": ('{"note": "a\\ud800b", "\\udfff": 1}', {"note": "a\ufffdb", "\ufffd": 1}, True),
    "deep": (f'{{"market_data_snapshot": {DEEP}}}', None, True),
    "very_deep": (VERY_DEEP, None, False),
    "nul": (  # PostgreSQL's json refuses \u0000 on input
        '{"note": "a\\u0000b", "workflow_id": "wf-nul", "market_data_snapshot": []}',
        {"note": "a\x00b", "workflow_id": "wf-nul", "market_data_snapshot": []},
        False,
    ),
    "array": ('[{"market_data_snapshot": 1}]', [{"market_data_snapshot": 1}], True),
}


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(max_snapshot_bars=1000)


@pytest.fixture
def stored_rows(engine: Engine, insert: Callable[..., int]) -> dict[str, int]:
    """One row per odd stored value the database can hold, plus a plain one."""
    ids = {"plain": insert(name="plain", meta={"market_data_snapshot": BARS})}
    for name, (raw, _, postgres_holds) in STORED.items():
        if engine.dialect.name == "sqlite" or postgres_holds:
            ids[name] = insert(name=name)
            write_raw(engine, ids[name], "metadata", raw)
    return ids


def test_rest_answers_strict_json_for_every_stored_value(
    client: TestClient, stored_rows: dict[str, int]
) -> None:
    for name, artifact_id in stored_rows.items():
        response = client.get(f"/api/artifacts/{artifact_id}")
        assert response.status_code == 200, name
        body = strict_parse(response.content)
        if name == "plain":
            assert "field_errors" not in body
            continue
        expected = STORED[name][1]
        assert body["metadata"] == expected, name
        if expected is None:
            assert body["field_errors"] == {"metadata": TOO_DEEP}
        assert body["name"] == name


def test_graphql_page_lists_every_row_and_fails_only_the_unreadable_field(
    client: TestClient, stored_rows: dict[str, int]
) -> None:
    response = client.post(
        "/graphql",
        json={
            "query": "{ artifacts(first: 20) { edges { node { id name metadata chartData "
            "workflowId chart { snapshotBars } lineage { status } } } } }"
        },
    )
    body = strict_parse(response.content)
    nodes = [edge["node"] for edge in body["data"]["artifacts"]["edges"]]
    assert [n["id"] for n in nodes] == sorted(stored_rows.values())
    by_name = {n["name"]: n for n in nodes}
    assert by_name["plain"]["chart"] == {"snapshotBars": 60}
    if "nul" in by_name:
        assert by_name["nul"]["workflowId"] == "wf-nul"
        assert by_name["nul"]["chart"] == {"snapshotBars": None}  # an empty snapshot
    unreadable = {name for name in stored_rows if name != "plain" and STORED[name][1] is None}
    failed = {
        (error["path"][2], error["path"][-1], error["message"]) for error in body.get("errors", [])
    }
    index = {n["name"]: i for i, n in enumerate(nodes)}
    assert failed == {
        (index[name], "metadata", f"stored metadata cannot be read: {TOO_DEEP}")
        for name in unreadable
    }
    for name in stored_rows:
        if name != "plain":
            assert by_name[name]["metadata"] == STORED[name][1]
            assert by_name[name]["lineage"] == {"status": "UNRESOLVED"}


def test_ui_pages_render_every_stored_value(
    client: TestClient, stored_rows: dict[str, int]
) -> None:
    listing = client.get("/ui/artifacts")
    assert listing.status_code == 200
    for name, artifact_id in stored_rows.items():
        assert f'href="/ui/artifacts/{artifact_id}"' in listing.text
        page = client.get(f"/ui/artifacts/{artifact_id}")
        assert page.status_code == 200, name
        assert page.headers["content-type"].startswith("text/html")
        if name != "plain" and STORED[name][1] is None:
            assert f"The stored metadata cannot be read: {TOO_DEEP}" in page.text


def test_image_route_says_why_when_the_metadata_is_unreadable(
    client: TestClient, stored_rows: dict[str, int]
) -> None:
    response = client.get(f"/api/artifacts/{stored_rows['deep']}/image")
    assert response.status_code == 404
    assert "no snapshot" in strict_parse(response.content)["detail"]


def test_unreadable_chart_data_fails_only_its_own_field(
    client: TestClient, engine: Engine, insert: Callable[..., int]
) -> None:
    artifact_id = insert(name="odd chart", meta={"market_data_snapshot": BARS})
    write_raw(engine, artifact_id, "chart_data", f'{{"minio_url": {DEEP}}}')
    body = strict_parse(client.get(f"/api/artifacts/{artifact_id}").content)
    assert body["chart_data"] is None
    assert body["field_errors"] == {"chart_data": TOO_DEEP}
    assert body["metadata"]["market_data_snapshot"] == BARS
    image = client.get(f"/api/artifacts/{artifact_id}/image")
    assert image.status_code == 200
    assert image.headers["x-chart-source"] == "regenerated"


BAD_SPECS = [
    {"width": "abc"},
    {"height": None},
    {"bollinger": [20]},
    {"macd": [0, 0, 0]},
    {"macd": [12, 26, 9, 4]},
    {"sma": [True]},
    {"title": "x" * 200_000},
    "not an object",
]


@pytest.mark.parametrize("recorded", BAD_SPECS, ids=lambda s: str(s)[:24])
def test_a_recorded_spec_that_cannot_be_used_falls_back_to_the_default_and_says_so(
    client: TestClient,
    insert: Callable[..., int],
    log_events: list[dict[str, Any]],
    recorded: Any,
) -> None:
    artifact_id = insert(symbol="AAPL", meta={"market_data_snapshot": BARS, "chart_spec": recorded})
    image = client.get(f"/api/artifacts/{artifact_id}/image")
    assert image.status_code == 200
    assert image.headers["x-chart-spec"] == "refused"
    assert image.content == render_chart(BARS, ChartSpec(symbol="AAPL"))
    refused = [e for e in log_events if e["event"] == "chart.spec_refused"]
    assert refused
    assert refused[0]["artifact_id"] == artifact_id
    assert refused[0]["reason"]
    for page in (f"/ui/artifacts/{artifact_id}", f"/ui/artifacts/{artifact_id}/compare"):
        response = client.get(page)
        assert response.status_code == 200, page
        assert response.headers["content-type"].startswith("text/html")


def test_a_usable_recorded_spec_is_drawn_and_said_so(
    client: TestClient, insert: Callable[..., int]
) -> None:
    spec = ChartSpec(width=640, height=480, symbol="MSFT")
    artifact_id = insert(meta={"market_data_snapshot": BARS, "chart_spec": spec.to_dict()})
    image = client.get(f"/api/artifacts/{artifact_id}/image")
    assert image.headers["x-chart-spec"] == "recorded"
    assert image.content == render_chart(BARS, spec)
    plain = insert(symbol="X", meta={"market_data_snapshot": BARS})
    assert client.get(f"/api/artifacts/{plain}/image").headers["x-chart-spec"] == "default"


def test_a_symbol_column_holding_an_essay_is_cut_in_the_title(
    client: TestClient, insert: Callable[..., int]
) -> None:
    artifact_id = insert(symbol="S" * 50_000, meta={"market_data_snapshot": BARS})
    image = client.get(f"/api/artifacts/{artifact_id}/image")
    assert image.status_code == 200
    assert image.content == render_chart(BARS, ChartSpec(symbol="S" * 32))


@pytest.mark.parametrize(
    "snapshot",
    [
        json.dumps(random_walk_bars(1500, seed=3)),
        {"bars": json.dumps(random_walk_bars(1500, seed=3))},
        json.dumps({"bars": random_walk_bars(1500, seed=3)}),
    ],
    ids=["json-text", "bars-as-json-text", "wrapped-json-text"],
)
def test_the_snapshot_cap_holds_for_snapshots_stored_as_json_text(
    client: TestClient, insert: Callable[..., int], snapshot: Any
) -> None:
    artifact_id = insert(meta={"market_data_snapshot": snapshot})
    image = client.get(f"/api/artifacts/{artifact_id}/image")
    assert image.status_code == 422
    assert "snapshot has 1500 bars; at most 1000 are drawn" in image.json()["detail"]
    chart = client.post(
        "/graphql",
        json={
            "query": f"{{ artifact(id: {artifact_id}) {{ chart {{ snapshotBars "
            "snapshotRange { first } } } }"
        },
    ).json()
    assert chart == {"data": {"artifact": {"chart": {"snapshotBars": 1500, "snapshotRange": None}}}}
    page = client.get(f"/ui/artifacts/{artifact_id}")
    assert page.status_code == 200
    assert "1500 bars, more than 1000" in page.text
