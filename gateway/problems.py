"""RFC 9457 problem+json responses and the app's exception handlers."""

from __future__ import annotations

from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError, OverloadedError

PROBLEM_JSON = "application/problem+json"

log = structlog.get_logger("gateway")


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem document with a clear human-readable detail."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def gateway_error_handler(request: Request, exc: Exception) -> Response:
    """Expected failures: their message is the detail."""
    assert isinstance(exc, GatewayError)
    headers = {"Retry-After": "1"} if isinstance(exc, OverloadedError) else None
    return problem(exc.status_code, exc.title, str(exc), instance=request.url.path, headers=headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 and friends, as problem documents."""
    assert isinstance(exc, HTTPException)
    title = {404: "Not Found", 405: "Method Not Allowed", 413: "Content Too Large"}.get(
        exc.status_code, "Error"
    )
    return problem(
        exc.status_code,
        title,
        str(exc.detail),
        instance=request.url.path,
        headers=dict(exc.headers) if exc.headers else None,
    )


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    """Anything else: log it with the request id, show no traceback."""
    log.error("http.unexpected_error", path=request.url.path, exc_info=exc)
    return problem(
        500,
        "Internal Server Error",
        "unexpected error; see logs for this request id",
        instance=request.url.path,
        request_id=request.scope.get("state", {}).get("request_id"),
    )
