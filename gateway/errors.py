"""Expected failures, named for what went wrong; their message is safe to show a client.

These are domain errors: they know nothing of HTTP. The delivery edge maps each to a status
(`gateway.problems.status_of`), so REST, GraphQL and the pages answer the same way.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base for expected failures; the message is shown to the client as is."""


class InvalidInputError(GatewayError):
    """The client sent a malformed id, cursor, argument or body."""


class UnreadableValueError(GatewayError):
    """A stored value cannot be served (nested too deep); only the field holding it fails."""


class NotFoundError(GatewayError):
    """The requested artifact or image does not exist."""


class UnauthorizedError(GatewayError):
    """The admin token is missing, wrong, or not configured on the server."""


class DatabaseUnavailableError(GatewayError):
    """The database did not answer; the request fails fast instead of hanging."""


class OverloadedError(GatewayError):
    """A bounded queue is full; the client should retry later."""


class SnapshotUnusableError(GatewayError):
    """The stored snapshot cannot be drawn and no stored chart is available."""


class RenderTimeoutError(GatewayError):
    """Rendering took longer than GATEWAY_RENDER_TIMEOUT_S."""


class ResponseTooLargeError(GatewayError):
    """What was asked for would make a response larger than GATEWAY_MAX_RESPONSE_MB."""


class MlflowUnreachableError(GatewayError):
    """MLflow could not be asked (down, too slow, breaker open): the field that needed it fails,
    the rest of the answer stands."""

    code = "MLFLOW_UNAVAILABLE"

    @property
    def extensions(self) -> dict[str, str]:
        # graphql-core copies an original error's `extensions` onto the GraphQL error.
        return {"code": self.code}
