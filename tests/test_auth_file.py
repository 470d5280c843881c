"""`gpucp serve --auth FILE`: what a file must say, and the sentence when it does not."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cluster import ROOT, _env
from controlplane.auth import ANONYMOUS, Denied, Permission, authorize, load_authority, local_peer
from controlplane.server import is_loopback

DIGEST = hashlib.sha256(b"s3cret").hexdigest()


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "auth.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "sentence"),
    [
        ("[[principal]\n", "--auth"),
        ("", "name at least one [[principal]]"),
        (f'[[principal]]\nname = "x"\ntoken_sha256 = "{DIGEST}"\nrole = "root"\n', "role must be one of viewer"),
        ('[[principal]]\nname = "x"\ntoken_sha256 = "s3cret"\nrole = "admin"\n', "token_sha256 must be 64 hex"),
        (f'[[principal]]\nname = "x"\ntoken_sha256 = "{DIGEST}"\nrole = "submitter"\n', "a submitter needs tenants"),
        (f'[[principal]]\nname = "x"\ntoken_sha256 = "{DIGEST}"\nrole = "agent"\n', "an agent needs the worker ids"),
        (f'[[principal]]\nname = "x"\ntoken_sha256 = "{DIGEST}"\nrole = "admin"\nwho = 1\n', "unknown keys ['who']"),
        (f'[[principal]]\nname = "x"\ncert_cn = "x"\ntoken_sha256 = "{DIGEST}"\nrole = "admin"\n', "give one of"),
        ('[[principal]]\nname = "x"\ncert_cn = "x"\nrole = "admin"\n', "cert_cn needs mTLS"),
        (
            f'[[principal]]\nname = "x"\ntoken_sha256 = "{DIGEST}"\nrole = "admin"\n'
            f'[[principal]]\nname = "y"\ntoken_sha256 = "{DIGEST}"\nrole = "admin"\n',
            "has the same token as x",
        ),
        ("[tenant.lab]\nsubmit_rate = 0\n", "submit_rate must be a number > 0"),
        ("[tenant.lab]\nmax_running_gpus = -1\n", "max_running_gpus must be a whole number from 0"),
        ("[tenant.lab]\nmax_running_gpus = 1.5\n", "max_running_gpus must be a whole number from 0"),
        ("[tenant.lab]\nmax_pending = 0\n", "max_pending must be a whole number from 1"),
        ("[tenant.lab]\nmax_pending_bytes = 0\n", "max_pending_bytes must be a whole number from 1"),
        ("[tenant.lab]\nweight = -1\n", "weight must be a number > 0"),
        ("[tenants]\n", "unknown tables ['tenants']"),
    ],
)
def test_a_bad_auth_file_is_refused_with_a_sentence(tmp_path: Path, text: str, sentence: str) -> None:
    with pytest.raises(ValueError, match=sentence.replace("[", r"\[").replace("]", r"\]")):
        load_authority(write(tmp_path, text))


def test_serve_with_a_bad_auth_file_exits_1_before_listening(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpucp", "serve", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "db"),
         "--auth", str(tmp_path / "missing.toml")],
        env=_env(), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert done.returncode == 1 and "--auth" in done.stderr and "missing.toml" in done.stderr, done.stderr


def test_tokens_map_to_their_principal_and_permissions_by_name(tmp_path: Path) -> None:
    authority = load_authority(
        write(tmp_path, f'[[principal]]\nname = "bot"\ntoken_sha256 = "{DIGEST}"\nrole = "viewer"\ntenants = ["a"]\n')
    )
    bot = authority.principal("s3cret")
    assert (bot.name, bot.role, bot.tenants) == ("bot", "viewer", ("a",))
    authorize(bot, "read", "a")  # what an HTTP front end calls: a permission by name
    with pytest.raises(Denied) as denied:
        authorize(bot, Permission.DRAIN)
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Denied) as unknown:
        authority.principal("guess")
    assert unknown.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert load_authority("").principal(None) is ANONYMOUS


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [("127.0.0.1:1", True), ("[::1]:1", True), ("localhost:1", True), ("0.0.0.0:1", False), ("[::]:1", False),
     ("unix:/tmp/s", True)],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


@pytest.mark.parametrize(
    ("peer", "local"),
    [("ipv4:127.0.0.1:5000", True), ("ipv6:[::1]:5000", True), ("unix:/tmp/s", True),
     ("ipv4:10.0.0.7:5000", False), ("ipv6:[2001:db8::1]:5000", False), ("ipv6:[::ffff:10.0.0.7]:1", False)],
)
def test_local_peers(peer: str, local: bool) -> None:
    assert local_peer(peer) is local
