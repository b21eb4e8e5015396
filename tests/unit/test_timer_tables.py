"""The timer-table adapter the SLA clocks and the workflow runs share: through a change,
a merge and a retirement, the table and the worker's schedule of it stay in step; the SLA
clocks ask only the policies an event's type names, and decide as all of them would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

from processors import sla
from processors.matching import TriggerType
from processors.sla_clocks import SlaClocks, by_event_type
from processors.state import ContactState
from streams.clock import ManualClock
from streams.engine import Engine
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings

T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
LATER = T0 + timedelta(days=30)


def clocks() -> SlaClocks:
    """The SLA clocks on a runtime that holds partition 0 in memory (no Kafka: nothing
    here is sent)."""
    settings = Settings(store="memory://")
    dead = AvroSerde(registry_client(settings.schema_registry_url), "dead_letter", "dead")
    runtime = Engine(settings, {"dead_letters": (dead.topic, dead)})
    adapter = SlaClocks(runtime, settings, sla.load_policies(), ManualClock(T0))
    adapter.table.store(0)
    adapter.table.active = {0}
    adapter.table.focus(0)
    return adapter


def book(started: datetime, *keys: str) -> sla.TimerBook:
    timers = {
        key: sla.Timer(
            policy=key,
            started_at=started,
            breach_at=started + timedelta(minutes=5),
            due_at=started + timedelta(minutes=5),
            cause=f"{key}-{started:%H%M}",
        )
        for key in keys
    }
    return sla.TimerBook(timers=timers)


def scheduled(adapter: SlaClocks) -> list[tuple[str, str, datetime]]:
    return [(d.contact_id, d.key, d.due_at) for d in adapter.schedule.pop_due(LATER)]


def test_a_saved_book_puts_its_new_timers_and_discards_the_ended_ones() -> None:
    adapter = clocks()
    first = book(T0, "first-touch", "stale-deal")
    adapter.save("c1", adapter.load("c1"), first, 0)
    after = book(T0 + timedelta(hours=1), "first-touch")  # restarted; stale-deal stopped
    adapter.save("c1", first, after, 0)
    assert adapter.load("c1") == sla.TimerBook(partition=0, timers=after.timers)
    assert scheduled(adapter) == [("c1", "first-touch", T0 + timedelta(hours=1, minutes=5))]


def test_a_retired_contact_leaves_the_table_and_the_schedule_with_its_book() -> None:
    adapter = clocks()
    adapter.save("c1", adapter.load("c1"), book(T0, "first-touch"), 0)
    stored = adapter.retire("c1", 0)
    assert stored is not None
    assert sla.TimerBook.model_validate_json(stored).timers.keys() == {"first-touch"}
    assert "c1" not in adapter.table
    assert scheduled(adapter) == []
    assert adapter.retire("c1", 0) is None  # nothing left to hand on


def test_a_merge_keeps_the_survivors_older_clock_scheduled() -> None:
    adapter = clocks()
    adapter.save("survivor", adapter.load("survivor"), book(T0, "first-touch"), 0)
    theirs = book(T0 + timedelta(minutes=1), "first-touch", "stale-deal")
    adapter.adopt("survivor", "retired", theirs.model_dump_json(), T0, 0)
    # The survivor's clock started first and stands; the retired one's other clock moves.
    assert sorted(scheduled(adapter)) == [
        ("survivor", "first-touch", T0 + timedelta(minutes=5)),
        ("survivor", "stale-deal", T0 + timedelta(minutes=6)),
    ]


def test_the_policies_an_event_type_names_decide_as_all_of_them_would() -> None:
    policies = sla.load_policies()
    named = by_event_type(policies)
    payloads: list[dict[str, Any]] = [
        {},
        {"direction": "OUTBOUND", "status": "no-answer"},
        {"direction": "OUTBOUND", "status": "completed"},
        {"activity_type": "call"},
        {"deal_id": "d1", "stage": "qualifiedtobuy"},
        {"deal_id": "d1", "stage": "closedwon"},
        {"rep_id": "rep-1", "rule": "inbound"},
    ]
    state = ContactState(contact_id="c1", band="SQL", owner_id="rep-1")
    book = sla.TimerBook()
    at = T0
    for event_type in get_args(TriggerType):  # every type, payloads that start and stop
        for payload in payloads:
            at += timedelta(minutes=1)
            event = {
                "event_id": f"e-{at:%H%M}",
                "event_type": event_type,
                "event_time": at,
                "payload": payload,
            }
            everything = sla.on_event(policies, book, state, event)
            if event_type in named:
                assert sla.on_event(named[event_type], book, state, event) == everything
            else:
                assert everything == (sla.TimerBook(timers=book.timers), [])
            book = everything[0]
    assert book.timers  # clocks ran, so stops were asked too
