"""A task handler that behaves like model serving, for placement tests.

The payload names a model and two durations: the first task for a model in this agent process
pays `load_s` (the weights going into GPU memory), every task pays `run_s`. The result says
whether the model was already loaded.

Agents load it with `--handler infer=model_handler:infer`.
"""

from __future__ import annotations

import json
import time

_LOADED: set[str] = set()


def infer(payload: bytes, ctx) -> bytes:  # type: ignore[no-untyped-def]
    spec = json.loads(payload)
    warm = spec["model"] in _LOADED
    if not warm:
        time.sleep(spec.get("load_s", 0))
        _LOADED.add(spec["model"])
    time.sleep(spec.get("run_s", 0))
    return b"warm" if warm else b"cold"
