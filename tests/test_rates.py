"""The per-tenant submission token bucket, on a clock the test moves."""

from __future__ import annotations

import pytest

from controlplane.errors import ResourceExhausted
from controlplane.rates import RateLimited, SubmitRates, status_details


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_holds_two_seconds_of_its_rate_and_refills_at_the_rate() -> None:
    clock = Clock()
    rates = SubmitRates({"a": 10.0}, clock)
    rates.take({"a": 20, "b": 1000})  # the burst; b has no rate
    with pytest.raises(RateLimited) as short:
        rates.take({"a": 5})
    assert short.value.retry_after_s == 0.5 and "retry in 0.500 s" in str(short.value)
    clock.now += 0.5
    rates.take({"a": 5})
    clock.now += 60  # idle time fills the bucket to its burst, no further
    rates.take({"a": 20})
    with pytest.raises(RateLimited):
        rates.take({"a": 1})


def test_a_batch_passes_for_all_its_tenants_or_takes_nothing() -> None:
    clock = Clock()
    rates = SubmitRates({"a": 1.0, "b": 1.0}, clock)
    rates.take({"b": 2})
    with pytest.raises(RateLimited):
        rates.take({"a": 1, "b": 1})  # b is short: a keeps its tokens
    rates.take({"a": 2})
    with pytest.raises(ResourceExhausted, match="more than its burst of 2"):
        rates.take({"b": 3})


def test_only_a_rate_refusal_carries_retry_info() -> None:
    [(key, value)] = status_details(RateLimited("slow down", 0.25))
    assert key == "grpc-status-details-bin" and value
    assert status_details(ResourceExhausted("full")) == ()
