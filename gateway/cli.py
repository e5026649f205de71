"""The `gateway` command: serve, init-db, demo-data, export-schema."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.settings import Settings


def _serve(args: argparse.Namespace, _settings: Settings) -> int:
    import uvicorn

    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        reload=args.reload,
        access_log=False,  # the gateway logs its own `http.request` event with the request id
        proxy_headers=True,
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="gateway", description="Artifact Lineage Gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the HTTP API with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--reload", action="store_true", help="restart on code changes (dev)")
    serve.set_defaults(handler=_serve)

    sub.add_parser("init-db", help="create the artifacts table if missing").set_defaults(
        handler=_init_db
    )
    sub.add_parser("demo-data", help="seed demo artifacts and MLflow runs").set_defaults(
        handler=_demo_data
    )

    export = sub.add_parser("export-schema", help="print the GraphQL SDL")
    export.add_argument("-o", "--output", help="write to this file instead of stdout")
    export.set_defaults(handler=_export_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `gateway` console script."""
    from gateway.observability import configure_logging

    args = build_parser().parse_args(argv)
    settings = Settings()
    configure_logging(log_format=settings.log_format, level=settings.log_level)
    code: int = args.handler(args, settings)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
