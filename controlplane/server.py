"""The control-plane process: gRPC server, health, reflection, and an orderly shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from controlplane.auth import Authority, load_authority
from controlplane.autoscaler import Autoscaler, ControlPlaneView, load_config
from controlplane.autoscaler.credentials import PodCredentials
from controlplane.config import ServerConfig
from controlplane.control import ControlPlane
from controlplane.metrics import Metrics
from controlplane.replicas import Gate, Replica
from controlplane.services import AdminService, SchedulerService, WorkersService, add_scheduler
from controlplane.store import Store, is_postgres_url, open_store
from controlplane.tracing import server_interceptors
from controlplane.web import HttpApi
from gpucp import __version__, tracing
from gpucp.auth import AGENT_TOKEN_ENV
from gpucp.limits import MAX_MESSAGE_BYTES, MAX_TASK_CONTENT_BYTES
from gpucp.tls import read_pem
from gpucp.v1 import admin_pb2, admin_pb2_grpc, scheduler_pb2, workers_pb2, workers_pb2_grpc

log = logging.getLogger("gpucp.controlplane")

SERVICES = (
    scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name,
    workers_pb2.DESCRIPTOR.services_by_name["Workers"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
)

# The event loop `run` uses: uvloop (installed with gpucp on Linux and macOS) unless this names
# asyncio's own. Every task crosses the control plane's loop several times; uvloop makes each
# crossing cheaper (README has the numbers). Agents stay on asyncio's loop: they start
# processes, and a fork by libuv runs gRPC's fork handlers, which now and then crash the child.
EVENT_LOOP_ENV = "GPUCP_EVENT_LOOP"
EVENT_LOOPS = ("uvloop", "asyncio")

# Keepalive must agree with the agents' (they ping every 10 s): a server that refuses their pings
# would close healthy streams with GOAWAY "too_many_pings".
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # grpc turns SO_REUSEPORT on by default: a second `gpucp serve` on a busy port would then
    # start, say it listens, and take part of the traffic with its own view of the fleet.
    ("grpc.so_reuseport", 0),
    # Thousands of agents reconnect at once after a restart; do not refuse them. Past the
    # pending-request limits grpc cancels new calls (defaults about 1,000 and 3,000).
    ("grpc.max_concurrent_streams", 100_000),
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 200_000),
]


@dataclass
class Running:
    """A started control plane: its server, the port it got, and how to stop it."""

    server: grpc.aio.Server
    port: int
    control: ControlPlane
    health: health.aio.HealthServicer
    store: Store
    # Who callers are, for any front end besides gRPC: authority.principal(token), then
    # controlplane.auth.authorize(principal, "admin.read").
    authority: Authority
    http: HttpApi | None = None
    http_port: int = 0
    autoscaler: Autoscaler | None = None
    # On PostgreSQL: this replica's wait to lead, then its watch over its lease.
    replica: asyncio.Task[None] | None = None
    led = False  # whether `lead` ran: a standby has loaded nothing, and has nothing to persist
    # Set once the replica leads and serves, or knows it stands by (on SQLite: at once).
    settled: asyncio.Event | None = None

    async def lead(self) -> None:
        """Load the state, place and serve (at once on SQLite; on PostgreSQL once this replica leads)."""
        await self.control.start()
        self.led = True
        await self.serving(True)
        if self.autoscaler is not None:
            await self.autoscaler.start()

    async def serving(self, yes: bool) -> None:
        """Tell health checkers and /readyz whether to send traffic here; wake placing on a renewed lease."""
        status = health_pb2.HealthCheckResponse.SERVING if yes else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await self.health.set(name, status)
        if self.http is not None:
            self.http.ready = yes
            self.http.waiting = "without its lease on the database"
        if yes:
            self.control.dispatcher.wake()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new work, tell health checkers, finish in-flight calls, persist everything."""
        self.control.accepting = False  # /readyz says 503 from here on; /healthz answers to the end
        for name in ("", *SERVICES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.replica is not None:
            self.replica.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.replica
        if self.autoscaler is not None and self.led:
            await self.autoscaler.stop()
        if self.led:
            await self.control.stop()
        await self.server.stop(grace_s)
        if self.http is not None:
            await self.http.stop()
        self.store.close()


async def start(config: ServerConfig) -> Running:
    autoscale = load_config(config.autoscale) if config.autoscale else None  # fail before binding
    if autoscale is not None and autoscale.agent_token:
        if config.agent_token and config.agent_token != autoscale.agent_token:
            raise ValueError(
                f"{config.autoscale} sets an agent_token other than {AGENT_TOKEN_ENV}: its pods would be "
                "refused; set the token in one place"
            )
        config = dataclasses.replace(config, agent_token=autoscale.agent_token)
    if config.max_payload_bytes > MAX_TASK_CONTENT_BYTES:
        raise ValueError(
            f"--max-payload {config.max_payload_bytes} is over the {MAX_TASK_CONTENT_BYTES} bytes a whole task "
            f"spec may weigh (each message is at most {MAX_MESSAGE_BYTES} bytes): give a smaller limit"
        )
    tls = server_credentials(config)
    authority = load_authority(config.auth, config.agent_token, tls=tls is not None, mtls=bool(config.tls_client_ca))
    config = with_tenant_limits(config, authority)
    if config.http:
        _http_address(config.http)  # a malformed address is named as such, before it is judged exposed
    exposed = [f"{flag} {addr}" for flag, addr in (("--listen", config.listen), ("--http", config.http))
               if addr and not is_loopback(addr)]
    if exposed and not authority.enabled:
        if not config.insecure:
            raise ValueError(
                f"{' and '.join(exposed)} reachable from other machines, and without --auth anyone there may "
                "submit, cancel and run commands on agents: give --auth FILE, listen on 127.0.0.1, "
                "or add --insecure if this network is yours alone"
            )
        log.warning(
            "INSECURE: %s without --auth: every caller that reaches the port is an admin", " and ".join(exposed)
        )
    # One socket per agent connection: take every file descriptor the system allows.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tracing.configure("gpucp-controlplane")
    # Replicas share a PostgreSQL database: this one refuses gpucp calls until it leads.
    gate = Gate() if is_postgres_url(config.db) else None
    server = grpc.aio.server(
        options=SERVER_OPTIONS, interceptors=[*([gate] if gate is not None else []), *server_interceptors()]
    )
    # The port first: a control plane that cannot listen must not open the database, which
    # the one holding the port may be using.
    port = _bind(server, config.listen, tls)
    try:
        http_sock = _bind_http(config.http) if config.http else None
    except BaseException:
        await server.stop(None)
        raise
    try:
        store = open_store(config.db, synchronous=config.db_synchronous, standby=True)
    except BaseException:
        await server.stop(None)  # unbind: a failed start leaves nothing behind
        if http_sock is not None:
            http_sock.close()
        raise
    control = ControlPlane(config, store)  # started by `lead`
    metrics = Metrics(control, authority)
    http = HttpApi(control, metrics, authority) if http_sock is not None else None
    if http is not None and http_sock is not None:
        await http.start(http_sock, http_tls(config))
    add_scheduler(SchedulerService(control, authority), server)
    workers_pb2_grpc.add_WorkersServicer_to_server(WorkersService(control, authority), server)
    admin = AdminService(control, authority)
    admin_pb2_grpc.add_AdminServicer_to_server(admin, server)
    health_servicer = health.aio.HealthServicer()
    for name in ("", *SERVICES):  # until it leads (its servicer says SERVING for "" unless told)
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    await server.start()
    http_port = http_sock.getsockname()[1] if http_sock is not None else 0
    log.info(
        "gpucp %s serving gRPC on %s (port %d, %s), HTTP %s, db %s (sync %s), %s, policy %s, priority mode %s",
        __version__, config.listen, port,
        "mTLS" if config.tls_client_ca else "TLS" if tls is not None else "plaintext",
        f"on port {http_port} of {config.http}" if http_port else "off",
        store.where, "postgresql's" if is_postgres_url(config.db) else config.db_synchronous.lower(),
        f"{len(authority.by_digest) + len(authority.by_cn)} principals from {config.auth}"
        if authority.enabled
        else "no --auth",
        config.scheduler.policy, config.scheduler.priority_mode,
    )
    running = Running(server, port, control, health_servicer, store, authority, http, http_port)
    if autoscale is not None:
        host = config.listen.rpartition(":")[0]
        # With principals, each pod gets its own credential; without, the agent token (if any).
        credentials = PodCredentials(authority, autoscale.api_key) if authority.enabled else None
        running.autoscaler = admin.autoscaler = metrics.autoscaler = Autoscaler(
            ControlPlaneView(control), autoscale, server_address=f"{host}:{port}", agent_token=config.agent_token,
            credentials=credentials,
        )
    if gate is None:
        await running.lead()
    else:
        from controlplane.pgstore import PostgresStore  # psycopg is imported only for PostgreSQL

        assert isinstance(store, PostgresStore)
        advertise = config.advertise or f"{config.listen.rpartition(':')[0]}:{port}"
        if http is not None:
            http.waiting = "a standby"
        replica = Replica(store, advertise, gate)
        running.replica = asyncio.create_task(replica.run(running.lead, running.serving), name="gpucp-replica")
        running.settled = replica.settled
    return running


def is_loopback(listen: str) -> bool:
    """Whether HOST:PORT (or a unix: socket) can only be reached from this machine."""
    if listen.startswith(("unix:", "unix-abstract:")):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # a host name: loopback only if every address it has is
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.partition("%")[0]).is_loopback for a in addresses)


def with_tenant_limits(config: ServerConfig, authority: Authority) -> ServerConfig:
    """The config with the --auth file's [tenant.NAME] weights and limits; ValueError for a
    weight also given by --tenant-weight (set it in one place)."""
    flagged = {name for name, _ in config.tenant_weights}
    both = sorted(flagged & set(authority.tenants.weights))
    if both:
        raise ValueError(f"tenant weights of {', '.join(both)} are given by --tenant-weight and by --auth: keep one")
    return dataclasses.replace(
        config,
        tenant_weights=(*config.tenant_weights, *authority.tenants.weights.items()),
        tenant_max_pending=tuple(authority.tenants.max_pending.items()),
        tenant_max_running_gpus=tuple(authority.tenants.max_running_gpus.items()),
        tenant_max_pending_bytes=tuple(authority.tenants.max_pending_bytes.items()),
        tenant_submit_rates=tuple(authority.tenants.submit_rates.items()),
    )


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS for the listening port from --tls-cert/--tls-key (and --tls-client-ca: mTLS); None: plaintext."""
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: give both, or neither")
    if not config.tls_cert:
        if config.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key: mTLS is TLS first")
        return None
    client_ca = read_pem(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(read_pem(config.tls_key, "--tls-key"), read_pem(config.tls_cert, "--tls-cert"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def http_tls(config: ServerConfig) -> ssl.SSLContext | None:
    """HTTPS for --http with the gRPC port's certificate, and mTLS when --tls-client-ca asks for it."""
    if not config.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=config.tls_client_ca)
    return context


def _http_address(listen: str) -> tuple[str, str]:
    """--http's host and port; ValueError with a sentence for anything else."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"--http {listen!r}: give HOST:PORT (e.g. 127.0.0.1:50052), or '' to turn it off")
    return host, port_text


def _bind_http(listen: str) -> socket.socket:
    """A listening socket for --http; OSError with a sentence naming the flag when it cannot be had."""
    host, port_text = _http_address(listen)
    try:
        [(family, kind, proto, _, address), *_] = socket.getaddrinfo(
            host.strip("[]") or None, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot listen on --http {listen}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                f"cannot listen on --http {listen}: port {port_text} is already in use (is another gpucp serve "
                "running?); choose another port with --http, or turn it off with --http ''"
            ) from None
        raise OSError(f"cannot listen on --http {listen}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _bind(server: grpc.aio.Server, listen: str, tls: grpc.ServerCredentials | None = None) -> int:
    """Add the listening port; raise OSError with a sentence naming it when it cannot be had."""
    try:
        port: int = server.add_secure_port(listen, tls) if tls is not None else server.add_insecure_port(listen)
        return port
    except RuntimeError:
        pass
    # grpc only says "Failed to bind": ask the system why, binding a plain socket as grpc does.
    host, _, port_text = listen.rpartition(":")
    reason = "grpc could not bind to it"
    try:
        [(family, kind, proto, _, address), *_] = socket.getaddrinfo(
            host.strip("[]") or None, int(port_text), type=socket.SOCK_STREAM
        )
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                f"cannot listen on {listen}: port {port_text} is already in use (is another gpucp serve running?); "
                "stop it or choose another port with --listen"
            ) from None
        reason = exc.strerror or str(exc)
    except ValueError:
        reason = f"{port_text!r} is not a port number"
    raise OSError(f"cannot listen on {listen}: {reason}") from None


async def serve(config: ServerConfig, *, ready_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down without losing anything accepted."""
    running = await start(config)
    if running.replica is not None and running.settled is not None:
        # The ready file tells what this replica is: written once it serves, or knows it stands by.
        settled = asyncio.ensure_future(running.settled.wait())
        await asyncio.wait({settled, running.replica}, return_when=asyncio.FIRST_COMPLETED)
        settled.cancel()
    if ready_file:
        if running.http_port:
            # Beside the ready file and before it: whoever sees the gRPC port can read this one too.
            with open(f"{ready_file}.http", "w") as f:
                f.write(str(running.http_port))
        with open(ready_file, "w") as f:
            f.write(str(running.port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    http = f", http on port {running.http_port}" if running.http_port else ""
    where = running.store.where
    print(f"gpucp control plane listening on {config.listen} (port {running.port}){http}, db {where}", flush=True)
    if running.replica is not None:  # a replica that fails to take over stops (stop() says why)
        running.replica.add_done_callback(lambda task: stop.set())
    await stop.wait()
    log.info("shutting down")
    await running.stop()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop EVENT_LOOP_ENV names (unset: uvloop if installed); None stands for asyncio's own."""
    choice = os.environ.get(EVENT_LOOP_ENV, "").strip().lower()
    if choice not in ("", *EVENT_LOOPS):
        raise ValueError(f"{EVENT_LOOP_ENV}={choice!r} is not one of {', '.join(EVENT_LOOPS)}")
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError(f"{EVENT_LOOP_ENV}=uvloop, but uvloop is not installed: pip install uvloop") from None
        return None
    return uvloop.new_event_loop


def run(config: ServerConfig, *, ready_file: str | None = None) -> None:
    """`serve` on the event loop `loop_factory` picks; returns after an orderly shutdown."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(config, ready_file=ready_file))
