"""A task handler that answers with its payload's SHA-256, failing its first attempt: a test sees
that every attempt, the retry too, got the payload the task was submitted with.

Agents load it with `--handler digest=security.digest_handler:digest`.
"""

from __future__ import annotations

import hashlib


def digest(payload: bytes, ctx) -> bytes:  # type: ignore[no-untyped-def]
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails, so the retry is dispatched too")
    return hashlib.sha256(payload).hexdigest().encode()
