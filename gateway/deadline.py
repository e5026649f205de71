"""Every request ends: within GATEWAY_REQUEST_TIMEOUT_S, and as soon as its client hangs up.

The app runs in a cancel scope. A watcher reads the connection's messages for it (queueing the
body for the app) and cancels the scope when the client disconnects, so no resolver, lookup,
parse or render keeps working for a client that is gone: parses and renders run in worker
processes, and a cancelled one has its process terminated (`gateway.workers`); a database read
already in a thread finishes its query, but nothing new starts. Past the deadline a response
that has not started is a 503 problem with Retry-After.
"""

from __future__ import annotations

import math

import anyio
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.problems import problem

log = structlog.get_logger("gateway")
# Client Closed Request (nginx's convention), for the access log and metrics.
CLIENT_CLOSED = 499


class RequestDeadlineMiddleware:
    """Cancel a request's work at its deadline or when its client disconnects."""

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        inbox_send, inbox = anyio.create_memory_object_stream[Message](math.inf)
        started = finished = disconnected = False

        async def app_receive() -> Message:
            try:
                return await inbox.receive()
            except anyio.EndOfStream:
                return {"type": "http.disconnect"}

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                finished = True
            await send(message)

        async def watch(cancel: anyio.CancelScope) -> None:
            nonlocal disconnected
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    # Servers also say "disconnect" once a response is complete: not a hang-up.
                    disconnected = not finished
                    inbox_send.close()
                    cancel.cancel()
                    return
                await inbox_send.send(message)

        with inbox_send, inbox, anyio.move_on_after(self.timeout_s) as deadline:
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(watch, group.cancel_scope)
                    await self.app(scope, app_receive, tracking_send)
                    group.cancel_scope.cancel()  # the app is done: stop watching
            except BaseExceptionGroup as grouped:
                # The task group wraps what the app raised; the error handler above wants it bare.
                if len(grouped.exceptions) == 1:
                    raise grouped.exceptions[0] from None
                raise
        if disconnected and not started:
            log.info("http.client_disconnected", path=scope.get("path"))
            scope.setdefault("state", {})["status_override"] = CLIENT_CLOSED
            return
        if deadline.cancel_called and not started:
            log.warning("http.deadline_exceeded", path=scope.get("path"), timeout_s=self.timeout_s)
            response = problem(
                503,
                "Service Unavailable",
                f"the request took longer than GATEWAY_REQUEST_TIMEOUT_S ({self.timeout_s:g} s)",
                instance=scope.get("path"),
                headers={"Retry-After": "1"},
            )
            await response(scope, receive, send)
