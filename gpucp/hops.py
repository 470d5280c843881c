"""Hop marks: when each process touches a task on its way from a client's run() to its outcome.

For benches/bench_hops.py, which sets GPUCP_HOPS=DIR for the client, the control plane and the
agents: each process then appends "<monotonic ns> <mark>" lines to DIR/<pid>. CLOCK_MONOTONIC
is one clock for every process on a machine, so the marks of all three line up into one path.
Without GPUCP_HOPS, mark() returns at once (a call and a test: well under a microsecond a mark).
"""

from __future__ import annotations

import os
import time
from typing import TextIO

_DIR = os.environ.get("GPUCP_HOPS")
ENABLED = bool(_DIR)
_out: TextIO | None = None


def mark(name: str) -> None:
    """Note that this process reached `name` now (only with GPUCP_HOPS set)."""
    global _out
    if not ENABLED:
        return
    if _out is None:
        # Opened on the first mark, in the process that makes it (after any fork); a line at a time.
        _out = open(os.path.join(str(_DIR), str(os.getpid())), "a", buffering=1)  # noqa: SIM115
    _out.write(f"{time.monotonic_ns()} {name}\n")
