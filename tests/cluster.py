"""gpucp.testing with the test suite's defaults: the work tree and tests/ importable by every child.

Tests import from here so that handler modules in tests/ (fault_handlers, model_handler, ...)
load in agents, and so that the control plane notices a lost agent within 2 s unless told otherwise.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from gpucp import testing
from gpucp.testing import eventually, wait_for_workers

__all__ = [
    "FAULT_REPORT", "ROOT", "SECURITY_REPORT", "AgentProcess", "ControlPlaneProcess", "_env", "eventually",
    "on_postgres", "run_sql", "sqlite_only", "wait_for_workers",
]

ROOT = Path(__file__).resolve().parent.parent
PYTHONPATH = (ROOT, ROOT / "tests")

# Rows of the fault-injection report, printed at the end of the test session.
FAULT_REPORT: list[dict[str, object]] = []
# Rows of the security report (tests/security): probe, expected, observed.
SECURITY_REPORT: list[dict[str, str]] = []


STORES = ("sqlite", "postgresql")
# The store of every test not marked both_stores: GPUCP_TEST_DB=postgresql runs the whole suite on PostgreSQL.
TEST_DB = os.environ.get("GPUCP_TEST_DB", "sqlite")
# A test of what only an SQLite file has (its lock file, its file modes).
sqlite_only = pytest.mark.skipif(TEST_DB != "sqlite", reason="about the SQLite file; GPUCP_TEST_DB is not sqlite")

# The database of a control plane started in a working directory: None keeps SQLite in that
# directory; conftest.py's `store_kind` fixture sets it, for a test on PostgreSQL, to a function
# giving each working directory a database of its own (the same one at every restart).
POSTGRES_DATABASE: Callable[[Path], str] | None = None


def on_postgres(db: Path | str) -> bool:
    return str(db).startswith("postgresql://")


def run_sql(db: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """Run one statement on a control plane's database, SQLite or PostgreSQL, under its API (a test
    that breaks the database, or checks what is left in it)."""
    if on_postgres(db):
        import psycopg

        with psycopg.connect(str(db), autocommit=True) as pg:
            cur = pg.execute(sql.encode())
            return cur.fetchall() if cur.description else []
    with sqlite3.connect(db) as lite:
        return lite.execute(sql).fetchall()


def _env() -> dict[str, str]:
    """The environment of a child process started by a test."""
    return testing.child_env(PYTHONPATH)


class ControlPlaneProcess(testing.ControlPlaneProcess):
    def __init__(
        self, workdir: Path, *extra: str, heartbeat_timeout: float = 2.0, env: Mapping[str, str] | None = None
    ) -> None:
        db = POSTGRES_DATABASE(workdir) if POSTGRES_DATABASE is not None else None
        super().__init__(workdir, *extra, heartbeat_timeout=heartbeat_timeout, env=env, db=db, pythonpath=PYTHONPATH)


class AgentProcess(testing.AgentProcess):
    def __init__(
        self, workdir: Path, server: str, worker_id: str, *args: str, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(workdir, server, worker_id, *args, env=env, pythonpath=PYTHONPATH)
