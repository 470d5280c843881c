"""`gpucp serve` with none of the task book's journal observers: no task-event history, no metrics
moved by task events, no task log lines. The control plane `bench_e2e.py --observers` measures the
real one against, run as `python -m benches.serve_unobserved serve FLAGS` (the repository on
PYTHONPATH).
"""

from __future__ import annotations

import sys

from controlplane.book import Observer, TaskBook
from gpucp.cli import main


def unheard(book: TaskBook, observer: Observer) -> None:
    """TaskBook.journal that registers nothing: events still happen, no journal observer hears them."""


TaskBook.journal = unheard  # type: ignore[method-assign]
sys.exit(main())
