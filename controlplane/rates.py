"""Per-tenant submission rates ([tenant.NAME] submit_rate in the --auth file): a token bucket per
tenant whose burst is two seconds of its rate. A submission past it is refused as a whole with
RESOURCE_EXHAUSTED and the delay after which it would pass, in the sentence and as a
google.rpc.RetryInfo in the status details, so a client can wait exactly that long."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from google.protobuf.any_pb2 import Any
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

from controlplane.errors import ControlError, ResourceExhausted

__all__ = ["BURST_S", "RateLimited", "SubmitRates", "status_details"]

BURST_S = 2.0  # a bucket holds this many seconds of its rate
# The trailing metadata key gRPC clients read a google.rpc.Status (with details) from.
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class RateLimited(ResourceExhausted):
    """Refused for its rate: `retry_after_s` is when the same request would pass."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Bucket:
    rate: float  # tokens per second
    tokens: float
    at: float  # when `tokens` was counted

    @property
    def burst(self) -> float:
        return self.rate * BURST_S

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now


class SubmitRates:
    """The buckets of the tenants that have a rate; tenants without one are not limited."""

    def __init__(self, rates: Mapping[str, float], clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._buckets = {tenant: _Bucket(rate, rate * BURST_S, now) for tenant, rate in rates.items()}

    @property
    def limited(self) -> bool:
        """Whether any tenant has a rate."""
        return bool(self._buckets)

    def take(self, counts: Mapping[str, int]) -> None:
        """Take `counts[tenant]` tokens of each tenant's bucket, all or none: RateLimited (with
        the longest wait among them) when any bucket is short."""
        if not self._buckets:
            return
        now = self._clock()
        short: list[tuple[float, str]] = []
        for tenant, count in counts.items():
            bucket = self._buckets.get(tenant)
            if bucket is None:
                continue
            bucket.refill(now)
            if count > bucket.burst:
                raise ResourceExhausted(
                    f"a batch of {count} tasks for tenant {tenant} is more than its burst of {bucket.burst:g} "
                    f"(submit_rate {bucket.rate:g}/s in the --auth file): send at most {math.floor(bucket.burst)} "
                    "tasks per batch"
                )
            if bucket.tokens < count:
                short.append(((count - bucket.tokens) / bucket.rate, tenant))
        if short:
            wait_s, tenant = max(short)
            wait_s = math.ceil(wait_s * 1000) / 1000  # whole milliseconds, never early
            rate = self._buckets[tenant].rate
            raise RateLimited(
                f"tenant {tenant} submits at most {rate:g} tasks/s with a burst of {rate * BURST_S:g} "
                f"(submit_rate in the --auth file): retry in {wait_s:.3f} s",
                wait_s,
            )
        for tenant, count in counts.items():
            if tenant in self._buckets:
                self._buckets[tenant].tokens -= count


def status_details(error: ControlError) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries a refusal's google.rpc.Status, with a RetryInfo for a
    RateLimited one; none for other errors (their code and sentence say everything)."""
    if not isinstance(error, RateLimited):
        return ()
    delay = Duration()
    delay.FromNanoseconds(round(error.retry_after_s * 1e9))
    detail = Any()
    detail.Pack(RetryInfo(retry_delay=delay))
    status = Status(code=error.code.value[0], message=str(error), details=[detail])
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)
