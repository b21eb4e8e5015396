"""How hard a connector pushes an external system (a sink its destination, the enrichment
source its provider): backoff between attempts, a rate limit, a bound on concurrent calls
and a circuit breaker. Pure asyncio with the clock injected, so the
policies unit-test in milliseconds."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (a random wait up to base * 2^attempt, capped),
    so many sinks retrying one destination spread out instead of stampeding. A
    destination's Retry-After is a floor: it knows when it will take calls again; but a
    floor of its own (``retry_after_cap_s``), so a day or a year in it cannot put a sink
    to sleep that long."""

    base_s: float = 0.5
    cap_s: float = 30.0
    retry_after_cap_s: float = 600.0

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** max(attempt - 1, 0))
        jittered = (rng or random).uniform(0, ceiling)
        return max(jittered, min(retry_after or 0.0, self.retry_after_cap_s))


class RateLimiter:
    """A token bucket: ``rate`` calls a second on average, bursts of up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate, self.burst = rate, max(burst, 1)
        self._clock, self._sleep = clock, sleep
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
                self._at = now
                if self._tokens >= 1 - 1e-9:  # float dust must not stall the bucket
                    self._tokens = max(self._tokens - 1, 0.0)
                    return
                await self._sleep((1 - self._tokens) / self.rate)


class BreakerState(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Pauses a destination that keeps failing and lets it resume by itself.

    ``threshold`` failed calls in a row open it; while open, callers wait instead of
    calling. After ``cooldown_s`` one caller probes (half-open): success closes it,
    failure opens it for another cooldown. Waiting is not an attempt: a command is not
    dead-lettered because its destination was down (that is what the pause is for)."""

    def __init__(
        self,
        threshold: int = 5,
        cooldown_s: float = 10.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.threshold, self.cooldown_s = threshold, cooldown_s
        self._clock, self._sleep = clock, sleep
        self._on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._opened_at = 0.0
        self._probing = False

    async def admit(self) -> bool:
        """Wait until a call may go; True when this call is the half-open probe."""
        while True:
            if self.state is BreakerState.CLOSED:
                return False
            if self.state is BreakerState.OPEN:
                remaining = self._opened_at + self.cooldown_s - self._clock()
                if remaining > 0:
                    await self._sleep(min(remaining, 1.0))
                    continue
                self._set(BreakerState.HALF_OPEN)
            if not self._probing:
                self._probing = True
                return True
            await self._sleep(0.05)  # another caller is probing

    def record(self, ok: bool | None, probe: bool) -> None:
        """The outcome of an admitted call; None when it never finished (cancelled)."""
        if probe:
            self._probing = False
        if ok is None:
            return
        if ok:
            self.failures = 0
            if self.state is not BreakerState.CLOSED:
                self._set(BreakerState.CLOSED)
            return
        self.failures += 1
        if probe or (self.state is BreakerState.CLOSED and self.failures >= self.threshold):
            self._opened_at = self._clock()
            self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        self.state = state
        if self._on_change is not None:
            self._on_change(state)


@dataclass
class Attempt:
    probe: bool
    ok: bool | None = None  # the caller sets it: did the destination work?


@dataclass
class Gate:
    """Everything that stands between a sink and one destination."""

    limiter: RateLimiter
    breaker: CircuitBreaker
    concurrency: int
    _slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._slots = asyncio.Semaphore(self.concurrency)

    @asynccontextmanager
    async def call(self) -> AsyncIterator[Attempt]:
        """A call admitted by the breaker, within the concurrency bound and the rate limit.
        The caller says whether the destination worked; the breaker learns it on exit."""
        async with self._slots:
            attempt = Attempt(probe=await self.breaker.admit())
            try:
                await self.limiter.acquire()
                yield attempt
            finally:
                self.breaker.record(attempt.ok, attempt.probe)
