"""Errors whose message is safe to show a client, and their HTTP status."""

from __future__ import annotations


class GatewayError(Exception):
    """Base for expected failures; the message is shown to the client as is."""

    status_code = 400
    title = "Bad Request"


class InvalidInputError(GatewayError):
    """The client sent a malformed id, cursor, argument or body."""


class UnreadableValueError(GatewayError):
    """A stored value cannot be served (nested too deep); only the field holding it fails."""

    status_code = 422
    title = "Unprocessable Content"


class NotFoundError(GatewayError):
    """The requested artifact or image does not exist."""

    status_code = 404
    title = "Not Found"


class UnauthorizedError(GatewayError):
    """The admin token is missing, wrong, or not configured on the server."""

    status_code = 401
    title = "Unauthorized"


class DatabaseUnavailableError(GatewayError):
    """The database did not answer; the request fails fast instead of hanging."""

    status_code = 503
    title = "Service Unavailable"


class OverloadedError(GatewayError):
    """A bounded queue is full; the client should retry later."""

    status_code = 503
    title = "Service Unavailable"


class SnapshotUnusableError(GatewayError):
    """The stored snapshot cannot be drawn and no stored chart is available."""

    status_code = 422
    title = "Unprocessable Content"


class RenderTimeoutError(GatewayError):
    """Rendering took longer than GATEWAY_RENDER_TIMEOUT_S."""

    status_code = 503
    title = "Service Unavailable"
