"""The typed per-request GraphQL context built by the app's `get_context`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import Response

from gateway.lineage import LineageResolver, RequestLineage
from gateway.observability import Metrics
from gateway.settings import Settings


@dataclass
class Context:
    """What resolvers may use: shared services from the lifespan plus per-request state."""

    request: Request
    response: Response | None
    settings: Settings
    engine: Engine
    metrics: Metrics
    resolver: LineageResolver
    lineage: RequestLineage
