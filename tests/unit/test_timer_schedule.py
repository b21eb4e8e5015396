"""The in-memory schedule of a worker's timers, and its rebuild from the timers table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from processors.sla import Timer, TimerBook
from processors.timers import Schedule, stored_timers

T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)


def test_due_timers_come_out_soonest_first_and_once() -> None:
    schedule = Schedule()
    schedule.put("c1", "first-touch", T0 + timedelta(minutes=5), 0, 0)
    schedule.put("c2", "first-touch", T0 + timedelta(minutes=1), 0, 1)
    schedule.put("c3", "stale-deal:d1", T0 + timedelta(days=7), 0, 2)
    assert schedule.pop_due(T0) == []
    due = schedule.pop_due(T0 + timedelta(minutes=5))
    assert [(d.contact_id, d.due_at) for d in due] == [
        ("c2", T0 + timedelta(minutes=1)),
        ("c1", T0 + timedelta(minutes=5)),
    ]
    assert schedule.pop_due(T0 + timedelta(minutes=5)) == []
    assert len(schedule) == 1


def test_a_rescheduled_or_discarded_timer_is_not_due_at_its_old_time() -> None:
    schedule = Schedule()
    schedule.put("c1", "first-touch", T0, 0, 0)
    schedule.put("c1", "first-touch", T0 + timedelta(minutes=10), 1, 0)  # the next step
    schedule.put("c2", "first-touch", T0, 0, 0)
    schedule.discard("c2", "first-touch")  # the awaited call came
    assert schedule.pop_due(T0 + timedelta(minutes=1)) == []
    [due] = schedule.pop_due(T0 + timedelta(minutes=10))
    assert (due.contact_id, due.level) == ("c1", 1)


def test_times_keep_the_millisecond_precision_of_kafka() -> None:
    schedule = Schedule()
    at = T0 + timedelta(milliseconds=1234)
    schedule.put("c1", "t", at, 0, 0)
    [due] = schedule.pop_due(at)
    assert due.due_at == at


def test_revoked_partitions_leave_the_schedule() -> None:
    schedule = Schedule()
    for partition in range(3):
        schedule.put(f"c{partition}", "t", T0, 0, partition)
    schedule.keep_partitions({0, 2})
    assert sorted(d.contact_id for d in schedule.pop_due(T0)) == ["c0", "c2"]


def test_the_rebuild_takes_only_the_owned_partitions_timers_from_the_table() -> None:
    def book(partition: int, *keys: str) -> str:
        timers = {
            key: Timer(
                policy=key.split(":")[0],
                subject=key.split(":")[1] if ":" in key else None,
                started_at=T0,
                breach_at=T0 + timedelta(minutes=5),
                due_at=T0 + timedelta(minutes=5, milliseconds=7),
                level=1,
                cause="e1",
            )
            for key in keys
        }
        return TimerBook(partition=partition, timers=timers).model_dump_json(exclude_defaults=True)

    contacts = [f"contact-{n}" for n in range(30)]
    items = [(c, book(n % 3, "first-touch", "stale-deal:d1")) for n, c in enumerate(contacts)]
    owned = {0, 2}
    entries = list(stored_timers(items, owned))
    expected = {c for n, c in enumerate(contacts) if n % 3 in owned}
    assert {e[0] for e in entries} == expected
    assert len(entries) == 2 * len(expected)
    assert {(e[1], e[2], e[3]) for e in entries} == {
        ("first-touch", T0 + timedelta(minutes=5, milliseconds=7), 1),
        ("stale-deal:d1", T0 + timedelta(minutes=5, milliseconds=7), 1),
    }
    schedule = Schedule()
    schedule.rebuild(entries)
    assert len(schedule) == len(entries)


def test_restarting_a_clock_again_and_again_does_not_grow_the_schedule_without_bound() -> None:
    schedule = Schedule()
    for n in range(100_000):  # an at-risk clock restarted by every activity
        schedule.put("c1", "account-at-risk", T0 + timedelta(days=30, seconds=n), 0, 0)
    assert len(schedule) == 1
    assert len(schedule._heap) <= 1024 + 3
    [due] = schedule.pop_due(T0 + timedelta(days=32))
    assert due.due_at == T0 + timedelta(days=30, seconds=99_999)
