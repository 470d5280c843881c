"""The control plane's addresses and the grpc channels to them, for clients, the CLI and agents.

An address is HOST[:PORT], a grpc URI (`unix:/path`, `dns:///name:50051`), or several HOST[:PORT]
joined by commas: the replicas of one control plane. Exactly one replica serves; the others
answer health NOT_SERVING (standbys), or not at all (dead). Several addresses, and `dns:` names
(which may resolve to several), get one channel over all of them whose calls go only to a replica
whose health service says SERVING: grpc's round_robin policy with client-side health checking.
Calls move to another replica as soon as its health says it serves, with no retry code of ours.
A single HOST[:PORT] keeps grpc's default (pick_first, no health checks), as it always had.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Sequence

import grpc

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "channel_target",
    "open_aio_channel",
    "open_channel",
    "server_address",
]

log = logging.getLogger("gpucp.channels")

DEFAULT_PORT = 50051
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
# Read when no address is given, by Client(), `gpucp` commands and agents.
SERVER_ENV = "GPUCP_SERVER"
# Addresses in one list: replicas of one control plane, never a fleet of them.
MAX_ADDRESSES = 16
MAX_ADDRESS_CHARS = 4096

# grpc targets that name a transport rather than a host: passed to grpc as they are.
_TARGET_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.%]+\]|[^\[\]:]+)(?::(?P<port>[^:]*))?$")
# The empty service name is the server as a whole: a standby says NOT_SERVING there.
_FOLLOW_THE_SERVING = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}
)


def server_address(server: str | None = None) -> str:
    """The control plane's address as grpc and people read it: `server`, else $GPUCP_SERVER, else
    127.0.0.1:50051; several comma-separated HOST[:PORT] stay a comma-separated list.

    A host without a port gets port 50051 (grpc alone would use 443); a bare IPv6 address gets
    brackets. grpc URIs such as unix:/path pass unchanged. ValueError says what is wrong.
    """
    text = (server if server is not None else os.environ.get(SERVER_ENV, "")).strip() or DEFAULT_SERVER
    if len(text) > MAX_ADDRESS_CHARS:
        raise ValueError(f"server address of {len(text)} characters: give at most {MAX_ADDRESS_CHARS}")
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 1:
        return _one_address(text)
    if len(parts) > MAX_ADDRESSES:
        raise ValueError(
            f"{len(parts)} server addresses: give at most {MAX_ADDRESSES}, the replicas of one control plane"
        )
    if not all(parts):
        raise ValueError(f"server addresses {text!r}: an empty address between commas")
    if any(part.startswith(_TARGET_SCHEMES) for part in parts):
        raise ValueError(
            f"server addresses {text!r}: a list takes HOST[:PORT] entries; give a grpc URI such as "
            "dns:///name:50051 alone"
        )
    return ",".join(_one_address(part) for part in parts)


def _one_address(text: str) -> str:
    if text.startswith(_TARGET_SCHEMES):
        return text
    if text.count(":") > 1 and not text.startswith("["):
        return f"[{text}]:{DEFAULT_PORT}"  # a bare IPv6 address: its colons are not a port
    match = _HOST_PORT.match(text)
    if match is None:
        raise ValueError(f"server address {text!r}: give HOST or HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    port = match["port"]
    if port is None:
        return f"{text}:{DEFAULT_PORT}"
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"server address {text!r}: the port must be a number from 1 to 65535")
    return text


def channel_target(address: str) -> tuple[str, list[tuple[str, str]]]:
    """The grpc target for a server_address() and the channel options it needs besides the caller's.

    A list becomes one `ipv4:` (or `ipv6:`) target of every address its names resolve to now;
    a replica whose name does not resolve is left out like a dead one. Resolving blocks: an
    event loop calls this in a thread.
    """
    if address.startswith("dns:"):
        return address, [("grpc.service_config", _FOLLOW_THE_SERVING)]
    if "," not in address:
        return address, []
    endpoints = _resolve([_split(part) for part in address.split(",")])
    family = "ipv4" if any(ip.version == 4 for ip, _ in endpoints) else "ipv6"
    chosen = [f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}" for ip, port in endpoints
              if ip.version == (4 if family == "ipv4" else 6)]
    if len(chosen) < len(endpoints):
        log.warning("server addresses %s: using the %s addresses only; the others are left out", address, family)
    options = [
        ("grpc.service_config", _FOLLOW_THE_SERVING),
        # TLS checks every replica's certificate against the first name: one certificate for all.
        ("grpc.default_authority", address.split(",")[0]),
    ]
    return f"{family}:{','.join(dict.fromkeys(chosen))}", options


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _resolve(hosts: Sequence[tuple[str, int]]) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    endpoints: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = []
    for host, port in hosts:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            log.warning("server address %s:%d does not resolve (%s): left out", host, port, exc.strerror)
            continue
        endpoints.extend((ipaddress.ip_address(info[4][0]), port) for info in infos)
    if not endpoints:
        names = ", ".join(f"{host}:{port}" for host, port in hosts)
        raise ValueError(f"server addresses {names}: none of them resolves to an IP address")
    return list(dict.fromkeys(endpoints))


def open_channel(
    address: str, credentials: grpc.ChannelCredentials | None, options: Sequence[tuple[str, object]]
) -> grpc.Channel:
    """A blocking channel to the control plane at `address` (a server_address())."""
    target, extra = channel_target(address)
    merged = [*options, *extra]
    if credentials is None:
        return grpc.insecure_channel(target, options=merged)
    return grpc.secure_channel(target, credentials, options=merged)


def open_aio_channel(
    target: tuple[str, list[tuple[str, str]]], credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, object]], interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to a channel_target() (resolved beforehand, off the event loop)."""
    address, extra = target
    merged = [*options, *extra]
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=merged, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options=merged, interceptors=interceptors)
