"""schema.graphql is generated from the code: any drift fails here."""

from __future__ import annotations

from pathlib import Path

from gateway.cli import main
from gateway.gql.schema import export_sdl

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_schema_matches_the_code() -> None:
    checked_in = (ROOT / "schema.graphql").read_text(encoding="utf-8")
    assert checked_in == export_sdl(), "schema.graphql is stale: run `make schema`"


def test_export_schema_cli_writes_the_sdl(tmp_path: Path) -> None:
    out = tmp_path / "schema.graphql"
    assert main(["export-schema", "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == export_sdl()
    assert "type Query" in out.read_text(encoding="utf-8")
