"""A handler for the progress tests; agents load it with `--handler KIND=progress_handlers:halfway`."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def halfway(payload: bytes, ctx) -> bytes:  # type: ignore[no-untyped-def]
    """Reports progress 0.5, then waits until the file the payload names exists."""
    ctx.report_progress(0.5)
    gate = Path(payload.decode())
    for _ in range(600):
        if gate.exists():
            return b"done"
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{gate} never appeared")
