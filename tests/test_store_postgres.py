"""What only a server database has: sessions that end under a running control plane, and another
control plane that takes the database meanwhile (its epoch fences the first one out)."""

from __future__ import annotations

import pytest

from cluster import ControlPlaneProcess, run_sql
from gpucp import GpucpError

pytestmark = pytest.mark.parametrize("store_kind", ["postgresql"], indirect=True)


def end_sessions(cp: ControlPlaneProcess) -> None:
    """End the control plane's sessions from the server's side, as a PostgreSQL restart would."""
    ended = run_sql(cp.db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           f" WHERE application_name LIKE 'gpucp serve pid {cp.pid} on %'")
    assert ended and all(ok for (ok,) in ended), ended


def submit(cp: ControlPlaneProcess, tenant: str) -> str | GpucpError:
    with cp.client() as client:
        try:
            return client.submit("noop", tenant=tenant)
        except GpucpError as exc:
            return exc


def test_a_control_plane_whose_sessions_end_reconnects_and_keeps_every_accepted_task(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    try:
        assert isinstance(submit(cp, "before"), str)
        end_sessions(cp)
        # The commit that finds its session gone had sent nothing: it is made again on a new one.
        accepted = [submit(cp, "after") for _ in range(3)]
        assert all(isinstance(o, str) for o in accepted), accepted
        with cp.client() as client:
            assert [t.id for t in client.list(tenant="after")] == accepted
        assert run_sql(cp.db, "SELECT COUNT(*) FROM tasks WHERE tenant = 'after'") == [(3,)]
        assert "reconnected to postgresql://" in cp.log() and cp.process.poll() is None
    finally:
        cp.kill()


def test_a_control_plane_replaced_while_disconnected_writes_nothing_and_stops(tmp_path):
    cp = ControlPlaneProcess(tmp_path).start()
    try:
        assert isinstance(submit(cp, "before"), str)
        end_sessions(cp)
        # Meanwhile another control plane took the database: it bumped the epoch (and has since gone).
        run_sql(cp.db, "UPDATE leader SET epoch = epoch + 1, holder = 'the other one'")
        refused = submit(cp, "after")
        assert isinstance(refused, GpucpError) and refused.code.name == "UNAVAILABLE", refused
        assert cp.process.wait(30) == 1, "the replaced control plane did not stop"
        log = cp.log()
        assert "gpucp: the database refused the write: this control plane was replaced (epoch" in log, log
        assert "is the other one's" in log and "Traceback" not in log, log
        assert run_sql(cp.db, "SELECT tenant FROM tasks") == [("before",)], "the replaced control plane wrote"
    finally:
        if cp.process.poll() is None:
            cp.kill()
