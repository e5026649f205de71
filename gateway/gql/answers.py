"""Which GraphQL answers may be kept (`gateway/answers.py` says what keeping means).

The view keys a kept answer on the request exactly as sent (method, content type, accepted
types, query string and body), and keeps the answer only when this extension said so: the
operation was a query (never a mutation) that passed every check (limits, cost, validation)
and executed without errors. An identical request is then answered with the identical body;
any other request, however close, goes through every check again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType


@dataclass
class Keeping:
    """One request's verdict: may its answer be kept?"""

    allowed: bool = False


# The verdict of the request being served (set by the view, decided by the extension and the
# response encoder, all in the request's task).
keeping: ContextVar[Keeping | None] = ContextVar("gateway_answer_keeping", default=None)


class KeptAnswers(SchemaExtension):
    """Marks a query's answer as keepable when it executed without errors."""

    def on_execute(self) -> Iterator[None]:
        yield
        verdict = keeping.get()
        execution = self.execution_context
        if verdict is None or execution.operation_type is not OperationType.QUERY:
            return
        result = execution.result
        verdict.allowed = (
            isinstance(result, GraphQLExecutionResult)
            and not result.errors
            and not execution.pre_execution_errors
        )
