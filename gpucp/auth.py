"""The agent token: a shared secret an agent presents on Connect, so only agents that were given it
can register and receive tasks (and their payloads).

The control plane takes it from GPUCP_AGENT_TOKEN (or the autoscaler config's agent_token, which
it also hands to the pods it creates); an agent sends it from the same variable, as gRPC metadata
`authorization: Bearer <token>`. Without TLS it crosses the network in clear text, like the
payloads themselves.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

AGENT_TOKEN_ENV = "GPUCP_AGENT_TOKEN"
_KEY = "authorization"
_SCHEME = "Bearer "


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that presents `token` (none for an empty token)."""
    return ((_KEY, _SCHEME + token),) if token else ()


def token_problem(metadata: Iterable[tuple[str, str | bytes]] | None, expected: str) -> str | None:
    """Why a call's metadata does not present `expected`, as a sentence; None if it does."""
    given = next((v for k, v in metadata or () if k == _KEY), None)
    if not isinstance(given, str) or not given.startswith(_SCHEME):
        return (
            f"this control plane only takes agents that present its token: start the agent with "
            f"{AGENT_TOKEN_ENV} set to the server's"
        )
    if not hmac.compare_digest(given[len(_SCHEME) :].encode(), expected.encode()):
        return f"the agent's {AGENT_TOKEN_ENV} is not the control plane's: give it the server's token"
    return None
