"""A throwaway PostgreSQL server of Debian's packages, for tests and benches of the PostgreSQL store
(`gpucp serve --db postgresql://...`)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from gpucp.testing import eventually

__all__ = ["PostgresServer"]


class PostgresServer:
    """A PostgreSQL server of Debian's packages in a temporary directory of its own: initdb, a free
    port on 127.0.0.1, its unix socket in that directory, trust authentication (loopback only).
    `database()` makes an empty database and returns its URL for `gpucp serve --db`.

    The packages are installed with apt-get when missing (a fresh machine has none). PostgreSQL
    refuses to run as root, so as root it runs as the postgres user the packages make. `durable`
    False turns fsync off: faster for tests, which kill control planes, never the machine.
    """

    def __init__(self, *, durable: bool = True) -> None:
        self.durable = durable
        self.bin = _postgres_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="gpucp-postgres-"))
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._settings: list[str] = []

    @property
    def url(self) -> str:
        """The URL of the server's maintenance database (postgres)."""
        return f"postgresql://gpucp@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(self._as_owner(argv), capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr[-2000:]}")

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv] if os.getuid() == 0 else [
            *argv
        ]

    def start(self, timeout_s: float = 60.0) -> PostgresServer:
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run(f"{self.bin}/initdb", "-D", str(data), "-U", "gpucp", "--auth=trust", "-E", "UTF8", "--no-sync")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.dir),
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "max_connections": "200",
        }
        self._settings = [f"-c{k}={v}" for k, v in settings.items()]
        return self._launch(timeout_s)

    def _launch(self, timeout_s: float) -> PostgresServer:
        with open(self.dir / "postgres.log", "ab") as log:
            self.proc = subprocess.Popen(
                self._as_owner([f"{self.bin}/postgres", "-D", str(self.dir / "data"), *self._settings]),
                stdout=log, stderr=subprocess.STDOUT,
            )
        eventually(self._ready, timeout_s, "PostgreSQL to accept connections")
        return self

    def restart(self, timeout_s: float = 60.0) -> PostgresServer:
        """A fast shutdown (every session ends) and a start on the same data and port."""
        self._shutdown()
        return self._launch(timeout_s)

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log()}")
        return subprocess.run(
            [f"{self.bin}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port)], check=False
        ).returncode == 0

    def log(self, chars: int = 4000) -> str:
        return (self.dir / "postgres.log").read_text(errors="replace")[-chars:]

    def database(self) -> str:
        """A new empty database's URL."""
        name = f"gpucp_{uuid.uuid4().hex[:12]}"
        self._run(f"{self.bin}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "gpucp", name)
        return f"postgresql://gpucp@127.0.0.1:{self.port}/{name}"

    def drop(self, url: str) -> None:
        """Drop the database of `url` (and end its sessions)."""
        name = url.rpartition("/")[2]
        self._run(f"{self.bin}/dropdb", "--force", "-h", "127.0.0.1", "-p", str(self.port), "-U", "gpucp", name)

    def stop(self) -> None:
        """Stop the server (a fast shutdown) and delete its directory."""
        self._shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _shutdown(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _postgres_bin() -> str:
    """The bin directory of the newest PostgreSQL installed, installing Debian's when none is."""
    found = _installed()
    if not found:
        for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
            done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"PostgreSQL is not installed and `{' '.join(step)}` failed: {done.stderr[-1000:]}")
        found = _installed()
        if not found:
            raise RuntimeError("the postgresql package installed no initdb under /usr/lib/postgresql")
    return str(Path(found[-1]).parent)


def _installed() -> list[str]:
    """The initdb of each PostgreSQL version installed, oldest first."""
    return sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
