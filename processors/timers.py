"""Durable per-contact timers on a worker.

The truth is a table keyed by contact id and backed by a changelog (``timers`` for the
SLA clocks, ``workflow-runs`` for the workflows' waits), so timers survive restarts and
move with their partitions on a rebalance. Each worker keeps a ``Schedule``, an
in-memory index of when its own partitions' timers are due, rebuilt from the table
whenever its assignment changes. ``TimerTable`` keeps a table and its schedule in step;
the SLA clocks and the workflow runs are both one.

A timer is not fired by the index. When one is due, the worker sends a due notice to
the ``timers`` topic, keyed by the contact, and the contact stage fires it as a record
of its own (streams.engine): the firing, its outputs and the table write commit
together, and the stage ignores a notice that no longer matches the table (a
duplicate, or a timer that stopped or moved on meanwhile). A notice lost with an aborted
transaction or a crash is written again, because the schedule is rebuilt from the table
then: each timer fires once, late after downtime rather than never."""

from __future__ import annotations

import heapq
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, Self, TypeVar

from processors.sla import EPOCH, to_ms
from streams import metrics
from streams.clock import Clock
from streams.engine import Engine, Output
from streams.settings import Settings
from streams.tables import Parsed, Table

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
# The timers in a table's (contact id, stored JSON) items on the owned partitions.
Reader = Callable[[Iterable[tuple[str, str]], set[int]], Entries]


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


def due_notices(due: list[DueTimer], now: datetime) -> list[Output]:
    """The due notices of ``due`` timers, for the ``timers`` topic, keyed by contact."""
    return [
        (
            "timers",
            timer.contact_id,
            {
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
            },
        )
        for timer in due
    ]


def attach(
    engine: Engine,
    table: Table,
    schedule: Schedule,
    clock: Clock,
    tick_s: float,
    stored: Reader = stored_timers,
    kind: str = "sla",
) -> None:
    """Keep ``schedule`` in step with this worker's partitions of ``table`` (whose values
    ``stored`` reads), and write due notices for timers as they fall due."""

    def rebuild(partitions: set[int]) -> None:
        started = time.monotonic()
        schedule.rebuild(stored(table.items(partitions), partitions))
        metrics.TIMERS_PENDING.labels(kind=kind).set(len(schedule))
        took = time.monotonic() - started
        log.info("%s timer schedule rebuilt: %d pending in %.2fs", kind, len(schedule), took)

    def tick() -> list[Output]:
        now = clock.now()
        notices = due_notices(schedule.pop_due(now), now)
        metrics.TIMERS_PENDING.labels(kind=kind).set(len(schedule))
        return notices

    engine.on_assigned(rebuild)
    engine.every(tick_s, tick)


class Book(Protocol):
    """What a timer table keeps per contact: a pydantic model that knows its partition,
    so that a worker rebuilds its schedule without hashing keys."""

    partition: int

    @classmethod
    def model_validate_json(cls, json_data: str, /) -> Self: ...

    def model_dump_json(self, *, exclude_defaults: bool = False) -> str: ...


B = TypeVar("B", bound=Book)


def _dumped(book: Book) -> str:
    return book.model_dump_json(exclude_defaults=True)


class TimerTable(Generic[B]):
    """A table of per-contact books that hold durable timers, and this worker's schedule
    of them, kept in step: the shape the SLA clocks (processors.sla_clocks) and the
    workflow runs (processors.workflows.runs) share. A subclass says which timers its
    book holds and whether it is worth keeping; between ``load`` and ``save`` it calls
    its pure decisions (processors.sla, processors.workflows.engine)."""

    def __init__(
        self,
        runtime: Engine,
        settings: Settings,
        clock: Clock,
        table: str,
        book: type[B],
        stored: Reader,
        kind: str,
    ) -> None:
        # Each contact's book (JSON), co-partitioned with contacts.
        self.table = runtime.table(table)
        # Parsed once and dumped once per checkpoint: a contact's book is read at each of
        # its events, and written at many.
        self.books = Parsed(self.table, book.model_validate_json, _dumped)
        self.schedule = Schedule()
        self.clock = clock
        self._book = book
        # The book of a contact without one: shared like every book ``load`` hands out
        # (never changed in place), rather than one validated at each of their events.
        self._empty = book()
        attach(runtime, self.table, self.schedule, clock, settings.timer_tick_s, stored, kind)

    def timers_of(self, book: B) -> dict[str, tuple[datetime, int]]:
        """The timers ``book`` holds: timer id -> (due, level)."""
        raise NotImplementedError

    def kept(self, book: B) -> bool:
        """Whether ``book`` holds anything to keep; an empty one leaves the table."""
        raise NotImplementedError

    def load(self, contact_id: str) -> B:
        """The contact's book (shared: a new book is made by copy, never changed in place)."""
        found = self.books.get(contact_id)
        return self._empty if found is None else found

    def save(self, contact_id: str, before: B, after: B, partition: int) -> None:
        """Store ``after``, the contact's book that was ``before``, and keep the schedule
        in step: the timers it starts or moves are put, the ones it ends discarded."""
        was, now = self.timers_of(before), self.timers_of(after)
        for key, (due_at, level) in now.items():
            if was.get(key) != (due_at, level):
                self.schedule.put(contact_id, key, due_at, level, partition)
        for key in was:
            if key not in now:
                self.schedule.discard(contact_id, key)
        assert after is not self._empty  # shared by every contact without a book
        after.partition = partition
        if self.kept(after):
            self.books[contact_id] = after
        elif contact_id in self.table:
            del self.books[contact_id]

    def retire(self, contact_id: str, partition: int) -> str | None:
        """A contact merged into another: its book leaves with it (JSON, or None)."""
        book = self.load(contact_id)
        self.save(contact_id, book, self._book(), partition)
        return book.model_dump_json() if self.kept(book) else None
