"""Per-pod tokens (controlplane.autoscaler.credentials): bound to one worker id, checked without
stored state, refused once revoked."""

from __future__ import annotations

from controlplane.auth import Authority, Permission, authorize
from controlplane.autoscaler.credentials import PodCredentials


def test_a_pod_token_stands_for_its_pod_only_and_survives_a_restart_but_not_a_revoke() -> None:
    authority = Authority({}, enabled=True)
    pods = PodCredentials(authority, "runpod-key")
    token = pods.token("gpucp-a100-1234")
    pending = authority.principal(token, connect=True)
    assert (pending.name, pending.role, pending.workers) == ("gpucp-a100-1234", "agent", ())
    pods.bind("gpucp-a100-1234", "pod-7")
    bound = authority.principal(token, connect=True)
    assert bound.may_be_worker("pod-7") and not bound.may_be_worker("pod-8")
    authorize(bound, Permission.CONNECT)

    # A restarted control plane (same API key) takes the same token; another key does not.
    again = Authority({}, enabled=True)
    PodCredentials(again, "runpod-key").bind("gpucp-a100-1234", "pod-7")
    assert again.principal(token, connect=True).workers == ("pod-7",)
    assert PodCredentials(Authority({}, enabled=True), "other-key").principal(token) is None

    assert pods.principal(token.replace("gpucp-a100-1234", "gpucp-a100-9999")) is None, "the name is signed"
    assert pods.principal("token-admin") is None
    pods.revoke(pod_id="pod-7")
    assert pods.principal(token) is None
