"""Data access for the artifacts table: keyword-only functions over a SQLModel session."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio.to_thread
from sqlalchemy import (
    ColumnElement,
    Dialect,
    Select,
    Text,
    and_,
    bindparam,
    case,
    func,
    literal_column,
    null,
    or_,
    text,
    type_coerce,
    update,
)
from sqlalchemy import select as sql_select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import CursorResult, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from gateway.errors import DatabaseUnavailableError
from gateway.models import Artifact, TolerantJSON
from gateway.rows import SNAPSHOT_KEY

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Listed:
    """What a listed row knows of its stored `metadata` without having read it whole."""

    # Characters of the stored metadata text (None when there is none, or when the page was
    # read without its JSON columns): what serving it costs.
    metadata_chars: int | None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of artifacts walked by id, and whether more follow.

    Rows are read without their `market_data_snapshot` unless the whole metadata is asked for
    (`listed` then says, per id, what the rest costs); `metadata_texts` reads the rest, as
    text, when a field needs it.
    """

    items: Sequence[Artifact]
    has_next: bool
    listed: Mapping[int, Listed] = field(default_factory=dict)
    # Set when the page ended at its scan budget: the last row looked at, which the next page
    # starts after (it may be past the last item, or the page may have no item at all).
    scanned_to: int | None = None

    @property
    def next_after(self) -> int | None:
        """The id the next page starts after; None when no page follows."""
        if not self.has_next:
            return None
        if self.scanned_to is not None:
            return self.scanned_to
        return self.items[-1].id if self.items else None

    def listing_of(self, row: Artifact) -> Listed | None:
        """What this page knows of the row's metadata; None when the row was read whole."""
        return self.listed.get(row.id) if row.id is not None else None


# A \uD800-\uDBFF escape not followed by a low one, or a \uDC00-\uDFFF escape not preceded by
# a high one (PostgreSQL regular expression, as an SQL string literal).
_LONE_SURROGATE_SQL = (
    "'\\\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    "|(?<!\\\\u[dD][89abAB][0-9a-fA-F]{2})\\\\u[dD][c-fC-F][0-9a-fA-F]{2}'"
)


def _metadata_text(key: str, dialect: str) -> ColumnElement[str]:
    # Keys are literals, not bind parameters: an expression index can only match a query whose
    # expression is spelled the same way (see `workflow_index_ddl`).
    column = Artifact.__table__.c.metadata  # type: ignore[attr-defined]
    if dialect == "sqlite":
        # SQLite keeps JSON as text and other writers may have stored text that is not JSON;
        # json_extract would fail the whole query on such a row.
        value = func.json_extract(column, literal_column(f"'$.{key}'"))
        return case((func.json_valid(column) == 1, value), else_=None)
    # PostgreSQL's `->>` fails the whole query on a document holding a lone surrogate escape
    # (other writers store them; its json type accepts them on input). Such a row is not matched
    # by its metadata; every other row still is.
    readable = ~column.cast(Text).op("~")(literal_column(_LONE_SURROGATE_SQL))
    value = column.op("->>", return_type=Text())(literal_column(f"'{key}'"))
    return case((readable, value), else_=None)


def effective_workflow_id_expr(dialect: str) -> ColumnElement[str]:
    """SQL for the workflow id used by lineage: column, else metadata workflow_id/dag_run_id."""
    return func.coalesce(
        func.nullif(col(Artifact.workflow_id), literal_column("''")),
        _metadata_text("workflow_id", dialect),
        _metadata_text("dag_run_id", dialect),
    )


def metadata_without_snapshot_expr(dialect: str) -> ColumnElement[Any]:
    """SQL for `metadata` minus its market-data snapshot, decoded like the column.

    A snapshot is most of a chart row's bytes (36 KB for 500 bars, 2.4 MB for 20,000); list
    pages and lineage need the small keys beside it. Values that are not readable JSON objects
    are read whole, as the column would be (CASE branches run in order: the JSON functions never
    see text they would fail on).
    """
    column = Artifact.__table__.c.metadata  # type: ignore[attr-defined]
    if dialect == "sqlite":
        stripped: ColumnElement[Any] = case(
            (func.json_valid(column) == 0, column),
            (
                func.json_type(column) == "object",
                func.json_remove(column, literal_column(f"'$.{SNAPSHOT_KEY}'")),
            ),
            else_=column,
        )
    else:
        as_text = column.cast(Text)
        stripped = case(
            (as_text.op("~")(literal_column(_LONE_SURROGATE_SQL)), column),
            (
                func.json_typeof(column) == "object",
                column.cast(JSONB).op("-")(literal_column(f"'{SNAPSHOT_KEY}'")).cast(column.type),
            ),
            else_=column,
        )
    return type_coerce(stripped, TolerantJSON())


WORKFLOW_INDEX = "ix_artifacts_effective_workflow"


def workflow_index_ddl(dialect: Dialect) -> str:
    """CREATE INDEX for the workflow filter's expression, compiled from the very expression the
    queries use (an expression index is only used when the two match)."""
    expression = effective_workflow_id_expr(dialect.name).compile(
        dialect=dialect, compile_kwargs={"literal_binds": True}
    )
    unqualified = str(expression).replace("artifacts.", "")
    return f"CREATE INDEX IF NOT EXISTS {WORKFLOW_INDEX} ON artifacts (({unqualified}))"


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def missing_lineage_expr() -> ColumnElement[bool]:
    """SQL for rows lacking either lineage id."""
    return or_(col(Artifact.run_id).is_(None), col(Artifact.experiment_id).is_(None))


def ping(engine: Engine) -> None:
    """Raise unless the database answers a trivial query (readiness)."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def get_artifact(session: Session, *, artifact_id: int) -> Artifact | None:
    """The artifact with this id, or None."""
    return session.get(Artifact, artifact_id)


def list_artifacts(
    session: Session,
    *,
    first: int,
    after_id: int | None = None,
    artifact_type: str | None = None,
    symbol: str | None = None,
    workflow_id: str | None = None,
    missing_lineage: bool | None = None,
    whole_metadata: bool = False,
    with_json: bool = True,
) -> Page:
    """Up to `first` artifacts with id greater than `after_id`, in id order, filtered.

    Rows come without `metadata.market_data_snapshot` unless `whole_metadata` is set, and
    without either JSON column at all when `with_json` is False (a page that shows none of it).
    """
    conditions: list[ColumnElement[bool]] = []
    if after_id is not None:
        conditions.append(col(Artifact.id) > after_id)
    if artifact_type is not None:
        conditions.append(col(Artifact.artifact_type) == artifact_type)
    if symbol is not None:
        conditions.append(col(Artifact.symbol) == symbol)
    if workflow_id is not None:
        conditions.append(effective_workflow_id_expr(_dialect(session)) == workflow_id)
    if missing_lineage is True:
        conditions.append(missing_lineage_expr())
    elif missing_lineage is False:
        conditions.append(~missing_lineage_expr())
    if whole_metadata:
        statement = (
            select(Artifact)
            .where(and_(True, *conditions))
            .order_by(col(Artifact.id))
            .limit(first + 1)
        )
        rows = list(session.exec(statement).all())
        return Page(items=rows[:first], has_next=len(rows) > first)
    return _listed_page(session, conditions, first, with_json=with_json)


def get_listed_artifact(session: Session, *, artifact_id: int) -> Page:
    """The artifact with this id read as a list reads it (without its snapshot): a page of
    one row, or of none."""
    statement = _listed_by_id(_dialect(session))
    return _read_listing(session, statement, {"artifact_id": artifact_id}, 1, with_json=True)


@functools.cache
def _listed_by_id(dialect: str) -> Select[Any]:
    """The listing of one id, built once per dialect: building it and working out its cache
    key cost 0.5 ms a read, more than the query (every image and 304 not served from memory
    reads a row this way)."""
    table = Artifact.__table__  # type: ignore[attr-defined]
    return _listing_select(dialect, with_json=True).where(table.c.id == bindparam("artifact_id"))


def get_artifact_document(
    session: Session, *, artifact_id: int
) -> tuple[Artifact, str | None] | None:
    """The artifact without its `metadata` decoded, and the stored metadata text beside it (or
    None when there is no such row): for an answer that serves the metadata whole without this
    process decoding it. The row's `meta` is None until `set_loaded_metadata` gives it the
    value read from the text. One statement, and no JSON function run by the database."""
    found = session.execute(_document_by_id(), {"artifact_id": artifact_id}).first()
    if found is None:
        return None
    row, metadata_text = found
    set_committed_value(row, "meta", None)
    return row, metadata_text


@functools.cache
def _document_by_id() -> Select[Any]:
    table = Artifact.__table__  # type: ignore[attr-defined]
    return (
        sql_select(Artifact, table.c.metadata.cast(Text))
        .options(defer(Artifact.meta))  # type: ignore[arg-type]
        .where(table.c.id == bindparam("artifact_id"))
    )


def set_loaded_metadata(row: Artifact, metadata: Any) -> None:
    """Give a row read without its `metadata` the value read from the text (as loaded, not as
    a change to write)."""
    set_committed_value(row, "meta", metadata)


def _listed_page(
    session: Session,
    conditions: Sequence[ColumnElement[bool]],
    first: int,
    *,
    with_json: bool = True,
) -> Page:
    table = Artifact.__table__  # type: ignore[attr-defined]
    listing = (
        _listing_select(_dialect(session), with_json=with_json)
        .where(and_(True, *conditions))
        .order_by(table.c.id)
        .limit(first + 1)
    )
    return _read_listing(session, listing, {}, first, with_json=with_json)


def _listing_select(dialect: str, *, with_json: bool) -> Select[Any]:
    # Rows are loaded by the ORM (it fills instances without SQLModel's per-field __init__
    # work: a third of a page's time) with `metadata` deferred; the lean metadata is read
    # beside them and set as the row's loaded value. The instances are the session's own:
    # a listing must not share a session with whole-row reads of the same ids.
    table = Artifact.__table__  # type: ignore[attr-defined]
    if with_json:
        extra = [
            metadata_without_snapshot_expr(dialect).label("lean_metadata"),
            func.length(table.c.metadata.cast(Text)).label("metadata_chars"),
        ]
        deferred = [defer(Artifact.meta)]  # type: ignore[arg-type]
    else:
        extra = [null().label("lean_metadata"), null().label("metadata_chars")]
        deferred = [defer(Artifact.meta), defer(Artifact.chart_data)]  # type: ignore[arg-type]
    return sql_select(Artifact, *extra).options(*deferred)


def _read_listing(
    session: Session,
    listing: Select[Any],
    params: Mapping[str, Any],
    first: int,
    *,
    with_json: bool,
) -> Page:
    found = session.execute(listing, dict(params)).all()
    items, listed = [], {}
    for row, lean_metadata, metadata_chars in found[:first]:
        set_committed_value(row, "meta", lean_metadata)
        if not with_json:
            set_committed_value(row, "chart_data", None)
        items.append(row)
        listed[row.id] = Listed(metadata_chars=metadata_chars)
    return Page(items=items, has_next=len(found) > first, listed=listed)


def metadata_texts(session: Session, *, ids: Sequence[int]) -> dict[int, str | None]:
    """The stored `metadata` of these rows as text, not decoded: for a worker process to parse."""
    table = Artifact.__table__  # type: ignore[attr-defined]
    statement = sql_select(table.c.id, table.c.metadata.cast(Text)).where(table.c.id.in_(ids))
    return {artifact_id: value for artifact_id, value in session.execute(statement)}


def count_artifacts(
    session: Session, *, artifact_type: str | None = None, workflow_id: str | None = None
) -> int:
    """How many artifacts of this type and workflow exist."""
    conditions: list[ColumnElement[bool]] = []
    if artifact_type is not None:
        conditions.append(col(Artifact.artifact_type) == artifact_type)
    if workflow_id is not None:
        conditions.append(effective_workflow_id_expr(_dialect(session)) == workflow_id)
    statement = select(func.count()).select_from(Artifact).where(and_(True, *conditions))
    return int(session.exec(statement).one())


def _json_text(column: Any, key: str, dialect: str) -> ColumnElement[str]:
    """A top-level string of a JSON column's documents, as `_metadata_text` reads metadata."""
    if dialect == "sqlite":
        value = func.json_extract(column, literal_column(f"'$.{key}'"))
        return case((func.json_valid(column) == 1, value), else_=None)
    readable = ~column.cast(Text).op("~")(literal_column(_LONE_SURROGATE_SQL))
    return case(
        (readable, column.op("->>", return_type=Text())(literal_column(f"'{key}'"))), else_=None
    )


def run_artifact_candidates(
    session: Session, *, run_id: str, workflow_id: str | None, after_id: int | None, limit: int
) -> Page:
    """Rows whose lineage can be this run, in id order after `after_id` (listed: no snapshot).

    A superset, for lineage to decide: rows storing the run id, and rows without one whose
    metadata names it, whose stored location contains it (MLflow's artifact layout), or that
    belong to the workflow `workflow_id`. Callers pass the run's workflow only when the run is
    that workflow's latest run: the legacy rows of a workflow resolve to its latest run, so for
    any other run they are not candidates, and reading them would be work bounded by the table.
    """
    dialect = _dialect(session)
    table = Artifact.__table__  # type: ignore[attr-defined]
    # Run ids are MLflow ids (letters, digits, - and _): `_` is LIKE's one-character wildcard,
    # which only widens the superset.
    inside = f"%{run_id}%"
    legacy: list[ColumnElement[bool]] = [
        _metadata_text("mlflow_run_id", dialect) == run_id,
        _json_text(table.c.chart_data, "minio_url", dialect).like(inside),
        _metadata_text("minio_url", dialect).like(inside),
        col(Artifact.path).like(inside),
    ]
    if workflow_id is not None:
        legacy.append(effective_workflow_id_expr(dialect) == workflow_id)
    conditions: list[ColumnElement[bool]] = [
        or_(col(Artifact.run_id) == run_id, and_(col(Artifact.run_id).is_(None), or_(*legacy)))
    ]
    if after_id is not None:
        conditions.append(col(Artifact.id) > after_id)
    return _listed_page(session, conditions, limit)


def count_missing_run_id(session: Session, *, workflow_id: str) -> int:
    """Rows of this workflow whose run id is null in the table."""
    statement = (
        select(func.count())
        .select_from(Artifact)
        .where(
            effective_workflow_id_expr(_dialect(session)) == workflow_id,
            col(Artifact.run_id).is_(None),
        )
    )
    return int(session.exec(statement).one())


@dataclass(frozen=True, slots=True)
class WorkflowLineage:
    """One workflow's rows and how many of them have a null run id (None: no workflow id)."""

    workflow_id: str | None
    artifacts: int
    missing_run_id: int


def lineage_by_workflow(session: Session) -> list[WorkflowLineage]:
    """Every workflow's row count and null run ids, largest workflow first (one GROUP BY)."""
    workflow = effective_workflow_id_expr(_dialect(session)).label("workflow")
    missing = func.sum(case((col(Artifact.run_id).is_(None), 1), else_=0))
    statement = (
        sql_select(workflow, func.count().label("artifacts"), missing.label("missing"))
        .select_from(Artifact)
        .group_by(workflow)
        .order_by(func.count().desc(), workflow)
    )
    return [
        WorkflowLineage(name, int(total), int(absent or 0))
        for name, total, absent in session.execute(statement)
    ]


def count_missing_lineage(session: Session) -> int:
    """How many artifacts still lack a run id or experiment id."""
    statement = select(func.count()).select_from(Artifact).where(missing_lineage_expr())
    return int(session.exec(statement).one())


def set_lineage_if_null(
    session: Session, *, artifact_ids: Sequence[int], run_id: str, experiment_id: str
) -> set[int]:
    """Compare-and-set on these rows: write both ids only where a row still has no run id;
    returns the ids written (two statements for any number of rows).

    A null experiment id beside a stored run id is filled in only when the run ids agree,
    so a non-null value is never overwritten.
    """
    table = Artifact.__table__  # type: ignore[attr-defined]
    if not artifact_ids:
        return set()
    written = {
        artifact_id
        for (artifact_id,) in session.execute(
            update(table)
            .where(table.c.id.in_(artifact_ids), table.c.run_id.is_(None))
            .values(
                run_id=run_id, experiment_id=func.coalesce(table.c.experiment_id, experiment_id)
            )
            .returning(table.c.id)
        )
    }
    rest = [artifact_id for artifact_id in artifact_ids if artifact_id not in written]
    if rest:
        written.update(
            artifact_id
            for (artifact_id,) in session.execute(
                update(table)
                .where(
                    table.c.id.in_(rest),
                    table.c.run_id == run_id,
                    table.c.experiment_id.is_(None),
                )
                .values(experiment_id=experiment_id)
                .returning(table.c.id)
            )
        )
    return written


def set_workflow_lineage_if_null(
    session: Session, *, workflow_id: str, run_id: str, experiment_id: str
) -> int:
    """Compare-and-set on every row of a workflow whose run id is null; returns rows written."""
    table = Artifact.__table__  # type: ignore[attr-defined]
    result = cast(
        CursorResult[Any],
        session.execute(
            update(table)
            .where(
                effective_workflow_id_expr(_dialect(session)) == workflow_id,
                table.c.run_id.is_(None),
            )
            .values(
                run_id=run_id, experiment_id=func.coalesce(table.c.experiment_id, experiment_id)
            )
            .execution_options(synchronize_session=False)
        ),
    )
    return int(result.rowcount)


def add_artifact(session: Session, *, artifact: Artifact) -> int:
    """Insert one artifact and return its new id."""
    session.add(artifact)
    session.flush()
    assert artifact.id is not None
    return artifact.id


async def run_in_session(engine: Engine, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run `fn(session, **kwargs)` in a worker thread; a dead database becomes a 503 error."""

    def call() -> T:
        try:
            with Session(engine, expire_on_commit=False) as session:
                result = fn(session, **kwargs)
                session.commit()
                return result
        except (OperationalError, DBAPIError) as exc:
            if _is_unavailable(exc):
                raise DatabaseUnavailableError("the database is unavailable") from exc
            raise

    return await anyio.to_thread.run_sync(call)


# SQLite reports schema mistakes as OperationalError too; those are bugs, not outages.
_SCHEMA_ERRORS = ("no such table", "no such column", "syntax error")


def _is_unavailable(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, OperationalError):
        return False
    return not str(exc.orig).lower().startswith(_SCHEMA_ERRORS)
