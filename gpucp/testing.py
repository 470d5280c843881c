"""Real gpucp processes on loopback: a control plane and agents, for tests, benches and demos.

A service that submits work through `gpucp.Client` can test against the real thing:

    with LocalCluster(ControlPlaneProcess(tmp_path)) as cluster:
        cluster.add_agent("w1", "--gpus", "2xA100-80GB")
        with cluster.client() as client:
            assert client.run("noop").state == common_pb2.TASK_STATE_SUCCEEDED

Everything runs as it does in production: `gpucp serve` (on a free 127.0.0.1 port, SQLite in the
working directory) and one `python -m agents` process per worker, each logging to a file in the
working directory. Processes are reached only through their command line, gRPC and signals, so
this module imports nothing of the control plane. Every process started here is stopped here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from gpucp.client import Client

__all__ = [
    "AgentProcess",
    "ControlPlaneProcess",
    "LocalCluster",
    "child_env",
    "eventually",
    "make_pki",
    "stop_processes",
    "wait_for_workers",
]

T = TypeVar("T")
PathLike = str | Path


def eventually(check: Callable[[], T], timeout_s: float = 20.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy, and return that; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def child_env(pythonpath: Sequence[PathLike] = (), env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a gpucp child: `pythonpath` importable first, output unbuffered, plus `env`."""
    out = dict(os.environ)
    paths = [str(p) for p in pythonpath]
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    if paths:
        out["PYTHONPATH"] = os.pathsep.join(paths)
    out["PYTHONUNBUFFERED"] = "1"  # a log read after a crash shows everything up to it
    out.update(env or {})
    return out


def stop_processes(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> None:
    """SIGTERM each process still running (agents drain, the control plane flushes), then SIGKILL what is left."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for_workers(client: Client, expected: int | Collection[str], timeout_s: float = 30.0) -> None:
    """Block until the named workers are connected, or (given a number) at least that many workers."""
    if isinstance(expected, int):
        count = expected
        eventually(lambda: client.stats().workers >= count, timeout_s, f"{count} workers to register")
        return
    names = set(expected)
    eventually(lambda: names <= {w.worker_id for w in client.workers()}, timeout_s,
               f"workers {sorted(names)} to register")


class ControlPlaneProcess:
    """`gpucp serve` in a subprocess; it keeps its port across restarts so agents can come back.

    `extra` are more `gpucp serve` flags; `heartbeat_timeout` None keeps the server's default;
    `module` is run as `python -m MODULE serve` (a bench runs a variant of gpucp's entry point).
    """

    def __init__(
        self,
        workdir: Path,
        *extra: str,
        heartbeat_timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        db: Path | str | None = None,
        log_level: str = "INFO",
        pythonpath: Sequence[PathLike] = (),
        module: str = "gpucp",
    ) -> None:
        self.workdir = workdir
        self.extra = list(extra)
        self.module = module
        self.heartbeat_timeout = heartbeat_timeout
        self.env = dict(env or {})
        self.db = db or workdir / "gpucp.db"
        self.log_level = log_level
        self.pythonpath = list(pythonpath)
        self.port = 0  # 0 until the first start: the system picks a free port
        self.http_port = 0  # the HTTP listener's (a new one each start), 0 when --http '' turns it off
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The latest server process; RuntimeError before the first start."""
        if self.proc is None:
            raise RuntimeError("the control plane was never started: call start() first")
        return self.proc

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout_s: float = 60.0) -> ControlPlaneProcess:
        """Start the server and return once it serves (it has written its port to the ready file)."""
        ready = self.workdir / f"ready-{self.starts}"
        ready.unlink(missing_ok=True)  # a kept workdir may hold an earlier run's port
        Path(f"{ready}.http").unlink(missing_ok=True)
        with open(self.workdir / f"controlplane-{self.starts}.log", "wb") as log:
            self.proc = self._spawn(ready, log)
        self.starts += 1
        proc = self.proc
        deadline = time.monotonic() + timeout_s
        while not (ready.exists() and ready.read_text()):
            if proc.poll() is not None:
                raise AssertionError(f"gpucp serve exited with {proc.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"gpucp serve did not listen within {timeout_s:g} s: {self.log()}")
            time.sleep(0.05)
        self.port = int(ready.read_text())
        http = Path(f"{ready}.http")  # written before the ready file when the HTTP listener runs
        self.http_port = int(http.read_text()) if http.exists() else 0
        return self

    def _spawn(self, ready: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
        beat = ["--heartbeat-timeout", str(self.heartbeat_timeout)] if self.heartbeat_timeout is not None else []
        return subprocess.Popen(
            [
                sys.executable, "-m", self.module, "serve",
                "--listen", f"127.0.0.1:{self.port}",
                "--db", str(self.db),
                *beat,
                # A free port each: the default one would be shared by every control plane on the machine.
                "--http", "127.0.0.1:0",
                "--ready-file", str(ready),
                "--log-level", self.log_level,
                *self.extra,
            ],
            stdout=log, stderr=subprocess.STDOUT, env=child_env(self.pythonpath, self.env), cwd=self.workdir,
        )

    def log(self, chars: int = 4000) -> str:
        """The end of each start's log, oldest first."""
        logs = sorted(self.workdir.glob("controlplane-*.log"), key=lambda p: int(p.stem.rpartition("-")[2]))
        return "".join(p.read_text(errors="replace")[-chars:] for p in logs)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or say goodbye."""
        proc = self.process
        proc.kill()
        proc.wait()

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (an orderly shutdown) and its exit code; TimeoutExpired if it does not exit in time."""
        proc = self.process
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout_s)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM if it still runs, SIGKILL after timeout_s; nothing if it was never started."""
        if self.proc is not None:
            stop_processes([self.proc], timeout_s)

    def restart(self, *, kill: bool = False) -> ControlPlaneProcess:
        """Stop (SIGTERM, or SIGKILL with kill=True) and start again on the same port and database."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def client(self) -> Client:
        return Client(self.address)


class AgentProcess:
    """`python -m agents` (simulated GPUs unless told otherwise), started at once; `env` adds variables."""

    def __init__(
        self,
        workdir: Path,
        server: str,
        worker_id: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[PathLike] = (),
    ) -> None:
        self.workdir = workdir
        self.server = server
        self.worker_id = worker_id
        self.args = list(args)
        self.env = dict(env or {})
        self.pythonpath = list(pythonpath)
        self.log_path = workdir / f"agent-{worker_id}.log"  # appended to by every start of this worker
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "agents", "--server", self.server, "--worker-id", self.worker_id, *self.args],
                stdout=log, stderr=subprocess.STDOUT, env=child_env(self.pythonpath, self.env), cwd=self.workdir,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: its stream drops, its tasks are not handed back."""
        self.proc.kill()
        self.proc.wait()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def terminate(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (the agent drains: running tasks finish), SIGKILL after timeout_s."""
        stop_processes([self.proc], timeout_s)

    def stop(self) -> None:
        """SIGKILL if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def restart(self) -> AgentProcess:
        """Start the same worker again (same id, flags and log) once this process has ended or been killed."""
        self.stop()
        self.proc = self._spawn()
        return self


class LocalCluster:
    """A control plane and named agents; `with` starts the server and stops them all (agents drain first).

    Agents share the control plane's working directory, extra environment and import path.
    """

    def __init__(self, controlplane: ControlPlaneProcess) -> None:
        self.controlplane = controlplane
        self.agents: dict[str, AgentProcess] = {}

    @property
    def address(self) -> str:
        return self.controlplane.address

    def start(self) -> LocalCluster:
        self.controlplane.start()
        return self

    def add_agent(
        self, worker_id: str, *args: str, env: Mapping[str, str] | None = None, wait_s: float | None = 30.0
    ) -> AgentProcess:
        """Start an agent; with wait_s (None: do not wait), return once it has registered."""
        cp = self.controlplane
        agent = AgentProcess(cp.workdir, cp.address, worker_id, *args, env={**cp.env, **(env or {})},
                             pythonpath=cp.pythonpath)
        self.agents[worker_id] = agent
        if wait_s is not None:
            with self.client() as client:
                wait_for_workers(client, [worker_id], wait_s)
        return agent

    def client(self) -> Client:
        return self.controlplane.client()

    def close(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the agents (they drain), then the control plane; SIGKILL whatever outlives timeout_s."""
        stop_processes([a.proc for a in self.agents.values()], timeout_s)
        self.controlplane.stop(timeout_s)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def make_pki(directory: Path, clients: Sequence[str] = (), *, ca: str = "ca", hosts: Sequence[str] = ()) -> None:
    """Write a test CA (CA.pem, CA.key), a server certificate for loopback and `hosts` (IP addresses;
    server.pem/.key, when none is there yet) and a client certificate NAME.pem/.key for each of
    `clients` (its common name), all signed by that CA. Needs the cryptography package (a dev dependency)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(stem: str, cn: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None) -> tuple[
        x509.Certificate, ec.EllipticCurvePrivateKey
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer[0].subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        )
        if issuer is not None:
            names: list[x509.GeneralName] = [x509.DNSName("localhost")]
            server_hosts = hosts if stem == "server" else ()
            names += [x509.IPAddress(ipaddress.ip_address(host)) for host in ("127.0.0.1", *server_hosts)]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (directory / f"{stem}.key").write_bytes(private)
        return cert, key

    authority = issue(ca, f"gpucp test CA {ca}", None)
    if not (directory / "server.pem").exists():
        issue("server", "localhost", authority)
    for name in clients:
        issue(name, name, authority)
