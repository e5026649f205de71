"""Baseline for bench/image_route.py: a plain Starlette route serving one PNG from memory."""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app() -> Starlette:
    """`uvicorn --factory bench._plain_png_app:create_app` with BENCH_PNG set to a file."""
    png = Path(os.environ["BENCH_PNG"]).read_bytes()

    async def plain_png(_request: Request) -> Response:
        return Response(png, media_type="image/png")

    async def healthz(_request: Request) -> Response:
        return Response(b"ok")

    return Starlette(routes=[Route("/png", plain_png), Route("/healthz", healthz)])
