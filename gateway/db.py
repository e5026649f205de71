"""Database engine construction for SQLite (embedded default) and PostgreSQL (production)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import SQLModel, create_engine

from gateway.models import Artifact
from gateway.repository import workflow_index_ddl
from gateway.strictjson import dumps_stored, loads_stored

SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_S = 3
PG_STATEMENT_TIMEOUT_MS = 15000


def make_engine(database_url: str) -> Engine:
    """Build an engine with the pragmas and timeouts that keep requests from hanging."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        # Keep options given in the URL (a search_path, say) and add the statement timeout.
        options = str(url.query.get("options", ""))
        connect_args = {
            "connect_timeout": PG_CONNECT_TIMEOUT_S,
            "options": f"{options} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS}".strip(),
        }
    # pre_ping: a restarted PostgreSQL must not surface as a burst of failed requests.
    # The driver decodes JSON columns; it uses the same strict reader as SQLite rows do.
    return create_engine(
        url,
        json_deserializer=loads_stored,
        json_serializer=dumps_stored,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=5,
        pool_timeout=5,
        connect_args=connect_args,
    )


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLite stores whatever bytes a writer gave it as TEXT; invalid UTF-8 in one cell would
    # fail the whole query, so it reads with U+FFFD in place of the bad bytes.
    dbapi_connection.text_factory = _decode_text
    # WAL lets readers run while a repair writes; busy_timeout queues writers instead of failing.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def init_db(engine: Engine) -> None:
    """Create the artifacts table when it does not exist (never alters an existing one).

    A table created here also gets the expression index the workflow filter uses; on an
    existing (production) table that index is the operator's to create (README, "Limits").
    """
    created = not inspect(engine).has_table("artifacts")
    SQLModel.metadata.create_all(engine, tables=[Artifact.__table__])  # type: ignore[attr-defined]
    if created:
        with engine.begin() as connection:
            connection.execute(text(workflow_index_ddl(engine.dialect)))
