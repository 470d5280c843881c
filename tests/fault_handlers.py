"""A task handler for fault tests: appends "task_id attempt worker" to $GPUCP_EXEC_LOG, then sleeps.

Agents load it with `--handler record=fault_handlers:record`; the log shows every execution, so a
test can tell a task that ran twice from one whose outcome was merely reported twice.
"""

from __future__ import annotations

import json
import os
import time


def record(payload: bytes, ctx) -> bytes:  # type: ignore[no-untyped-def]
    with open(os.environ["GPUCP_EXEC_LOG"], "a") as log:
        log.write(f"{ctx.task_id} {ctx.attempt} {ctx.worker_id}\n")
    time.sleep(json.loads(payload or b"{}").get("seconds", 0))
    return b"done"
