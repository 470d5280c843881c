"""TLS for the channels of clients, the CLI and agents: `--tls-ca` (or GPUCP_TLS_CA) to verify the
control plane, `--tls-cert`/`--tls-key` to present a client certificate (mTLS)."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

__all__ = ["TLS_CA_ENV", "channel_credentials", "read_pem"]

TLS_CA_ENV = "GPUCP_TLS_CA"
_MAX_PEM_BYTES = 1024 * 1024


def read_pem(value: str, flag: str) -> bytes:
    """PEM text given inline (as a pod's environment carries it) or the path of a PEM file."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        data = Path(value).read_bytes()[: _MAX_PEM_BYTES + 1]
    except OSError as exc:
        raise ValueError(f"{flag} {value}: {exc.strerror or exc}") from None
    if len(data) > _MAX_PEM_BYTES or b"-----BEGIN" not in data:
        raise ValueError(f"{flag} {value}: not a PEM file (certificate or key)")
    return data


def channel_credentials(
    ca: str | None = None, cert: str | None = None, key: str | None = None
) -> grpc.ChannelCredentials | None:
    """TLS credentials for a channel, None for plaintext (no CA given, nor $GPUCP_TLS_CA).
    ValueError names a flag that is missing its partner or a file that cannot be read."""
    ca = ca if ca is not None else os.environ.get(TLS_CA_ENV, "")
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together: give both, or neither")
    if not ca:
        if cert:
            raise ValueError(f"--tls-cert needs --tls-ca (or {TLS_CA_ENV}): the CA of the server's certificate")
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=read_pem(ca, "--tls-ca"),
        private_key=read_pem(key, "--tls-key") if key else None,
        certificate_chain=read_pem(cert, "--tls-cert") if cert else None,
    )
