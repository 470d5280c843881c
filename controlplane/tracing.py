"""The control plane's side of a task's trace (see gpucp.tracing): a SERVER span around the calls
that create tasks, whose context the new tasks keep for their dispatch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
import grpc.aio

from gpucp import tracing

__all__ = ["parent_of", "server_interceptors"]

_CONTEXT_KEYS = ("traceparent", "tracestate")


def parent_of(pairs: Iterable[tuple[str, object]]) -> dict[str, str]:
    """The W3C trace context among a call's metadata or a message's map: its two keys, nothing else."""
    return {k: v for k, v in pairs if k in _CONTEXT_KEYS and isinstance(v, str)}


class _SubmitTracing(grpc.aio.ServerInterceptor):
    """Runs SubmitTask, SubmitTasks and RunTask inside a gpucp.submit span when the caller sent a
    trace context; every other call, and an untraced submit, passes untouched."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method not in tracing.SUBMIT_METHODS or handler.unary_unary is None:
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        parent = parent_of(metadata)
        if not parent:
            return handler
        behavior: Any = handler.unary_unary  # a coroutine function on a grpc.aio server

        async def traced(request: Any, context: Any) -> Any:
            with tracing.span("gpucp.submit", parent, "SERVER", {"rpc.method": method}):
                return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            traced, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What the gRPC server runs every call through: nothing without opentelemetry."""
    return [_SubmitTracing()] if tracing.enabled() else []
