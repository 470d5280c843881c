"""Task handlers for the tests of README claims; agents load them with `--handler KIND=claims_handlers:NAME`."""

from __future__ import annotations

import json
import os
import signal


def fail_on(payload: bytes, ctx) -> bytes:  # type: ignore[no-untyped-def]
    """Fails on the workers the payload names ({"workers": [...]}), succeeds elsewhere."""
    if ctx.worker_id in json.loads(payload)["workers"]:
        raise RuntimeError(f"refused on {ctx.worker_id}")
    return b"ok"


def crash(payload: bytes, ctx) -> bytes:  # type: ignore[no-untyped-def]
    """Kills the agent that runs it, as a task that brings its machine down would."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: SIGKILL cannot be caught")
