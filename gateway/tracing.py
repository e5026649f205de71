"""OpenTelemetry tracing, configured only by OpenTelemetry's own environment variables.

Tracing is on when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true; the SDK reads the
rest itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, the
exporter's headers and timeouts). Off, nothing is installed: the API's no-op tracer makes every
span below a function call that records nothing, and no instrumentation wraps the app.

The serving process exports in batches; a worker process (renders, parses) configures its own
provider and flushes at the end of each traced job, because pebble may terminate it at any time.
A job's trace context travels with it as a W3C `traceparent` carrier (`carrier` / `traced_job`).

What crosses the process's edges is the gateway's own (`GatewayPropagator`, installed by
`configure_propagation` in place of `OTEL_PROPAGATORS`): a caller's `traceparent` makes the
server span its child; its `tracestate` is never read; its `baggage` only when the operator
trusts the callers (`GATEWAY_TRACE_TRUST_BAGGAGE`), and then it stays in the process (span
processors may read it). Outgoing requests (MLflow, render workers) carry only a `traceparent`
naming the gateway's own span: nothing a client wrote reaches a backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators import textmap
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

T = TypeVar("T")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
tracer = trace.get_tracer("gateway")
# Longest span attribute value exported, unless OTEL_*ATTRIBUTE_VALUE_LENGTH_LIMIT says.
MAX_ATTRIBUTE_CHARS = 1024
# W3C Baggage's own limit for the whole header; a longer one is dropped unread.
MAX_BAGGAGE_BYTES = 8192
_TRACECONTEXT = TraceContextTextMapPropagator()
_BAGGAGE = W3CBaggagePropagator()


class _TraceparentOnly(textmap.Getter[textmap.CarrierT]):
    """A getter that reads a carrier's `traceparent` and nothing else of the trace context."""

    def __init__(self, getter: textmap.Getter[textmap.CarrierT]) -> None:
        self.getter = getter

    def get(self, carrier: textmap.CarrierT, key: str) -> list[str] | None:
        return self.getter.get(carrier, key) if key == "traceparent" else None

    def keys(self, carrier: textmap.CarrierT) -> list[str]:
        return ["traceparent"]


class GatewayPropagator(textmap.TextMapPropagator):
    """W3C trace context across the gateway's edges, keeping a caller's text to itself.

    In: `traceparent`; `baggage` when `trust_baggage` (at most `MAX_BAGGAGE_BYTES`, entries as
    OpenTelemetry parses them), for this process only; never `tracestate` (other vendors'
    data, sent on verbatim by the stock propagator). Out: the current span's `traceparent`,
    and nothing else: a caller's baggage, trusted or not, is never sent to a backend.
    """

    def __init__(self, *, trust_baggage: bool) -> None:
        self.trust_baggage = trust_baggage

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: otel_context.Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> otel_context.Context:
        context = _TRACECONTEXT.extract(carrier, context, _TraceparentOnly(getter))
        if self.trust_baggage:
            values = getter.get(carrier, "baggage") or []
            # Checked here, not by OpenTelemetry: its warning quotes the whole header.
            if 0 < sum(len(value) for value in values) <= MAX_BAGGAGE_BYTES:
                context = _BAGGAGE.extract(carrier, context, getter)
        return context

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: otel_context.Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            setter.set(
                carrier,
                "traceparent",
                f"00-{format(span_context.trace_id, '032x')}-"
                f"{format(span_context.span_id, '016x')}-{span_context.trace_flags:02x}",
            )

    @property
    def fields(self) -> set[str]:
        return {"traceparent"}


def configure_propagation(*, trust_baggage: bool) -> None:
    """Install `GatewayPropagator` as the process's propagator (the last app built decides)."""
    propagate.set_global_textmap(GatewayPropagator(trust_baggage=trust_baggage))
    # Its warnings quote the entries a client sent; what is dropped is dropped quietly.
    logging.getLogger("opentelemetry.baggage.propagation").setLevel(logging.ERROR)


def wanted(environ: dict[str, str] | None = None) -> bool:
    """True when the environment asks for traces to be exported."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def enabled() -> bool:
    """True when an SDK tracer provider is installed (by `configure` or by a test)."""
    from opentelemetry.sdk.trace import TracerProvider

    return isinstance(trace.get_tracer_provider(), TracerProvider)


def configure() -> bool:
    """Install the SDK provider with the OTLP/HTTP exporter when the environment asks for it
    (once per process); returns whether tracing is on."""
    if enabled():
        return True
    if not wanted():
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Span attributes quote what clients send (User-Agent, the URL): each is cut to a length
    # unless the operator set OpenTelemetry's own limit (the SDK's default is no limit).
    limits = None
    if not os.environ.get("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "").strip() and not (
        os.environ.get("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "").strip()
    ):
        limits = SpanLimits(max_span_attribute_length=MAX_ATTRIBUTE_CHARS)
    provider = TracerProvider(resource=Resource.create(), span_limits=limits)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return True


def flush() -> None:
    """Export what is buffered now (a worker before its job returns)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is not None:
        force_flush()


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Span]:
    """A span around a block; an exception sets its status to ERROR (and propagates)."""
    with tracer.start_as_current_span(
        name, attributes={k: v for k, v in attributes.items() if v is not None}
    ) as current:
        yield current


def set_attributes(**attributes: Any) -> None:
    """Attributes on the current span (values that are None are left out)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


def mark_error(description: str) -> None:
    """The current span's outcome is an error that was handled (a fallback, a degraded field)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_status(Status(StatusCode.ERROR, description[:200]))


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers, to travel with a job to another process
    (empty when nothing is traced)."""
    headers: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)
    return headers


def traced_job(
    headers: dict[str, str], name: str, function: Callable[..., T], *args: Any, **kwargs: Any
) -> T:
    """Run `function` in a worker process inside a span `name` whose parent is the caller's
    span (from `headers`); flushed before returning. Without headers, just the call."""
    if not headers or not enabled():
        return function(*args, **kwargs)
    token = otel_context.attach(propagate.extract(headers))
    try:
        with span(name):
            return function(*args, **kwargs)
    finally:
        otel_context.detach(token)
        flush()


def trace_ids() -> tuple[str, str] | None:
    """The current trace id and span id in hex, when a span is active."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
