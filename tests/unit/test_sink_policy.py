"""The sink policies with an injected clock: backoff, rate limit, circuit breaker."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.http import retry_after_seconds
from connectors.policy import Backoff, BreakerState, CircuitBreaker, Gate, RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def state(breaker: CircuitBreaker) -> BreakerState:
    """Read afresh each time (an attribute read would stay narrowed to its last check)."""
    return breaker.state


@given(
    attempt=st.integers(min_value=1, max_value=40),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=600)),
    seed=st.integers(),
)
def test_backoff_stays_under_its_cap_and_never_under_retry_after(
    attempt: int, retry_after: float | None, seed: int
) -> None:
    backoff = Backoff(base_s=0.5, cap_s=30.0)
    delay = backoff.delay(attempt, retry_after, random.Random(seed))
    assert delay >= (retry_after or 0.0)
    assert delay <= max(min(30.0, 0.5 * 2 ** (attempt - 1)), retry_after or 0.0)


def test_backoff_ceiling_doubles_per_attempt() -> None:
    rng = random.Random(7)
    ceilings = [
        max(Backoff(1.0, 100.0).delay(n, None, rng) for _ in range(2000)) for n in (1, 2, 3)
    ]
    assert 0.95 < ceilings[0] <= 1.0
    assert 1.9 < ceilings[1] <= 2.0
    assert 3.8 < ceilings[2] <= 4.0


def test_rate_limiter_allows_the_burst_then_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=3, clock=clock, sleep=clock.sleep)

    async def take(n: int) -> None:
        for _ in range(n):
            await limiter.acquire()

    asyncio.run(take(3))
    assert clock.now == 0  # the burst is free
    asyncio.run(take(10))
    assert abs(clock.now - 1.0) < 1e-9  # then 10 a second


def test_breaker_opens_after_threshold_waits_cooldown_then_probes() -> None:
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(3, 10.0, clock=clock, sleep=clock.sleep, on_change=changes.append)

    async def scenario() -> None:
        for _ in range(3):
            assert await breaker.admit() is False
            breaker.record(False, probe=False)
        assert state(breaker) is BreakerState.OPEN
        # Paused: the next caller waits out the cooldown and goes as the probe.
        assert await breaker.admit() is True
        assert clock.now >= 10.0
        breaker.record(False, probe=True)  # still down: another cooldown
        assert state(breaker) is BreakerState.OPEN
        assert await breaker.admit() is True
        assert clock.now >= 20.0
        breaker.record(True, probe=True)
        assert state(breaker) is BreakerState.CLOSED
        assert await breaker.admit() is False

    asyncio.run(scenario())
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_breaker_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(3, 10.0)
    for ok in (False, False, True, False, False):
        breaker.record(ok, probe=False)
    assert state(breaker) is BreakerState.CLOSED


def test_gate_tells_the_breaker_and_frees_a_cancelled_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 5.0, clock=clock, sleep=clock.sleep)
    gate = Gate(RateLimiter(1000, 10, clock=clock, sleep=clock.sleep), breaker, concurrency=2)

    async def scenario() -> None:
        async with gate.call() as attempt:
            attempt.ok = False
        assert state(breaker) is BreakerState.OPEN
        # A probe that never finishes (cancelled) must not keep the breaker half-open forever.
        try:
            async with gate.call() as attempt:
                assert attempt.probe
                raise asyncio.CancelledError
        except asyncio.CancelledError:
            pass
        async with gate.call() as attempt:
            assert attempt.probe
            attempt.ok = True
        assert state(breaker) is BreakerState.CLOSED

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("-5", 0.0),
        ("inf", None),
        ("Infinity", None),
        ("nan", None),
        ("soon", None),
        ("", None),
    ],
)
def test_a_retry_after_that_is_no_wait_counts_as_absent(header: str, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


@pytest.mark.parametrize("header", ["86400", "1e9", "1e300", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_retry_after_of_a_day_or_more_waits_no_longer_than_the_cap(header: str) -> None:
    retry_after = retry_after_seconds(header, now=datetime(2026, 12, 6, tzinfo=UTC))
    backoff = Backoff(base_s=0.5, cap_s=30.0, retry_after_cap_s=600.0)
    assert backoff.delay(3, retry_after, random.Random(1)) == 600.0
