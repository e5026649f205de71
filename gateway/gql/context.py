"""The typed per-request GraphQL context built by the app's `get_context`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from gateway.services import RequestLineage, Services


@dataclass
class Context:
    """What resolvers may use: the shared services plus this request's lineage batching."""

    request: Request
    response: Response | None
    services: Services
    lineage: RequestLineage
