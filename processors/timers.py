"""Durable per-contact timers on a worker.

The truth is the ``timers`` table (keyed by contact id, changelog-backed), so timers
survive restarts and move with their partitions on a rebalance. Each worker keeps a
``Schedule``, an in-memory index of when its own partitions' timers are due, rebuilt
from the table whenever its assignment changes.

A timer is not fired by the index. When one is due, the worker sends a due notice to
the ``timers`` topic, keyed by the contact, and the contact stage fires it in a step of
its own (streams.transactions): the firing, its outputs and the table write commit
together, and the stage ignores a notice that no longer matches the table (a
duplicate, or a timer that stopped or moved on meanwhile). A notice lost in a crash is
sent again after the restart, because the table still holds the timer: each timer fires
once, late after downtime rather than never.

Notices go through a plain idempotent producer, outside the Kafka transactions: a notice
is only a hint (the table decides), and in a transaction it would wait for the next
commit of its partition's transaction, which a quiet partition never makes."""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import astuple, dataclass
from datetime import datetime, timedelta
from typing import Any

import faust
from confluent_kafka import Producer

from processors.sla import EPOCH, to_ms
from streams import metrics
from streams.clock import Clock
from streams.kafka import producer_config
from streams.serde import AvroSerde
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DueTimer:
    contact_id: str
    key: str  # the timer id
    due_at: datetime
    level: int
    partition: int


class Schedule:
    """When this worker's timers are due, soonest first.

    A heap of (due time, contact, timer id) with lazy deletion: a timer that is
    rescheduled or discarded leaves its old heap entry behind, which is skipped when it
    surfaces because it no longer matches ``_current``."""

    def __init__(self) -> None:
        # Times are whole milliseconds since the epoch, as on Kafka.
        self._heap: list[tuple[int, str, str]] = []
        self._current: dict[tuple[str, str], tuple[int, int, int]] = {}

    def __len__(self) -> int:
        return len(self._current)

    def put(self, contact_id: str, key: str, due_at: datetime, level: int, partition: int) -> None:
        due = to_ms(due_at)
        key = sys.intern(key)  # most timer ids are a policy name: one copy each
        self._current[(contact_id, key)] = (due, level, partition)
        heapq.heappush(self._heap, (due, contact_id, key))
        # A clock restarted by every activity (at-risk: 30 days) leaves an old entry each
        # time; drop them before they outnumber the live ones.
        if len(self._heap) > 2 * len(self._current) + 1024:
            self._heapify_current()

    def discard(self, contact_id: str, key: str) -> None:
        self._current.pop((contact_id, key), None)

    def pop_due(self, now: datetime, most: int = 10_000) -> list[DueTimer]:
        """Remove and return the timers due at ``now``, soonest first, at most ``most``."""
        limit = to_ms(now)
        due: list[DueTimer] = []
        while self._heap and self._heap[0][0] <= limit and len(due) < most:
            at, contact_id, key = heapq.heappop(self._heap)
            current = self._current.get((contact_id, key))
            if current is None or current[0] != at:
                continue  # discarded or rescheduled since
            del self._current[(contact_id, key)]
            due.append(DueTimer(contact_id, key, EPOCH + timedelta(milliseconds=at), *current[1:]))
        return due

    def rebuild(self, entries: Iterable[tuple[str, str, datetime, int, int]]) -> None:
        """Replace the whole index with ``entries`` (contact, key, due, level, partition)."""
        self._current = {
            (contact_id, sys.intern(key)): (to_ms(due_at), level, partition)
            for contact_id, key, due_at, level, partition in entries
        }
        self._heapify_current()

    def keep_partitions(self, partitions: set[int]) -> None:
        self._current = {k: v for k, v in self._current.items() if v[2] in partitions}
        self._heapify_current()

    def _heapify_current(self) -> None:
        self._heap = [
            (due, contact_id, key) for (contact_id, key), (due, _, _) in self._current.items()
        ]
        heapq.heapify(self._heap)


# (contact id, timer id, due, level, partition) of each timer in a table
Entries = Iterator[tuple[str, str, datetime, int, int]]


def stored_timers(items: Iterable[tuple[str, str]], owned: set[int]) -> Entries:
    """The timers in the table's (contact id, TimerBook JSON) items on the ``owned``
    partitions. Plain JSON, not the pydantic model: a worker may hold millions."""
    for contact_id, stored in items:
        book = json.loads(stored)
        partition = book["partition"]
        if partition not in owned:
            continue  # a memory store keeps keys this worker wrote before a rebalance
        for key, timer in book["timers"].items():
            due = datetime.fromisoformat(timer["due_at"])
            yield contact_id, key, due, timer.get("level", 0), partition


class DueNotices:
    """Sends due notices to the ``timers`` topic, keyed by contact: a plain idempotent
    producer, outside the transactions (see the module's doc)."""

    def __init__(self, settings: Settings, serde: AvroSerde, clock: Clock) -> None:
        self.producer = Producer(producer_config(settings, **{"linger.ms": 5}))
        self.serde = serde
        self.clock = clock

    async def send(self, due: list[DueTimer]) -> None:
        now = self.clock.now()
        for timer in due:
            notice = {
                "timer_id": timer.key,
                "contact_id": timer.contact_id,
                "policy": timer.key.split(":", 1)[0],
                "scheduled_at": now,
                "due_at": timer.due_at,
                "escalation_level": timer.level,
                "status": "PENDING",
                "fired_at": None,
                "lateness_ms": max(to_ms(now) - to_ms(timer.due_at), 0),
                "context": {},
            }
            self.producer.produce(
                self.serde.topic, key=timer.contact_id.encode(), value=self.serde.encode(notice)
            )
        unsent = await asyncio.to_thread(self.producer.flush, 30)
        if unsent:
            raise RuntimeError(f"{unsent} due notices not acknowledged by Kafka")


def register(
    app: faust.App,
    table: Any,
    schedule: Schedule,
    clock: Clock,
    source_topic: str,
    send_due: Callable[[list[DueTimer]], Awaitable[None]],
    tick_s: float,
    stored: Callable[[Iterable[tuple[str, str]], set[int]], Entries] = stored_timers,
    kind: str = "sla",
) -> None:
    """Keep ``schedule`` in step with this worker's partitions of ``table`` (whose values
    ``stored`` reads), and send due notices (``send_due``) for timers as they fall due."""

    def owned() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == source_topic}

    @table.on_recover  # type: ignore[untyped-decorator]
    async def rebuild() -> None:
        started = asyncio.get_running_loop().time()
        schedule.rebuild(stored(table.items(), owned()))
        metrics.TIMERS_PENDING.labels(kind=kind).set(len(schedule))
        took = asyncio.get_running_loop().time() - started
        log.info("%s timer schedule rebuilt: %d pending in %.2fs", kind, len(schedule), took)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(app: faust.App, revoked: set[Any], **_: Any) -> None:
        schedule.keep_partitions(
            owned() - {tp.partition for tp in revoked if tp.topic == source_topic}
        )

    @app.task  # type: ignore[untyped-decorator]
    async def tick() -> None:
        while not app.should_stop:
            await asyncio.sleep(tick_s)
            while due := schedule.pop_due(clock.now()):
                try:
                    await send_due(due)
                except Exception:
                    log.exception("%d due notices not sent; trying again", len(due))
                    for timer in due:
                        schedule.put(*astuple(timer))
                    break
            metrics.TIMERS_PENDING.labels(kind=kind).set(len(schedule))
