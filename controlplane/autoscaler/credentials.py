"""Per-pod credentials: each pod the autoscaler creates gets a token of its own, which the
control plane takes as an agent principal that may register only as that pod's worker id (its
RunPod pod id), and which is refused once the pod is terminated. No fleet-wide secret goes into
a pod, so one pod's token cannot register as, or take over, another pod's worker.

A token names its pod and carries an HMAC of the name under a key derived from the RunPod API
key: it can go into the pod's environment before the pod exists, and a restarted control plane
checks the tokens of the pods it adopts without having stored anything. Whoever holds the API
key can read every pod's environment through RunPod anyway, so the derivation gives them
nothing they did not have.

Until the create call returns the pod id (or, after a restart, until the pod is adopted), the
pod's principal has no worker id: an agent that dials in that early is told to retry
(UNAVAILABLE), not refused for good.
"""

from __future__ import annotations

import hashlib
import hmac

from controlplane.auth import Authority, Principal

__all__ = ["TOKEN_PREFIX", "PodCredentials"]

TOKEN_PREFIX = "gpucp-pod."


class PodCredentials:
    """The tokens of one autoscaler's pods; registered with `authority` as an issuer."""

    def __init__(self, authority: Authority, api_key: str) -> None:
        self._key = hashlib.sha256(b"gpucp pod credential\0" + api_key.encode()).digest()
        self._pods: dict[str, str] = {}  # pod name -> pod id, once known
        self._names: dict[str, str] = {}  # pod id -> pod name
        self._revoked: set[str] = set()  # names of pods terminated since this process started
        authority.issuers.append(self.principal)

    def _mac(self, name: str) -> str:
        return hmac.new(self._key, name.encode(), hashlib.sha256).hexdigest()

    def token(self, name: str) -> str:
        """The token for the pod named `name` (to put in its environment when creating it)."""
        return f"{TOKEN_PREFIX}{name}.{self._mac(name)}"

    def principal(self, token: str) -> Principal | None:
        """The principal of a token this issuer made, None for any other (or a revoked one)."""
        if not token.startswith(TOKEN_PREFIX):
            return None
        name, _, mac = token.removeprefix(TOKEN_PREFIX).rpartition(".")
        if not name or name in self._revoked or not hmac.compare_digest(mac.encode(), self._mac(name).encode()):
            return None
        pod_id = self._pods.get(name)
        return Principal(name, "agent", workers=(pod_id,) if pod_id else ())

    def bind(self, name: str, pod_id: str) -> None:
        """The pod `name` is `pod_id`: its token may register as that worker id, and only that."""
        self._pods[name] = pod_id
        self._names[pod_id] = name

    def revoke(self, name: str = "", pod_id: str = "") -> None:
        """The pod is gone, or was never created: its token is refused from now on."""
        name = name or self._names.pop(pod_id, "")
        if name:
            self._pods.pop(name, None)
            self._revoked.add(name)
