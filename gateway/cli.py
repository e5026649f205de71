"""The `gateway` command: serve, init-db, demo-data, repair-lineage, verify-charts, schema."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.repair import RepairReport


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.observability import configure_logging
    from gateway.serving import serve

    # uvicorn's loggers go through the gateway's structlog configuration (log_config=None keeps
    # uvicorn from installing its plain-text handlers), so the stream stays JSON lines.
    configure_logging(
        log_format=settings.log_format,
        level=settings.log_level,
        max_line_bytes=settings.log_max_line_bytes,
    )
    serve(
        settings,
        host=args.host,
        port=args.port,
        workers=args.workers,
        keep_alive=args.keep_alive,
        reload=args.reload,
    )
    return 0


def _init_db(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.db import init_db, make_engine

    engine = make_engine(settings.database_url)
    try:
        init_db(engine)
    finally:
        engine.dispose()
    print(f"artifacts table ready in {engine.url.render_as_string(hide_password=True)}")
    return 0


def _demo_data(_args: argparse.Namespace, settings: Settings) -> int:
    from gateway.db import make_engine
    from gateway.demo import seed_demo_data

    engine = make_engine(settings.database_url)
    try:
        inserted = seed_demo_data(engine=engine, tracking_uri=settings.mlflow_tracking_uri)
    finally:
        engine.dispose()
    print(f"demo data: {inserted} artifacts inserted" if inserted else "demo data already present")
    return 0


def _export_schema(args: argparse.Namespace, _settings: Settings) -> int:
    from gateway.gql.schema import export_sdl

    sdl = export_sdl()
    if args.output:
        Path(args.output).write_text(sdl, encoding="utf-8")
    else:
        sys.stdout.write(sdl)
    return 0


def _repair_lineage(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from gateway.db import make_engine
    from gateway.observability import Metrics
    from gateway.repair import repair_lineage
    from gateway.services import build_resolver

    engine = make_engine(settings.database_url)
    resolver = build_resolver(settings, Metrics())
    console = Console(stderr=False)

    async def run() -> RepairReport:
        await resolver.backend.warm_up()
        try:
            with _progress(console) as progress:
                task = progress.add_task("repairing lineage", total=args.limit)
                return await repair_lineage(
                    engine=engine,
                    resolver=resolver,
                    workflow_id=args.workflow_id,
                    limit=args.limit,
                    dry_run=args.dry_run,
                    batch_size=args.batch_size,
                    on_batch=lambda report: progress.update(task, completed=report.scanned),
                )
        finally:
            await resolver.backend.aclose()

    try:
        report = asyncio.run(run())
    except Exception as exc:
        console.print(f"[red]repair failed:[/red] {type(exc).__name__}: {exc}")
        return 1
    finally:
        engine.dispose()
    console.print(_summary_table(report))
    if report.unavailable:
        console.print(
            f"[yellow]{report.unavailable} rows could not be resolved because MLflow "
            "was unavailable; run again when it is back.[/yellow]"
        )
        return 1
    return 0


def _verify_charts(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import write_to_textfile

    from gateway.db import make_engine
    from gateway.objectstore import make_client
    from gateway.observability import Metrics
    from gateway.verify import FAILING, Outcome, count_charts, verify_charts

    console = Console(stderr=args.json)
    client = make_client(settings)
    if client is None:
        console.print("[red]verify-charts needs MINIO_ENDPOINT (and its credentials)[/red]")
        return 2
    engine = make_engine(settings.database_url)
    metrics = Metrics()
    try:
        total = count_charts(engine, workflow_id=args.workflow_id)
        if args.limit is not None:
            total = min(total, args.limit)
        with _progress(console) as progress:
            task = progress.add_task("verifying charts", total=total)
            results = verify_charts(
                engine=engine,
                client=client,
                settings=settings,
                metrics=metrics,
                limit=args.limit,
                workflow_id=args.workflow_id,
                on_result=lambda _r: progress.advance(task),
            )
    except Exception as exc:
        console.print(f"[red]verify-charts failed:[/red] {type(exc).__name__}: {exc}")
        return 1
    finally:
        engine.dispose()
    if args.metrics_file:
        write_to_textfile(args.metrics_file, metrics.registry)
    counts = {outcome: 0 for outcome in Outcome}
    for result in results:
        counts[result.outcome] += 1
    failed = sum(counts[o] for o in FAILING)
    if args.json:
        _print_verification_json(results, counts, ok=failed == 0)
    else:
        _print_verification_tables(results, counts)
    return 1 if failed else 0


def _print_verification_json(results: list[Any], counts: dict[Any, int], *, ok: bool) -> None:
    from gateway import strictjson

    document = {
        "summary": {o.value: n for o, n in counts.items()},
        "checked": len(results),
        "ok": ok,
        "artifacts": [r.as_json() for r in results],
    }
    sys.stdout.write(strictjson.dumps(document, indent=2) + "\n")


def _print_verification_tables(results: list[Any], counts: dict[Any, int]) -> None:
    from gateway.verify import Outcome

    out = Console()
    found = ", ".join(f"{n} {o.value}" for o, n in counts.items() if n)
    out.print(f"{len(results)} charts checked: {found or 'none'}", highlight=False, soft_wrap=True)
    summary = Table(title="chart verification")
    summary.add_column("outcome")
    summary.add_column("charts", justify="right")
    for outcome, n in counts.items():
        summary.add_row(outcome.value, str(n))
    out.print(summary)
    problems = [r for r in results if r.outcome != Outcome.MATCH]
    if problems:
        detail = Table(title="not matching")
        for column in ("id", "name", "outcome", "pixels differing", "detail"):
            detail.add_column(column, justify="right" if column == "id" else "left")
        for r in problems:
            ratio = f"{r.pixel_ratio:.2%}" if r.pixel_ratio is not None else ""
            detail.add_row(str(r.artifact_id), r.name, r.outcome.value, ratio, r.detail)
        out.print(detail)


def _progress(console: Console) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=True,
    )


def _summary_table(report: RepairReport) -> Table:
    table = Table(title="lineage repair (dry run)" if report.dry_run else "lineage repair")
    table.add_column("outcome")
    table.add_column("rows", justify="right")
    table.add_row("scanned", str(report.scanned))
    table.add_row("would repair" if report.dry_run else "repaired", str(report.repaired))
    table.add_row("already linked", str(report.already_linked))
    table.add_row("unresolved", str(report.unresolved))
    table.add_row("unavailable", str(report.unavailable))
    return table


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="gateway", description="Artifact Lineage Gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--reload", action="store_true", help="restart on code changes (dev)")
    serve.add_argument("--workers", type=_positive_int, default=1, help="worker processes")
    serve.add_argument(
        "--keep-alive",
        type=_positive_int,
        default=75,
        help="seconds an idle keep-alive connection stays open (default 75)",
    )
    serve.set_defaults(handler=_serve)

    sub.add_parser("init-db", help="create the artifacts table if missing").set_defaults(
        handler=_init_db
    )
    sub.add_parser("demo-data", help="seed demo artifacts and MLflow runs").set_defaults(
        handler=_demo_data
    )

    repair = sub.add_parser("repair-lineage", help="write resolved MLflow ids to legacy rows")
    repair.add_argument("--dry-run", action="store_true", help="report, write nothing")
    repair.add_argument("--limit", type=_positive_int, help="scan at most N rows")
    repair.add_argument("--workflow-id", help="only rows of this workflow")
    repair.add_argument("--batch-size", type=_positive_int, default=200)
    repair.set_defaults(handler=_repair_lineage)

    verify = sub.add_parser(
        "verify-charts",
        help="check each stored chart against the chart its snapshot regenerates",
        description="Exit status: 0 when nothing differs, 1 when a chart differs or MinIO "
        "could not be read, 2 when MinIO is not configured.",
    )
    verify.add_argument("--limit", type=_positive_int, help="check at most N charts")
    verify.add_argument("--workflow-id", help="only charts of this workflow")
    verify.add_argument("--json", action="store_true", help="print one JSON document")
    verify.add_argument(
        "--metrics-file", help="write the Prometheus counters to this file (textfile collector)"
    )
    verify.set_defaults(handler=_verify_charts)

    export = sub.add_parser("export-schema", help="print the GraphQL SDL")
    export.add_argument("-o", "--output", help="write to this file instead of stdout")
    export.set_defaults(handler=_export_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gateway` console script."""
    from gateway.observability import configure_logging

    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        # A configuration the gateway refuses (production guardrails, a malformed value): say
        # which setting and why, without a traceback, and exit as argparse does for bad usage.
        for error in exc.errors():
            print(f"gateway: configuration refused: {error['msg']}", file=sys.stderr)
        return 2
    # Logs go to stderr so the command's own output (tables, SDL) stays clean on stdout.
    configure_logging(
        log_format=settings.log_format,
        level=settings.log_level,
        stream=sys.stderr,
        max_line_bytes=settings.log_max_line_bytes,
    )
    code: int = args.handler(args, settings)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
