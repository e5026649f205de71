"""Errors whose message is safe to show a client, and their HTTP status."""

from __future__ import annotations


class GatewayError(Exception):
    """Base for expected failures; the message is shown to the client as is."""

    status_code = 400
    title = "Bad Request"


class InvalidInputError(GatewayError):
    """The client sent a malformed id, cursor, argument or body."""


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
