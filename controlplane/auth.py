"""Who is calling and what they may do: principals from `gpucp serve --auth FILE`, and the one
place every call is checked.

Every servicer method asks `services.caller` (which reads the gRPC metadata) and any other front
end (HTTP) asks `Authority.principal(token)` then `authorize(principal, permission, tenant)`: the
rules live here and nowhere else. Without an auth file every caller is the anonymous admin (so the server must
then listen on loopback only, which `gpucp serve` enforces); GPUCP_AGENT_TOKEN, the single-token
shortcut, still guards Workers.Connect as before.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import ipaddress
import logging
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from controlplane.errors import ControlError
from gpucp.auth import AGENT_TOKEN_ENV

audit = logging.getLogger("gpucp.audit")

__all__ = [
    "ANONYMOUS",
    "ROLES",
    "Authority",
    "Denied",
    "Permission",
    "Principal",
    "Refusal",
    "TenantLimits",
    "authorize",
    "listed_tenants",
    "load_authority",
    "local_address",
    "local_peer",
    "printable",
]


class Permission(enum.StrEnum):
    """What a call needs, by name (an HTTP front end names the same ones)."""

    READ = "read"  # Get/List/Wait/Watch tasks of the caller's tenants
    SUBMIT = "submit"  # Submit/Run/Cancel in the caller's tenants
    ADMIN_READ = "admin.read"  # cluster stats, workers, costs, scaling events
    DRAIN = "drain"  # Drain/Undrain a worker
    CONNECT = "connect"  # Workers.Connect as one of the principal's worker ids


ROLES: Mapping[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "submitter": frozenset({Permission.READ, Permission.SUBMIT}),
    "operator": frozenset({Permission.READ, Permission.SUBMIT, Permission.ADMIN_READ, Permission.DRAIN}),
    "admin": frozenset(Permission),
    "agent": frozenset({Permission.CONNECT}),
}
# Roles that act in every tenant whatever their `tenants` say.
_ALL_TENANTS_ROLES = frozenset({"operator", "admin"})
_NAME = re.compile(r"[A-Za-z0-9_.:@\-]{1,128}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DEFAULT_TENANT = "default"


class Refusal(enum.StrEnum):
    """Why a credential was refused: the `reason` label of gpucp_auth_refused_total."""

    NO_CREDENTIAL = "no_credential"
    UNKNOWN_CREDENTIAL = "unknown_credential"
    PLAINTEXT = "plaintext"  # a token over plaintext from another machine
    ROLE = "role"  # the role lacks the permission
    TENANT = "tenant"  # a tenant the principal does not act in
    WORKER = "worker"  # a worker id the principal may not register as


class Denied(ControlError):
    """A call refused for who makes it: UNAUTHENTICATED (no or unknown credential) or
    PERMISSION_DENIED (a credential without the right); `reason` says which rule refused it."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: Refusal) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    tenants: tuple[str, ...] = ()  # "*" = every tenant
    workers: tuple[str, ...] = ()  # worker ids it may register as; "prefix-*" patterns

    @property
    def all_tenants(self) -> bool:
        return self.role in _ALL_TENANTS_ROLES or "*" in self.tenants

    def sees(self, tenant: str) -> bool:
        """Whether the principal may see tasks of `tenant`."""
        return self.all_tenants or tenant in self.tenants

    def tenant_for(self, asked: str) -> str:
        """The tenant a task this principal submits belongs to: `asked` if it holds it, its first
        tenant when `asked` is empty; Denied otherwise."""
        if not asked:
            return next((t for t in self.tenants if t != "*"), _DEFAULT_TENANT)
        if not self.sees(asked):
            raise Denied(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{self.name} may not submit to tenant {printable(asked, 64)}: it acts in "
                f"{', '.join(self.tenants) or 'no tenant'}; leave the tenant empty or name one of those",
                Refusal.TENANT,
            )
        return asked

    def may_be_worker(self, worker_id: str) -> bool:
        return any(
            worker_id.startswith(p[:-1]) if p.endswith("*") else worker_id == p for p in self.workers
        )


# Without an auth file: every caller may do everything, as gpucp did before it had principals.
ANONYMOUS = Principal("anonymous", "admin", ("*",), ("*",))
# GPUCP_AGENT_TOKEN's holder: any worker id, nothing else.
_SHARED_AGENT = Principal(AGENT_TOKEN_ENV, "agent", (), ("*",))


def authorize(principal: Principal, permission: Permission | str, tenant: str | None = None) -> None:
    """Raise Denied (PERMISSION_DENIED) unless `principal` holds `permission` (in `tenant`, if given)."""
    permission = Permission(permission)
    if permission not in ROLES[principal.role]:
        raise Denied(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{principal.name} is a{'n' if principal.role[0] in 'aeiou' else ''} {principal.role}, "
            f"which may not {permission.value}: ask an admin for a role that may",
            Refusal.ROLE,
        )
    if tenant is not None and not principal.sees(tenant):
        raise Denied(
            grpc.StatusCode.PERMISSION_DENIED,
            f"{principal.name} does not act in tenant {printable(tenant, 64)}",
            Refusal.TENANT,
        )


def local_peer(peer: str) -> bool:
    """Whether a gRPC peer ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:...") is this machine."""
    kind, _, address = peer.partition(":")
    if kind in ("unix", "unix-abstract"):
        return True
    return local_address(address.rpartition(":")[0])


def local_address(host: str) -> bool:
    """Whether an IP address ("127.0.0.1", "[::1]", "fe80::1%eth0") is a loopback one; for front
    ends that know their caller's address but not a gRPC peer string."""
    try:
        return ipaddress.ip_address(host.strip("[]").partition("%")[0]).is_loopback
    except ValueError:
        return False


def listed_tenants(principal: Principal, asked: str) -> tuple[str, ...]:
    """The tenants a list or watch by `principal` covers: the one asked for (Denied if it does not
    hold it), else every tenant it holds (empty: every tenant)."""
    if asked:
        authorize(principal, Permission.READ, asked)
        return (asked,)
    return () if principal.all_tenants else principal.tenants


def printable(text: str, limit: int = 128) -> str:
    """`text` quoted for a log line or an error: escapes instead of control characters (a newline
    cannot start a forged line), cut to `limit` characters."""
    cut = text[:limit]
    return repr(cut) + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class Authority:
    """Turns a bearer token into a Principal. `by_digest` maps sha256 hex digests to principals;
    empty with `enabled` False means no auth file (every caller is ANONYMOUS)."""

    by_digest: Mapping[str, Principal]
    enabled: bool
    agent_token: str = ""
    # mTLS: principals by the common name of the client certificate the server verified.
    by_cn: Mapping[str, Principal] = field(default_factory=dict)
    # Whether the server speaks TLS: without it, a token from another machine crossed the
    # network in clear text and is refused.
    tls: bool = False
    # [tenant.NAME] tables: weights, quotas and rates per tenant.
    tenants: TenantLimits = field(default_factory=lambda: TenantLimits())
    # Credentials refused since the start, by reason (gpucp_auth_refused_total).
    refused: collections.Counter[Refusal] = field(default_factory=collections.Counter)
    # Issuers of tokens made while running (the autoscaler's per-pod credentials): each turns a
    # token it made into its principal, None for any other.
    issuers: list[Callable[[str], Principal | None]] = field(default_factory=list)

    def refuse(self, denied: Denied, what: str, who: Principal | None, peer: str) -> None:
        """Count a refusal and write its audit line: what was asked, by whom, from where, why."""
        self.refused[denied.reason] += 1
        audit.warning(
            "refused %s from %s (%s): %s",
            what,
            who.name if who is not None else "an unknown caller",
            printable(peer, 64),
            denied,
        )

    def principal(
        self,
        token: str | None,
        *,
        connect: bool = False,
        cert_cn: str | None = None,
        remote: bool = False,
    ) -> Principal:
        """The principal a bearer token (None: none given) or else a verified client certificate's
        common name stands for; Denied if none.

        `connect`: the call is Workers.Connect, where GPUCP_AGENT_TOKEN is also taken and,
        without an auth file, required when it is set. `remote`: the caller is not on this
        machine (a token from it is refused over plaintext: anyone on the way has read it).
        """
        if token and remote and not self.tls:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "a token is refused over plaintext from another machine (anyone on the way could read it): "
                "serve with --tls-cert and --tls-key, and give clients and agents --tls-ca",
                Refusal.PLAINTEXT,
            )
        if not token and cert_cn is not None and cert_cn in self.by_cn:
            return self.by_cn[cert_cn]
        if token:
            # A lookup by digest: timing tells an attacker at most about digests, which they cannot
            # turn back into tokens.
            principal = self.by_digest.get(hashlib.sha256(token.encode()).hexdigest())
            if principal is not None:
                return principal
            for issuer in self.issuers:
                principal = issuer(token)
                if principal is not None:
                    return principal
            if connect and self.agent_token and hmac.compare_digest(token.encode(), self.agent_token.encode()):
                return _SHARED_AGENT
        if not self.enabled and not (connect and self.agent_token):
            return ANONYMOUS
        if connect and not self.enabled:
            # The single-token setup keeps its own sentences, which agents already print.
            if not token:
                raise Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"this control plane only takes agents that present its token: start the agent with "
                    f"{AGENT_TOKEN_ENV} set to the server's",
                    Refusal.NO_CREDENTIAL,
                )
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the agent's {AGENT_TOKEN_ENV} is not the control plane's: give it the server's token",
                Refusal.UNKNOWN_CREDENTIAL,
            )
        if not token:
            raise Denied(
                grpc.StatusCode.UNAUTHENTICATED,
                "this control plane needs a credential: set GPUCP_TOKEN (or --token-file) to your token",
                Refusal.NO_CREDENTIAL,
            )
        raise Denied(
            grpc.StatusCode.UNAUTHENTICATED,
            "the token is not one this control plane knows: check GPUCP_TOKEN, or ask an admin for one",
            Refusal.UNKNOWN_CREDENTIAL,
        )

    def from_metadata(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        *,
        connect: bool = False,
        cert_cn: str | None = None,
        remote: bool = False,
    ) -> Principal:
        """The principal of a gRPC call's `authorization: Bearer <token>` metadata (or its certificate)."""
        given = next((v for k, v in metadata or () if k == "authorization"), None)
        token = given[7:] if isinstance(given, str) and given.startswith("Bearer ") else None
        return self.principal(token, connect=connect, cert_cn=cert_cn, remote=remote)


def load_authority(path: str, agent_token: str = "", *, tls: bool = False, mtls: bool = False) -> Authority:
    """Read `gpucp serve --auth FILE` (TOML); "" = no file. ValueError names what is wrong.
    `tls`: the server speaks TLS; `mtls`: it verifies client certificates (cert_cn principals)."""
    if not path:
        return Authority({}, enabled=False, agent_token=agent_token, tls=tls)
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--auth {path}: {exc}") from None
    unknown_tables = set(data) - {"principal", "tenant"}
    if unknown_tables:
        raise ValueError(
            f"--auth {path}: unknown tables {sorted(unknown_tables)}; it has [[principal]] and [tenant.NAME]"
        )
    limits = _tenant_limits(path, data.get("tenant", {}))
    entries = data.get("principal", [])
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"--auth {path}: name at least one [[principal]] (name, token_sha256, role)")
    by_digest: dict[str, Principal] = {}
    by_cn: dict[str, Principal] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"--auth {path}: principal {i + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a table")
        unknown = set(entry) - {"name", "token_sha256", "role", "tenants", "workers", "cert_cn"}
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}")
        name, digest, role = entry.get("name"), entry.get("token_sha256"), entry.get("role")
        cert_cn = entry.get("cert_cn")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or name in names:
            raise ValueError(f"{where}: name must be unique, 1-128 letters, digits or '_.:@-'")
        if (digest is None) == (cert_cn is None):
            raise ValueError(f"{where} ({name}): give one of token_sha256 and cert_cn")
        if cert_cn is not None and not mtls:
            raise ValueError(f"{where} ({name}): cert_cn needs mTLS: serve with --tls-client-ca")
        if cert_cn is not None and (not isinstance(cert_cn, str) or not cert_cn or cert_cn in by_cn):
            raise ValueError(f"{where} ({name}): cert_cn must be a certificate's common name, one per principal")
        if cert_cn is None and (not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower())):
            raise ValueError(
                f"{where} ({name}): token_sha256 must be 64 hex digits, e.g. the output of "
                "`printf %s TOKEN | sha256sum`"
            )
        if not isinstance(role, str) or role not in ROLES:
            raise ValueError(f"{where} ({name}): role must be one of {', '.join(ROLES)}")
        tenants, workers = entry.get("tenants", []), entry.get("workers", [])
        for key, values in (("tenants", tenants), ("workers", workers)):
            if not isinstance(values, list) or not all(isinstance(v, str) and 0 < len(v) <= 128 for v in values):
                raise ValueError(f"{where} ({name}): {key} must be a list of names")
        if role in ("viewer", "submitter") and not tenants:
            raise ValueError(f"{where} ({name}): a {role} needs tenants (\"*\" for all)")
        if role == "agent" and not workers:
            raise ValueError(f"{where} ({name}): an agent needs the worker ids it may register as (workers)")
        principal = Principal(name, role, tuple(tenants), tuple(workers))
        names.add(name)
        if isinstance(cert_cn, str):
            by_cn[cert_cn] = principal
            continue
        assert isinstance(digest, str)  # checked above
        if digest.lower() in by_digest:
            raise ValueError(f"{where} ({name}) has the same token as {by_digest[digest.lower()].name}")
        by_digest[digest.lower()] = principal
    return Authority(
        by_digest,
        enabled=True,
        agent_token=agent_token,
        by_cn=by_cn,
        tls=tls,
        tenants=limits,
    )


@dataclass(frozen=True)
class TenantLimits:
    """An --auth file's [tenant.NAME] tables, by tenant name."""

    weights: Mapping[str, float] = field(default_factory=dict)
    max_pending: Mapping[str, int] = field(default_factory=dict)
    max_running_gpus: Mapping[str, int] = field(default_factory=dict)
    submit_rates: Mapping[str, float] = field(default_factory=dict)
    max_pending_bytes: Mapping[str, int] = field(default_factory=dict)


_TENANT_KEYS = ("weight", "max_pending", "max_pending_bytes", "max_running_gpus", "submit_rate")


def _tenant_limits(path: str, tables: object) -> TenantLimits:
    """[tenant.NAME] weight (> 0), max_pending (>= 1), max_pending_bytes (>= 1), max_running_gpus
    (>= 0) and submit_rate (tasks/s, > 0) from an --auth file."""
    if not isinstance(tables, dict):
        raise ValueError(f"--auth {path}: tenant must be tables such as [tenant.research]")
    weights: dict[str, float] = {}
    rates: dict[str, float] = {}
    max_pending: dict[str, int] = {}
    max_gpus: dict[str, int] = {}
    max_bytes: dict[str, int] = {}
    for name, table in tables.items():
        where = f"--auth {path}: [tenant.{name}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where} is not a table")
        unknown = set(table) - set(_TENANT_KEYS)
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; it takes {', '.join(_TENANT_KEYS)}")
        weight, rate = table.get("weight"), table.get("submit_rate")
        for key, value in (("weight", weight), ("submit_rate", rate)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf")
            ):
                raise ValueError(f"{where}: {key} must be a number > 0")
        if weight is not None:
            weights[name] = float(weight)
        if rate is not None:
            rates[name] = float(rate)
        for key, least, into, most in (
            ("max_pending", 1, max_pending, 2**63),
            ("max_pending_bytes", 1, max_bytes, 2**63),
            ("max_running_gpus", 0, max_gpus, 2**32),  # the core counts GPUs in 32 bits
        ):
            value = table.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not least <= value < most:
                raise ValueError(f"{where}: {key} must be a whole number from {least} to {most - 1}")
            into[name] = value
    return TenantLimits(weights, max_pending, max_gpus, rates, max_bytes)
