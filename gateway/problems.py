"""RFC 9457 problem+json responses and the app's exception handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import (
    DatabaseUnavailableError,
    GatewayError,
    InvalidInputError,
    MlflowUnreachableError,
    NotFoundError,
    OverloadedError,
    RenderTimeoutError,
    SnapshotUnusableError,
    UnauthorizedError,
    UnreadableValueError,
)
from gateway.strictjson import dumps_bytes

PROBLEM_JSON = "application/problem+json"

# The one place where domain errors meet HTTP: status, title, and whether to say Retry-After.
_STATUS: dict[type[GatewayError], tuple[int, str]] = {
    InvalidInputError: (400, "Bad Request"),
    UnauthorizedError: (401, "Unauthorized"),
    NotFoundError: (404, "Not Found"),
    UnreadableValueError: (422, "Unprocessable Content"),
    SnapshotUnusableError: (422, "Unprocessable Content"),
    DatabaseUnavailableError: (503, "Service Unavailable"),
    OverloadedError: (503, "Service Unavailable"),
    RenderTimeoutError: (503, "Service Unavailable"),
    MlflowUnreachableError: (503, "Service Unavailable"),
}
_RETRY_LATER = (
    DatabaseUnavailableError,
    OverloadedError,
    RenderTimeoutError,
    MlflowUnreachableError,
)


def status_of(exc: GatewayError) -> tuple[int, str]:
    """HTTP status and title of an expected failure (its closest listed class; else 400)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 400, "Bad Request"


def retry_after(exc: GatewayError) -> dict[str, str] | None:
    """`Retry-After: 1` for failures that pass by themselves (overload, a database blip)."""
    return {"Retry-After": "1"} if isinstance(exc, _RETRY_LATER) else None


class StrictJSONResponse(JSONResponse):
    """A JSON response that is always strict RFC 8259 UTF-8 (see `gateway.strictjson`).

    Starlette's own refuses NaN with an exception (a 500) and cannot encode lone surrogates.
    """

    def render(self, content: Any) -> bytes:
        return dumps_bytes(content)


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
    return StrictJSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


async def gateway_error_handler(request: Request, exc: Exception) -> Response:
    """Expected failures: their message is the detail."""
    assert isinstance(exc, GatewayError)
    status, title = status_of(exc)
    return problem(status, title, str(exc), instance=request.url.path, headers=retry_after(exc))


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


def unexpected_error_problem(request: Request) -> Response:
    """The 500 a client sees for a bug: no details, the request id to quote."""
    return problem(
        500,
        "Internal Server Error",
        "unexpected error; see logs for this request id",
        instance=request.url.path,
        request_id=request.scope.get("state", {}).get("request_id"),
    )


class UnexpectedErrorMiddleware:
    """Any exception escaping a route: logged once with the request's context, answered 500.

    It sits inside the request-context middleware, so the `http.unexpected_error` event carries
    the request id the client is told to quote, and nothing reaches the server's own handler
    (uvicorn would print a plain-text traceback into the JSON log stream). Paths under
    `html_prefix` get `html_response` (an HTML page) instead of a problem document.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        html_prefix: str | None = None,
        html_response: Callable[[Request], Response] | None = None,
    ) -> None:
        self.app = app
        self.html_prefix = html_prefix
        self.html_response = html_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error(
                "http.unexpected_error",
                path=scope.get("path"),
                response_started=started,
                exc_info=exc,
            )
            if started:
                return  # headers are out: the server ends the connection, nothing to add
            request = Request(scope)
            response = unexpected_error_problem(request)
            if (
                self.html_prefix is not None
                and self.html_response is not None
                and scope.get("path", "").startswith(self.html_prefix)
            ):
                response = self.html_response(request)
            await response(scope, receive, send)
