"""The fault and fuzz trials' two setups: plain (no --auth), or with --auth, agents presenting an
agent principal's token (worker ids box-*) and clients an operator's."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from security.secured import auth_file, token


@dataclass(frozen=True)
class Setup:
    serve: tuple[str, ...] = ()  # more `gpucp serve` flags
    agent_env: dict[str, str] = field(default_factory=dict)
    client_token: str = ""


PLAIN = Setup()


def with_auth(workdir: Path) -> Setup:
    path = auth_file(workdir / "auth.toml")
    return Setup(("--auth", str(path)), {"GPUCP_TOKEN": token("agent-box")}, token("operator"))


SETUPS = {"plain": lambda workdir: PLAIN, "auth": with_auth}
