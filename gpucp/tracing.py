"""OpenTelemetry spans for a task, from the client through the control plane to the agent.

Optional: `pip install gpucp[tracing]`. Without opentelemetry every function here does nothing
and the clients, the control plane and the agents run as they would anyway. A task's trace:

    client         gpucp.v1.Scheduler/SubmitTask (or SubmitTasks, RunTask, Session), kind CLIENT
      | W3C trace context in the call's gRPC metadata (traceparent, tracestate); on a Session
      | stream, in each SessionSubmit's trace_context
    control plane  gpucp.submit, kind SERVER: validating and storing the tasks
                   gpucp.queue: from the task's submission until a worker was chosen for it
      | the same trace context in the Assignment the agent receives
    agent          gpucp.run, kind CONSUMER: the handler's execution, one span per attempt

Spans are recorded by whatever tracer provider the process has: a service using the client
configures its own. `gpucp serve` and `gpucp agent` export over OTLP/HTTP when
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set (see configure()).
The control plane keeps a task's trace context in memory only: after a restart, the spans of
tasks submitted before it start new traces.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc
import grpc.aio

try:
    from opentelemetry import propagate, trace
except ImportError:  # the `tracing` extra is not installed
    trace = None  # type: ignore[assignment]
# OpenTelemetry's own switch: OTEL_SDK_DISABLED=true turns everything here off, as if not installed.
if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
    trace = None  # type: ignore[assignment]

__all__ = [
    "SUBMIT_METHODS",
    "AsyncClientInterceptor",
    "Carrier",
    "ClientInterceptor",
    "client_interceptors",
    "client_span",
    "configure",
    "current",
    "enabled",
    "span",
    "traced_channel",
]

log = logging.getLogger("gpucp.tracing")

# W3C trace context as text: {"traceparent": "00-<trace id>-<span id>-01", "tracestate": ...}.
Carrier = Mapping[str, str]
# The calls that create tasks: the only ones traced, as the start of a task's trace.
SUBMIT_METHODS = frozenset(
    {"/gpucp.v1.Scheduler/SubmitTask", "/gpucp.v1.Scheduler/SubmitTasks", "/gpucp.v1.Scheduler/RunTask"}
)
_ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def enabled() -> bool:
    """Whether opentelemetry is installed (the `tracing` extra) and not turned off (OTEL_SDK_DISABLED)."""
    return trace is not None


def current() -> dict[str, str]:
    """The current span's trace context, to carry to another process ({} when there is none)."""
    carrier: dict[str, str] = {}
    if trace is not None:
        propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def span(
    name: str,
    parent: Carrier | None,
    kind: str = "INTERNAL",
    attributes: Mapping[str, str | int] | None = None,
    start_ns: int | None = None,
) -> Iterator[None]:
    """A span named `name`, child of the trace context `parent`, current while the block runs.
    Nothing happens without opentelemetry or without a parent: a task whose submission was not
    traced is not traced further (a trace of every task nobody asked about would only cost)."""
    if trace is None or not parent:
        yield
        return
    tracer = trace.get_tracer("gpucp")
    with tracer.start_as_current_span(
        name, context=propagate.extract(parent), kind=trace.SpanKind[kind], attributes=attributes,
        start_time=start_ns,
    ):
        yield


@contextlib.contextmanager
def client_span(name: str) -> Iterator[dict[str, str]]:
    """A CLIENT span named `name`, current while the block runs; yields its trace context, to send
    where metadata cannot carry it (a message on a stream). {} without opentelemetry."""
    if not enabled():
        yield {}
        return
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        # No provider is set: the span would record nothing and carry its parent's context, which
        # is the current one. Sent as it is, without a span (which costs 10-20 us on a run()).
        yield current()
        return
    with trace.get_tracer("gpucp").start_as_current_span(name, kind=trace.SpanKind.CLIENT):
        yield current()


def _with_context(metadata: Any) -> tuple[tuple[str, str | bytes], ...]:
    """The call's metadata with the current trace context added."""
    return (*(tuple(item) for item in metadata or ()), *current().items())


class ClientInterceptor(grpc.UnaryUnaryClientInterceptor):
    """For a blocking channel: a CLIENT span around each task-creating call, its context sent along."""

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        if trace is None or details.method not in SUBMIT_METHODS:
            return continuation(details, request)
        span = trace.get_tracer("gpucp").start_span(details.method.lstrip("/"), kind=trace.SpanKind.CLIENT)
        with trace.use_span(span, end_on_exit=False):
            outcome = continuation(details._replace(metadata=_with_context(details.metadata)), request)
        # Ended when the call is, without waiting for it here: a .future() call stays asynchronous.
        outcome.add_done_callback(lambda call: _end(span, call))
        return outcome


class AsyncClientInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """For a grpc.aio channel: as ClientInterceptor."""

    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        method = details.method.decode() if isinstance(details.method, bytes) else details.method  # bytes here
        if trace is None or method not in SUBMIT_METHODS:
            return await continuation(details, request)
        with trace.get_tracer("gpucp").start_as_current_span(method.lstrip("/"), kind=trace.SpanKind.CLIENT):
            metadata = grpc.aio.Metadata(*_with_context(details.metadata))
            call = await continuation(details._replace(metadata=metadata), request)
            await call  # the call's error, if any, ends the span with it
            return call


def _end(span: Any, call: grpc.Future[Any]) -> None:
    """End a call's span, marked as an error when the call failed."""
    error = call.exception()
    if error is not None:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
    span.end()


def client_interceptors() -> list[AsyncClientInterceptor]:
    """The interceptors a grpc.aio client channel gets: none without opentelemetry."""
    return [AsyncClientInterceptor()] if trace is not None else []


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """A blocking channel that traces task-creating calls (unchanged without opentelemetry)."""
    return grpc.intercept_channel(channel, ClientInterceptor()) if trace is not None else channel


def configure(service_name: str) -> None:
    """Export this process's spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; OTEL_SERVICE_NAME overrides `service_name`, and
    the exporter reads its other OTEL_* settings itself. Without the endpoint, nothing changes."""
    if not any(os.environ.get(name) for name in _ENDPOINT_ENVS):
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the tracing packages are not installed: "
                    "pip install 'gpucp[tracing]' to export spans")
        return
    assert trace is not None  # the SDK imported, so the API did
    name = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
