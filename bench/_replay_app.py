"""Baseline for bench/load.py: a bare Starlette app serving the gateway's own recorded answers.

The same routes, bodies and headers (304 on a matching If-None-Match), from
memory: what serving those bytes costs with no database, lineage, cache or policy behind them.
Run as `python bench/_replay_app.py PORT` with BENCH_REPLAY naming the recording: 2 uvicorn
workers with the same listening socket as `gateway serve` (`gateway.serving.GatewayConfig`,
TCP_NODELAY), so the two differ in the application only.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import uuid
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_app() -> Starlette:
    recording = json.loads(Path(os.environ["BENCH_REPLAY"]).read_text())
    answers = {key: (base64.b64decode(body), headers) for key, (body, headers) in recording.items()}

    def answer(key: str, request: Request) -> Response:
        body, recorded = answers[key]
        # The gateway's headers, with a fresh request id as the gateway makes one.
        headers = {**recorded, "x-request-id": uuid.uuid4().hex}
        etag = recorded.get("etag")
        if etag is not None and request.headers.get("if-none-match") == etag:
            del headers["content-type"]
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers)

    async def graphql(request: Request) -> Response:
        await request.body()
        return answer("list", request)

    async def artifact(request: Request) -> Response:
        return answer(f"artifact {request.path_params['id']}", request)

    async def image(request: Request) -> Response:
        return answer(f"image {request.path_params['id']}", request)

    async def healthz(_request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/graphql", graphql, methods=["POST"]),
            Route("/api/artifacts/{id:int}", artifact),
            Route("/api/artifacts/{id:int}/image", image),
            Route("/healthz", healthz),
        ]
    )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gateway.serving import GatewayConfig, run

    run(
        GatewayConfig(
            "bench._replay_app:create_app",
            factory=True,
            port=int(sys.argv[1]),
            workers=2,
            timeout_keep_alive=75,
            log_level="error",
            access_log=False,
        )
    )
