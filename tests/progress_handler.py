"""A task handler that reports being half done, then works on for $payload seconds (default 30).

Agents load it with `--handler halfway=progress_handler:halfway`, so a test can see a running
task's progress from outside.
"""

from __future__ import annotations

import json
import time


def halfway(payload: bytes, ctx) -> bytes:  # type: ignore[no-untyped-def]
    ctx.report_progress(0.5)
    time.sleep(json.loads(payload or b"{}").get("seconds", 30))
    return b"done"
