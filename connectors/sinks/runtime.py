"""The delivery runtime every sink shares: consume a command topic, deliver each record to
its destination, and commit the offsets only once every record of the batch was
confirmed by its destination or dead-lettered.

- Per-contact order: a batch is delivered in waves, wave *n* holding each contact's
  *n*-th record, so a contact's commands reach the destination in topic order while
  different contacts share batch calls. A destination that applies a call in its order
  (the SQL store) gets the batch whole instead: one call, not one per wave.
- Idempotency: each record's key (``command_id``, ``notification_id``) makes a
  redelivery harmless. Destinations that can deduplicate by themselves do (upsert by
  that key); for the others the sink keeps a ledger of delivered keys and skips them.
- Retries with exponential backoff and full jitter, the destination's Retry-After as a
  floor, a rate limit, a concurrency bound and a circuit breaker per destination
  (connectors.policy). After ``max_attempts`` the record goes to the dead-letter
  topic with the destination's answer, as does a record the destination rejects.
- While a batch is in flight the consumer is paused but keeps polling, so a long outage
  does not cost the group membership."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, TypeVar

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from connectors.delivery import DeliveryError, Destination, Outcome, Rejected, Retryable
from connectors.policy import Backoff, BreakerState, CircuitBreaker, Gate, RateLimiter
from streams import metrics
from streams.dlq import message_dead_letter
from streams.kafka import arrived, commit_batch, group_consumer_config, producer_config
from streams.lag import GroupLag
from streams.serde import AvroSerde, UndecodableMessage
from streams.settings import Settings

log = logging.getLogger("switchboard.sink")
T = TypeVar("T")


class Ledger(Protocol):
    """Delivered idempotency keys, for destinations that cannot deduplicate themselves."""

    async def seen(self, keys: Sequence[str]) -> set[str]: ...

    async def record(self, keys: Sequence[str], destination: str, answer: str) -> None: ...


@dataclass(frozen=True)
class Limits:
    """How the sink treats every destination (settings: ``sink_*``)."""

    batch_size: int = 500
    max_attempts: int = 8
    max_retry_s: float = 900.0
    backoff: Backoff = field(default_factory=Backoff)
    rate_per_s: float = 50.0
    burst: int = 10
    concurrency: int = 4
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            batch_size=settings.sink_batch_size,
            max_attempts=settings.sink_max_attempts,
            max_retry_s=settings.sink_max_retry_s,
            backoff=Backoff(
                settings.sink_backoff_base_s,
                settings.sink_backoff_cap_s,
                settings.sink_retry_after_cap_s,
            ),
            rate_per_s=settings.sink_rate_per_s,
            burst=settings.sink_burst,
            concurrency=settings.sink_concurrency,
            breaker_threshold=settings.sink_breaker_threshold,
            breaker_cooldown_s=settings.sink_breaker_cooldown_s,
        )


@dataclass
class Item:
    """One consumed record on its way to a destination."""

    message: Message
    record: dict[str, Any]
    key: str  # the idempotency key
    contact: str
    attempts: int = 0
    failing_since: float | None = None  # monotonic time of its first retryable failure


@dataclass
class Sink:
    """One sink process: ``topic`` in, ``destinations`` out. ``route`` names the
    destination of a record; ``key_field`` is the record's idempotency key."""

    name: str
    settings: Settings
    serde: AvroSerde
    dead_letter_serde: AvroSerde
    dead_letter_topic: str
    destinations: Mapping[str, Destination]
    route: Callable[[dict[str, Any]], str]
    key_field: str
    limits: Limits = field(default_factory=Limits)
    ledger: Ledger | None = None
    gates: dict[str, Gate] = field(init=False, default_factory=dict)
    # Set once the group gave this sink its partitions (a rebalance takes seconds).
    assigned: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._producer = Producer(producer_config(self.settings))
        declare_destinations(self.name, list(self.destinations))
        for name in self.destinations:
            self.gates[name] = Gate(
                RateLimiter(self.limits.rate_per_s, self.limits.burst),
                CircuitBreaker(
                    self.limits.breaker_threshold,
                    self.limits.breaker_cooldown_s,
                    on_change=partial(_breaker_changed, name),
                ),
                self.limits.concurrency,
            )

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-sink-{self.name}"

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and deliver until ``stop`` is set; the batch in flight then finishes
        and commits first."""
        consumer = Consumer(group_consumer_config(self.settings, self.group_id, log_level=4))
        loop = asyncio.get_running_loop()

        def on_assign(_consumer: Consumer, _partitions: list[TopicPartition]) -> None:
            loop.call_soon_threadsafe(self.assigned.set)

        consumer.subscribe([self.serde.topic], on_assign=on_assign)
        lag = GroupLag(self.settings, self.group_id, [self.serde.topic])
        lag.start()
        log.info(
            "sink %s: consuming %s as group %s, delivering to %s",
            self.name,
            self.serde.topic,
            self.group_id,
            ", ".join(sorted(self.destinations)) or "nothing (every record is dead-lettered)",
        )
        carried: list[Message] = []
        try:
            while not stop.is_set():
                fetched = await asyncio.to_thread(self._fetch, consumer)
                messages = carried + [m for m in fetched if not _is_error(m)]
                carried = []
                if not messages:
                    continue
                started = time.perf_counter()
                delivering = asyncio.create_task(self.deliver(messages))
                if not (await asyncio.wait({delivering}, timeout=1.0))[0]:
                    # A slow batch (an outage, a backoff): paused, a poll returns nothing
                    # but keeps the group membership alive; a partition assigned meanwhile
                    # is not paused, so what it yields waits for the next batch. A quick
                    # batch is not paused: pausing drops what the consumer fetched ahead.
                    consumer.pause(consumer.assignment())
                    while not (await asyncio.wait({delivering}, timeout=1.0))[0]:
                        polled = await asyncio.to_thread(consumer.poll, 0)
                        if polled is not None and not _is_error(polled):
                            carried.append(polled)
                    consumer.resume(consumer.assignment())
                await delivering
                delivered = time.perf_counter()
                await asyncio.to_thread(commit_batch, consumer, messages)
                log.debug(
                    "batch of %d: delivered in %.1f ms, committed in %.1f ms",
                    len(messages),
                    (delivered - started) * 1000,
                    (time.perf_counter() - delivered) * 1000,
                )
        finally:
            lag.stop()
            await asyncio.to_thread(consumer.close)
            for destination in self.destinations.values():
                await destination.close()

    def _fetch(self, consumer: Consumer) -> list[Message]:
        """What has arrived, up to a batch, or else the first record within 0.5 s and
        what came with it: a quiet topic is delivered at once, a busy one in full batches."""
        return arrived(consumer, self.limits.batch_size, 0.5)

    async def deliver(self, messages: Sequence[Message]) -> None:
        """Deliver or dead-letter every message; return when each one is settled."""
        items = [item for item in map(self._decode, messages) if item is not None]
        if self.ledger is not None and items:
            ledger, keys = self.ledger, [i.key for i in items]
            done = await self._until_done("ledger lookup", lambda: ledger.seen(keys))
            # A key twice in one batch (a replay of a record still in flight) goes once:
            # the ledger learns of the first only after the batch is out.
            first = {}
            for item in items:
                if item.key in done or item.key in first:
                    metrics.SINK_DELIVERIES.labels(
                        destination=self.route(item.record), outcome="duplicate"
                    ).inc()
                else:
                    first[item.key] = item
            items = list(first.values())
        by_destination: dict[str, list[Item]] = {}
        for item in items:
            by_destination.setdefault(self.route(item.record), []).append(item)
        await asyncio.gather(
            *(self._deliver_all(name, group) for name, group in by_destination.items())
        )
        await asyncio.to_thread(self._flush_dead_letters)

    async def _deliver_all(self, name: str, items: list[Item]) -> None:
        """``items`` to destination ``name``, each contact's in their order: in calls of
        the whole batch where the destination keeps a call's order, else in waves."""
        destination = self.destinations.get(name)
        if destination is None:
            for item in items:
                self._dead_letter(item, Rejected(f"no destination {name!r} is configured"), name)
            return
        size = destination.max_batch
        if destination.in_order:
            for start in range(0, len(items), size):
                await self._deliver_to(destination, items[start : start + size])
            return
        for wave in _waves(items):
            await asyncio.gather(
                *(
                    self._deliver_to(destination, wave[start : start + size])
                    for start in range(0, len(wave), size)
                )
            )

    async def _deliver_to(self, destination: Destination, items: list[Item]) -> None:
        gate = self.gates[destination.name]
        while items:
            async with gate.call() as attempt:
                # The half-open probe risks one record, the one tried least: the others
                # wait for its answer.
                probe = min(items, key=lambda i: i.attempts) if attempt.probe else None
                calling = items if probe is None else [probe]
                started = time.monotonic()
                try:
                    records = [i.record for i in calling]
                    outcomes: list[Outcome] = await destination.deliver(records)
                    if len(outcomes) != len(calling):
                        raise Rejected(
                            f"{destination.name} answered {len(outcomes)} outcomes "
                            f"for {len(calling)} records"
                        )
                except DeliveryError as exc:
                    outcomes = [exc] * len(calling)
                attempt.ok = not any(isinstance(o, Retryable) for o in outcomes)
            metrics.SINK_CALL_SECONDS.labels(destination=destination.name).observe(
                time.monotonic() - started
            )
            delivered: list[Item] = []
            retry: list[Item] = []
            wait = 0.0
            for item, outcome in zip(calling, outcomes, strict=True):
                if not attempt.probe:  # a probe tests the destination, not the record
                    item.attempts += 1
                if outcome is None:
                    delivered.append(item)
                elif isinstance(outcome, Retryable) and self._may_retry(item):
                    retry.append(item)
                    wait = max(wait, outcome.retry_after or 0.0)
                    log.info("%s: retrying %s: %s", destination.name, item.key, outcome)
                else:
                    self._dead_letter(item, outcome, destination.name)
            if delivered:
                await self._delivered(destination.name, delivered)
            if retry:
                metrics.SINK_RETRIES.labels(destination=destination.name).inc(len(retry))
                attempts = max(i.attempts for i in retry)
                await asyncio.sleep(self.limits.backoff.delay(attempts, wait or None))
            untried = [] if probe is None else [i for i in items if i is not probe]
            # A wave's records are of distinct contacts; an in-order call is retried whole.
            items = retry + untried

    def _may_retry(self, item: Item) -> bool:
        """Within the record's budget: attempts, and time since it began to fail. Probes
        of an open breaker cost no attempt (the destination may be down: an outage delays
        records rather than dead-lettering them), so the time is what ends the wait of a
        record the destination answers "retry" for ever, and frees the batch behind it."""
        now = time.monotonic()
        if item.failing_since is None:
            item.failing_since = now
        return (
            item.attempts < self.limits.max_attempts
            and now - item.failing_since < self.limits.max_retry_s
        )

    async def _delivered(self, destination: str, items: list[Item]) -> None:
        if self.ledger is not None:
            ledger, keys = self.ledger, [i.key for i in items]
            await self._until_done(
                "ledger record", lambda: ledger.record(keys, destination, "delivered")
            )
        now = time.time()
        for item in items:
            metrics.SINK_DELIVERIES.labels(destination=destination, outcome="delivered").inc()
            _, produced_ms = item.message.timestamp()
            metrics.SINK_DELIVERY_SECONDS.labels(destination=destination).observe(
                max(now - produced_ms / 1000, 0.0)
            )

    async def _until_done(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """The ledger is not a destination: without it the sink can neither skip what it
        delivered nor remember what it just sent, so it waits for it, however long."""
        attempt = 0
        while True:
            try:
                return await call()
            except Retryable as exc:
                attempt += 1
                log.warning("%s failed (attempt %d), retrying: %s", what, attempt, exc)
                await asyncio.sleep(self.limits.backoff.delay(attempt))

    def _decode(self, message: Message) -> Item | None:
        try:
            record = self.serde.decode(message.value())
        except UndecodableMessage as exc:
            self._produce_dead_letter(message, exc, "UndecodableMessage", attempts=0)
            return None
        key = message.key()
        contact = key.decode() if key else str(record.get("contact_id") or "")
        return Item(message, record, str(record[self.key_field]), contact)

    def _dead_letter(self, item: Item, error: DeliveryError, destination: str) -> None:
        kind = "Rejected" if isinstance(error, Rejected) else "RetryBudgetExhausted"
        failing = 0.0 if item.failing_since is None else time.monotonic() - item.failing_since
        log.warning(
            "%s: dead-lettering %s after %d attempts over %.0f s: %s",
            destination,
            item.key,
            item.attempts,
            failing,
            error,
        )
        metrics.SINK_DELIVERIES.labels(destination=destination, outcome="dead_lettered").inc()
        self._produce_dead_letter(item.message, error, kind, item.attempts, destination)

    def _produce_dead_letter(
        self,
        message: Message,
        error: BaseException,
        error_type: str,
        attempts: int,
        destination: str | None = None,
    ) -> None:
        letter = message_dead_letter(
            message,
            stage=f"sink-{destination or self.name}",
            error=error,
            error_type=error_type,
            attempts=attempts,
        )
        self._producer.produce(
            self.dead_letter_topic, key=message.key(), value=self.dead_letter_serde.encode(letter)
        )

    def _flush_dead_letters(self) -> None:
        # Dead letters must be in Kafka before the offsets that they replace are committed.
        left = self._producer.flush(30)
        if left:
            raise KafkaException(f"{left} dead letters not acknowledged by Kafka in 30 s")


def declare_destinations(sink: str, destinations: list[str]) -> None:
    """Each destination's series at zero, its circuit closed."""
    outcomes = ("delivered", "duplicate", "dead_lettered")
    metrics.declare(
        metrics.SINK_DELIVERIES,
        ({"destination": d, "outcome": o} for d in destinations for o in outcomes),
    )
    named = [{"destination": d} for d in destinations]
    for metric in (metrics.SINK_RETRIES, metrics.SINK_BREAKER_OPEN, metrics.SINK_DELIVERY_SECONDS):
        metrics.declare(metric, named)
    kinds = ("Rejected", "RetryBudgetExhausted")
    metrics.declare(
        metrics.DEAD_LETTERS,
        ({"stage": f"sink-{d}", "error_type": k} for d in destinations for k in kinds),
    )
    metrics.declare(
        metrics.DEAD_LETTERS, [{"stage": f"sink-{sink}", "error_type": "UndecodableMessage"}]
    )


def _waves(items: Sequence[Item]) -> Iterator[list[Item]]:
    """Wave n holds each contact's n-th item, in topic order."""
    queues: dict[str, list[Item]] = {}
    for item in items:
        queues.setdefault(item.contact, []).append(item)
    depth = max((len(q) for q in queues.values()), default=0)
    for n in range(depth):
        yield [q[n] for q in queues.values() if len(q) > n]


def _is_error(message: Message) -> bool:
    if message.error() is None:
        return False
    log.warning("consumer: %s", message.error())
    return True


def _breaker_changed(destination: str, state: BreakerState) -> None:
    log.warning("%s: circuit %s", destination, state.value)
    metrics.SINK_BREAKER_OPEN.labels(destination=destination).set(
        0 if state is BreakerState.CLOSED else 1
    )
