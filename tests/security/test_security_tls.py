"""TLS and mTLS with certificates the test makes itself; a token over plaintext from another machine."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cluster import AgentProcess, ControlPlaneProcess, wait_for_workers
from gpucp import Client, GpucpError
from gpucp.testing import make_pki
from gpucp.tls import channel_credentials
from gpucp.v1 import common_pb2
from security.secured import auth_file, probe, token

S = common_pb2


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a server certificate and client certificates for "tls-box" and "ci", and a rogue CA
    with a client certificate of its own ("rogue-box")."""
    directory = tmp_path_factory.mktemp("pki")
    make_pki(directory, ["tls-box", "ci"])
    make_pki(directory, ["rogue-box"], ca="rogue-ca")
    return directory


def auth_toml(directory: Path) -> Path:
    digest = hashlib.sha256(token("admin").encode()).hexdigest()
    path = directory / "auth.toml"
    path.write_text(
        f'[[principal]]\nname = "admin"\ntoken_sha256 = "{digest}"\nrole = "admin"\n'
        '[[principal]]\nname = "tls-box"\ncert_cn = "tls-box"\nrole = "agent"\nworkers = ["tls-box"]\n'
        '[[principal]]\nname = "ci"\ncert_cn = "ci"\nrole = "submitter"\ntenants = ["ci"]\n'
    )
    return path


@pytest.fixture
def mtls(pki: Path, tmp_path: Path) -> Iterator[ControlPlaneProcess]:
    cp = ControlPlaneProcess(
        tmp_path, "--auth", str(auth_toml(tmp_path)), "--tls-cert", str(pki / "server.pem"),
        "--tls-key", str(pki / "server.key"), "--tls-client-ca", str(pki / "ca.pem"),
    ).start()
    yield cp
    cp.kill()


def as_cert(pki: Path, stem: str, ca: str = "ca") -> grpc.ChannelCredentials:
    creds = channel_credentials(str(pki / f"{ca}.pem"), str(pki / f"{stem}.pem"), str(pki / f"{stem}.key"))
    assert creds is not None
    return creds


def answer(client: Client) -> tuple[str, str]:
    """The status of an Admin call and its sentence ("" when it passed)."""
    try:
        client.stats()
    except GpucpError as exc:
        return exc.code.name, exc.message
    return "OK", ""


def outcome(client: Client) -> str:
    return answer(client)[0]


def test_mtls_names_agents_and_clients_by_their_certificates(mtls: ControlPlaneProcess, pki: Path) -> None:
    agent = AgentProcess(
        mtls.workdir, mtls.address, "tls-box", "--tls-ca", str(pki / "ca.pem"),
        "--tls-cert", str(pki / "tls-box.pem"), "--tls-key", str(pki / "tls-box.key"),
    )
    try:
        with Client(mtls.address, tls=as_cert(pki, "ci"), timeout_s=10) as ci, \
                Client(mtls.address, tls=as_cert(pki, "ci"), token=token("admin"), timeout_s=10) as admin:
            wait_for_workers(admin, ["tls-box"])
            task = ci.run("noop", "over TLS", wait_s=30)
            probe("mTLS: agent by certificate, task by a certificate's submitter", "SUCCEEDED",
                  S.TaskState.Name(task.state).removeprefix("TASK_STATE_"))
            probe("mTLS: the submitter's tenant comes from its principal", "ci", task.spec.tenant)
            probe("mTLS: a submitter certificate calling Admin", "PERMISSION_DENIED", outcome(ci))
            probe("mTLS: a certificate plus an admin token", "OK", outcome(admin))
    finally:
        agent.stop()


def test_mtls_refuses_plaintext_unknown_cas_and_no_certificate(mtls: ControlPlaneProcess, pki: Path) -> None:
    with Client(mtls.address, tls=channel_credentials(""), timeout_s=5) as plain:
        probe("plaintext client to a TLS server", "UNAVAILABLE", outcome(plain))
    with Client(mtls.address, tls=channel_credentials(str(pki / "ca.pem")), timeout_s=5) as anonymous:
        probe("TLS client without a certificate to an mTLS server", "UNAVAILABLE", outcome(anonymous))
    with Client(mtls.address, tls=as_cert(pki, "rogue-box", ca="ca"), timeout_s=5) as rogue:
        probe("client certificate from another CA", "UNAVAILABLE", outcome(rogue))
    with Client(mtls.address, tls=as_cert(pki, "ci", ca="rogue-ca"), timeout_s=5) as fooled:
        probe("server not signed by the client's CA", "UNAVAILABLE", outcome(fooled))


def _outward_address() -> str | None:
    """An address of this machine that is not loopback (None if it has none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_socket:
        try:
            probe_socket.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent, the route picks the source
            address = str(probe_socket.getsockname()[0])
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def test_a_token_over_plaintext_from_another_machine_is_refused(tmp_path: Path) -> None:
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call itself on (only loopback is up)")
    auth = auth_file(tmp_path / "auth.toml")
    # --auth lets the server listen beyond loopback (without it, that would need --insecure).
    cp = ControlPlaneProcess(tmp_path, "--listen", "0.0.0.0:0", "--auth", str(auth)).start()
    try:
        with Client(f"{outward}:{cp.port}", token=token("admin"), tls=channel_credentials(""), timeout_s=10) as far:
            code, sentence = answer(far)
        with Client(cp.address, token=token("admin"), tls=channel_credentials(""), timeout_s=10) as near:
            local, _ = answer(near)
        scrape = urllib.request.Request(f"http://127.0.0.1:{cp.http_port}/metrics",
                                        headers={"authorization": f"Bearer {token('operator')}"})
        with urllib.request.urlopen(scrape, timeout=10) as reply:
            metrics = reply.read().decode()
        log = cp.log(200_000)
    finally:
        cp.kill()
    probe("a token over plaintext from a non-loopback address", "UNAUTHENTICATED, use TLS",
          code + (", use TLS" if "serve with --tls-cert and --tls-key" in sentence else f": {sentence}"))
    probe("that refusal in /metrics (plaintext) and the log", "counted, logged",
          ("counted" if 'gpucp_auth_refused_total{reason="plaintext"} 1.0' in metrics else "not counted")
          + (", logged" if any("refused" in line and f"'ipv4:{outward}:" in line for line in log.splitlines())
             else ", not logged"))
    probe("a token over plaintext on loopback", "OK", local)


def test_a_token_over_tls_from_another_machine_is_taken(tmp_path: Path) -> None:
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call itself on (only loopback is up)")
    make_pki(tmp_path, hosts=[outward])
    auth = auth_file(tmp_path / "auth.toml")
    tls_flags = ["--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "server.key")]
    cp = ControlPlaneProcess(tmp_path, "--listen", "0.0.0.0:0", "--auth", str(auth), *tls_flags).start()
    try:
        tls = channel_credentials(str(tmp_path / "ca.pem"))
        with Client(f"{outward}:{cp.port}", token=token("admin"), tls=tls, timeout_s=10) as far:
            code, sentence = answer(far)
    finally:
        cp.kill()
    probe("a token over TLS from a non-loopback address", "OK", code + (f": {sentence}" if sentence else ""))


def test_the_http_listener_speaks_https_and_names_callers_by_their_certificates(
    mtls: ControlPlaneProcess, pki: Path
) -> None:
    url = f"https://127.0.0.1:{mtls.http_port}"

    def get(path: str, cert: str | None) -> str:
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        if cert is not None:
            context.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
        try:
            with urllib.request.urlopen(url + path, context=context, timeout=10) as reply:
                return str(reply.status)
        except urllib.error.HTTPError as exc:
            return str(exc.code)
        except (urllib.error.URLError, ssl.SSLError, ConnectionError):
            return "refused"

    probe("HTTPS tasks as the submitter's certificate", "200", get("/api/v1/tasks", "ci"))
    probe("HTTPS metrics as the submitter's certificate", "403", get("/metrics", "ci"))
    probe("HTTPS without a client certificate", "refused", get("/api/v1/tasks", None))
    probe("HTTPS with a certificate from another CA", "refused", get("/api/v1/tasks", "rogue-box"))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{mtls.http_port}/healthz", timeout=10):
            plain = "answered"
    except (urllib.error.URLError, ConnectionError):
        plain = "refused"
    probe("plain HTTP to the HTTPS listener", "refused", plain)
