"""Credentials callers present: a bearer token, sent as gRPC metadata `authorization: Bearer <token>`.

Clients, the CLI and agents read it from GPUCP_TOKEN (or a --token-file); the control plane
knows it as a principal of its --auth file. GPUCP_AGENT_TOKEN is the single-token shortcut: a
secret shared by the control plane and every agent (the autoscaler hands it to the pods it
creates), taken on Workers.Connect only; an agent sends it when GPUCP_TOKEN is not set. Without
TLS a token crosses the network in clear text, like the payloads themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

AGENT_TOKEN_ENV = "GPUCP_AGENT_TOKEN"
TOKEN_ENV = "GPUCP_TOKEN"
MAX_TOKEN_BYTES = 4096
_KEY = "authorization"
_SCHEME = "Bearer "  # the control plane reads it in controlplane.auth.Authority.from_metadata


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents `token` (none for an empty token)."""
    return ((_KEY, _SCHEME + token),) if token else ()


def read_token(token_file: str | None = None, *, agent: bool = False) -> str:
    """The caller's token: the one line of `token_file`, else $GPUCP_TOKEN (an agent: else
    $GPUCP_AGENT_TOKEN); "" for none. ValueError for a file that cannot be read or is too long."""
    if token_file:
        try:
            text = Path(token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file {token_file}: {exc}") from None
        if len(text.encode()) > MAX_TOKEN_BYTES or "\n" in text:
            raise ValueError(f"--token-file {token_file}: give one token on one line, at most {MAX_TOKEN_BYTES} bytes")
        return text
    token = os.environ.get(TOKEN_ENV, "")
    if agent and not token:
        token = os.environ.get(AGENT_TOKEN_ENV, "")
    return token.strip()


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds the token to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._metadata = token_metadata(token)

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """`channel` presenting `token` on every call (unchanged for an empty token)."""
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel
