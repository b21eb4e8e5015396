"""SLA timers: the pure engine (processors/sla.py) driven by a fake clock, with the
packaged policies, and the validation of a policy file."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from processors.matching import ASSIGNED
from processors.sla import (
    DEFAULT_POLICIES,
    Firing,
    SlaPolicies,
    TimerBook,
    TimerChange,
    load_policies,
    merge_books,
    on_due,
    on_event,
)
from processors.state import ContactState
from streams.clock import ManualClock
from streams.rules import RuleFileError, load

POLICIES = load_policies()
# Business hours are 09:00-17:30 in New York, Monday to Friday.
IN_HOURS = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # Monday 10:00 in New York
AFTER_HOURS = datetime(2026, 11, 23, 23, 0, tzinfo=UTC)  # Monday 18:00 in New York
SATURDAY = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)  # Saturday 10:00 in New York
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

_ids = itertools.count(1)


def event(event_type: str, at: datetime, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{next(_ids)}-{event_type.lower()}",
        "event_type": event_type,
        "source_system": "test",
        "event_time": at,
        "received_time": at,
        "identity": {"email": "ana@example.com", "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": "c-1",
        "payload": payload,
    }


def assigned(at: datetime, rep_id: str = "rep-ana") -> dict[str, Any]:
    """The router's trigger, as the contact stage builds it."""
    return {
        "event_id": f"assigned-{rep_id}-{at.isoformat()}",
        "event_type": ASSIGNED,
        "event_time": at,
        "payload": {"rep_id": rep_id, "rule": "inbound"},
    }


def deal(at: datetime, deal_id: str, stage: str) -> dict[str, Any]:
    return event("DEAL_STAGE_CHANGED", at, deal_id=deal_id, stage=stage, pipeline="default")


def contact(**fields: Any) -> ContactState:
    return ContactState.model_validate({"contact_id": "c-1", **fields})


HOT = contact(band="SQL", owner_id="rep-ana")
WARM = contact(band="MQL", owner_id="rep-ana")
OWNED = contact(owner_id="rep-ana")
CUSTOMER = contact(lifecycle_stage="customer", owner_id="rep-ana")


@dataclass
class Worker:
    """One contact's timers as a worker keeps them: events go through ``on_event``, and
    each tick takes the step of every timer whose due time the clock has reached."""

    clock: ManualClock
    policies: SlaPolicies = POLICIES
    book: TimerBook = field(default_factory=TimerBook)

    def handle(self, state: ContactState, event: dict[str, Any]) -> list[TimerChange]:
        self.book, changes = on_event(self.policies, self.book, state, event)
        return changes

    def tick(self) -> list[Firing]:
        now = self.clock.now()
        firings = []
        for key, timer in sorted(self.book.timers.items(), key=lambda item: item[1].due_at):
            if timer.due_at <= now:
                self.book, firing = on_due(
                    self.policies, self.book, key, timer.due_at, timer.level, now
                )
                if firing is not None:
                    firings.append(firing)
        return firings

    def due_at(self, key: str) -> datetime:
        return self.book.timers[key].due_at


def started(changes: list[TimerChange]) -> dict[str, timedelta]:
    """Policy and wait (breach - start) of each clock the changes started."""
    return {
        c.timer.timer_id: c.timer.breach_at - c.timer.started_at
        for c in changes
        if c.change in ("started", "restarted")
    }


# first-touch: the clock starts on assignment, by band, shorter in business hours.


def test_a_hot_lead_assigned_in_business_hours_is_due_in_five_minutes() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    trigger = assigned(clock.now())
    [change] = worker.handle(HOT, trigger)
    assert change.change == "started"
    assert change.at == IN_HOURS
    timer = change.timer
    assert timer.policy == "first-touch-hot"
    assert timer.timer_id == "first-touch-hot"
    assert (timer.started_at, timer.breach_at) == (IN_HOURS, IN_HOURS + 5 * MINUTE)
    assert (timer.due_at, timer.level) == (IN_HOURS + 5 * MINUTE, 0)  # step 1 is at +0m
    assert (timer.owner_id, timer.cause) == ("rep-ana", trigger["event_id"])
    assert "due by 2026-11-23T15:05:00+00:00" in change.reason
    assert worker.book.timers == {"first-touch-hot": timer}


@pytest.mark.parametrize("at", [AFTER_HOURS, SATURDAY], ids=["evening", "saturday"])
def test_a_hot_lead_assigned_outside_business_hours_is_due_in_thirty_minutes(
    at: datetime,
) -> None:
    worker = Worker(ManualClock(at))
    assert started(worker.handle(HOT, assigned(at))) == {"first-touch-hot": 30 * MINUTE}


@pytest.mark.parametrize(("at", "wait"), [(IN_HOURS, HOUR), (AFTER_HOURS, 4 * HOUR)])
def test_an_mql_gets_the_ordinary_first_touch_instead(at: datetime, wait: timedelta) -> None:
    worker = Worker(ManualClock(at))
    assert started(worker.handle(WARM, assigned(at))) == {"first-touch": wait}


@pytest.mark.parametrize("band", [None, "nurture"])
def test_a_contact_without_a_hot_or_warm_band_gets_no_first_touch_clock(band: str | None) -> None:
    worker = Worker(ManualClock(IN_HOURS))
    assert worker.handle(contact(band=band, owner_id="rep-ana"), assigned(IN_HOURS)) == []
    assert worker.book.timers == {}


# Escalation: each step at its time after the breach, once, in order.


def test_first_touch_hot_escalates_step_by_step_and_the_last_step_ends_the_timer() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(HOT, assigned(clock.now()))
    clock.advance(5 * MINUTE - timedelta(milliseconds=1))
    assert worker.tick() == []  # not yet breached

    taken = []
    for _ in range(4):
        clock.set(worker.due_at("first-touch-hot"))
        [firing] = worker.tick()
        assert firing.lateness == timedelta(0)
        assert firing.timer.breach_at == IN_HOURS + 5 * MINUTE
        taken.append((clock.now() - firing.timer.breach_at, firing.level, firing.step.action))
        assert firing.final == (firing.level == 4)
    assert taken == [
        (0 * MINUTE, 1, "remind_owner"),
        (10 * MINUTE, 2, "notify_manager"),
        (20 * MINUTE, 3, "reassign"),
        (30 * MINUTE, 4, "flag_crm"),
    ]
    assert worker.book.timers == {}
    clock.advance(DAY)
    assert worker.tick() == []


def test_each_step_fires_once_however_often_its_notice_comes() -> None:
    worker = Worker(ManualClock(IN_HOURS))
    worker.handle(HOT, assigned(IN_HOURS))
    book = worker.book
    due = book.timers["first-touch-hot"].due_at
    now = due + timedelta(seconds=2)

    after, firing = on_due(POLICIES, book, "first-touch-hot", due, 0, now)
    assert firing is not None
    assert (firing.level, firing.step.action) == (1, "remind_owner")
    assert firing.timer.level == 0  # the timer as it was
    assert after.timers["first-touch-hot"].level == 1

    again, repeated = on_due(POLICIES, after, "first-touch-hot", due, 0, now)
    assert repeated is None
    assert again is after  # a duplicate notice changes nothing
    # A notice for the right time at the wrong level is stale too.
    _, wrong_level = on_due(POLICIES, after, "first-touch-hot", due, 1, now)
    assert wrong_level is None


def test_the_final_steps_notice_repeated_finds_no_timer() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(HOT, assigned(IN_HOURS))
    for _ in range(3):
        clock.set(worker.due_at("first-touch-hot"))
        worker.tick()
    last = worker.book.timers["first-touch-hot"]
    clock.set(last.due_at)
    after, firing = on_due(POLICIES, worker.book, "first-touch-hot", last.due_at, 3, clock.now())
    assert firing is not None
    assert firing.final
    assert after.timers == {}
    assert on_due(POLICIES, after, "first-touch-hot", last.due_at, 3, clock.now()) == (after, None)


def test_a_late_step_fires_once_and_the_next_keeps_its_spacing_from_the_firing() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(HOT, assigned(IN_HOURS))
    clock.advance(3 * HOUR)  # the worker was down: every step is past its schedule

    [firing] = worker.tick()
    assert (firing.level, firing.step.action) == (1, "remind_owner")
    assert firing.lateness == 3 * HOUR - 5 * MINUTE
    following = worker.book.timers["first-touch-hot"]
    assert following.level == 1
    assert following.due_at == clock.now() + 10 * MINUTE  # not breach + 10m, long gone
    assert worker.tick() == []

    clock.advance(10 * MINUTE)
    [second] = worker.tick()
    assert (second.level, second.step.action, second.lateness) == (
        2,
        "notify_manager",
        timedelta(0),
    )
    assert worker.due_at("first-touch-hot") == clock.now() + 10 * MINUTE


def test_due_times_keep_the_millisecond_precision_of_kafka() -> None:
    at = IN_HOURS + timedelta(microseconds=123_456)
    worker = Worker(ManualClock(at))
    worker.handle(HOT, assigned(at))
    assert worker.due_at("first-touch-hot") == IN_HOURS + 5 * MINUTE + timedelta(milliseconds=123)


# Stopping: the awaited activity stops the clock.


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        ("REP_ACTIVITY_LOGGED", {"activity_type": "call"}),
        ("REP_ACTIVITY_LOGGED", {"activity_type": "email"}),
        ("CALL_COMPLETED", {"direction": "OUTBOUND", "status": "completed"}),
        ("MEETING_COMPLETED", {}),
    ],
)
def test_the_awaited_activity_stops_the_first_touch_clock(
    event_type: str, payload: dict[str, str]
) -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    [start] = worker.handle(HOT, assigned(clock.now()))
    clock.advance(2 * MINUTE)
    touch = event(event_type, clock.now(), **payload)

    [change] = worker.handle(HOT, touch)
    assert (change.change, change.timer, change.at) == ("stopped", start.timer, clock.now())
    assert change.reason.endswith(f"({touch['event_id']}) stopped the clock")
    assert worker.book.timers == {}

    clock.set(start.timer.due_at)  # the notice the schedule had already sent
    assert on_due(POLICIES, worker.book, "first-touch-hot", start.timer.due_at, 0, clock.now()) == (
        worker.book,
        None,
    )
    assert worker.tick() == []


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        ("CALL_COMPLETED", {"direction": "INBOUND", "status": "completed"}),
        ("REP_ACTIVITY_LOGGED", {"activity_type": "note"}),
        ("EMAIL_OPENED", {}),
    ],
)
def test_other_activity_leaves_the_first_touch_clock_running(
    event_type: str, payload: dict[str, str]
) -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(HOT, assigned(clock.now()))
    clock.advance(MINUTE)
    assert worker.handle(HOT, event(event_type, clock.now(), **payload)) == []
    clock.advance(4 * MINUTE)
    [firing] = worker.tick()
    assert firing.step.action == "remind_owner"


def test_a_stop_event_older_than_the_clock_does_not_stop_it() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(HOT, assigned(clock.now()))
    clock.advance(MINUTE)
    # Arrives now, but the call was logged a minute before the assignment.
    earlier_call = event("REP_ACTIVITY_LOGGED", IN_HOURS - MINUTE, activity_type="call")
    assert worker.handle(HOT, earlier_call) == []
    assert "first-touch-hot" in worker.book.timers


def test_a_stop_at_the_very_instant_the_clock_started_stops_it() -> None:
    worker = Worker(ManualClock(IN_HOURS))
    worker.handle(HOT, assigned(IN_HOURS))
    call = event("CALL_COMPLETED", IN_HOURS, direction="OUTBOUND", status="completed")
    assert [c.change for c in worker.handle(HOT, call)] == ["stopped"]


# reply-response


@pytest.mark.parametrize(("at", "wait"), [(IN_HOURS, 2 * HOUR), (SATURDAY, 12 * HOUR)])
def test_a_reply_from_an_owned_contact_starts_the_response_clock(
    at: datetime, wait: timedelta
) -> None:
    worker = Worker(ManualClock(at))
    assert started(worker.handle(OWNED, event("EMAIL_REPLIED", at))) == {"reply-response": wait}


def test_a_reply_from_a_contact_without_an_owner_starts_nothing() -> None:
    worker = Worker(ManualClock(IN_HOURS))
    assert worker.handle(contact(), event("EMAIL_REPLIED", IN_HOURS)) == []
    assert worker.book.timers == {}


def test_an_email_sent_answers_the_reply() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, event("EMAIL_REPLIED", clock.now()))
    clock.advance(HOUR)
    changes = worker.handle(OWNED, event("EMAIL_SENT", clock.now()))
    assert [(c.change, c.timer.policy) for c in changes] == [("stopped", "reply-response")]
    assert worker.book.timers == {}


def test_a_second_reply_while_the_clock_runs_does_not_restart_it() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, event("EMAIL_REPLIED", clock.now()))
    first = worker.book.timers["reply-response"]
    clock.advance(HOUR)
    assert worker.handle(OWNED, event("EMAIL_REPLIED", clock.now())) == []
    assert worker.book.timers["reply-response"] == first
    clock.set(IN_HOURS + 2 * HOUR)  # due by the first reply, not the second
    [firing] = worker.tick()
    assert (firing.timer.policy, firing.level) == ("reply-response", 1)


# no-answer-follow-up


@pytest.mark.parametrize("status", ["no-answer", "busy", "voicemail"])
def test_an_unanswered_outbound_call_is_followed_up_within_a_day(status: str) -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    call = event("CALL_COMPLETED", clock.now(), direction="OUTBOUND", status=status)
    assert started(worker.handle(OWNED, call)) == {"no-answer-follow-up": DAY}

    clock.advance(3 * HOUR)
    answered = event("CALL_COMPLETED", clock.now(), direction="OUTBOUND", status="completed")
    changes = worker.handle(OWNED, answered)
    assert [(c.change, c.timer.policy) for c in changes] == [("stopped", "no-answer-follow-up")]
    assert worker.book.timers == {}


def test_an_unanswered_inbound_call_starts_no_follow_up() -> None:
    worker = Worker(ManualClock(IN_HOURS))
    call = event("CALL_COMPLETED", IN_HOURS, direction="INBOUND", status="no-answer")
    assert worker.handle(OWNED, call) == []


def test_an_unanswered_call_not_followed_up_reminds_then_tells_the_manager() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, event("CALL_COMPLETED", clock.now(), direction="OUTBOUND", status="busy"))
    clock.advance(DAY)
    [reminder] = worker.tick()
    clock.advance(DAY)
    [manager] = worker.tick()
    assert [(f.level, f.step.action, f.final) for f in (reminder, manager)] == [
        (1, "remind_owner", False),
        (2, "notify_manager", True),
    ]
    assert worker.book.timers == {}


# stale-deal: one clock per deal, as long as its stage allows.


def test_a_deal_waits_as_long_as_its_stage_allows() -> None:
    worker = Worker(ManualClock(IN_HOURS))
    [change] = worker.handle(OWNED, deal(IN_HOURS, "d1", "proposalsent"))
    timer = change.timer
    assert (change.change, timer.timer_id, timer.subject) == ("started", "stale-deal:d1", "d1")
    assert timer.breach_at == IN_HOURS + 14 * DAY
    assert timer.context == {"stage": "proposalsent"}


def test_a_stage_change_restarts_the_deal_clock_with_the_new_stages_wait() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, deal(clock.now(), "d1", "proposalsent"))
    clock.advance(3 * DAY)
    [change] = worker.handle(OWNED, deal(clock.now(), "d1", "contractsent"))
    assert change.change == "restarted"
    timer = worker.book.timers["stale-deal:d1"]
    assert (timer.started_at, timer.breach_at) == (clock.now(), clock.now() + 7 * DAY)
    assert timer.context == {"stage": "contractsent"}
    clock.advance(7 * DAY)
    [firing] = worker.tick()
    assert (firing.timer.subject, firing.step.action) == ("d1", "remind_owner")


@pytest.mark.parametrize("closed", ["closedwon", "closedlost", "closed_won", "closed_lost"])
def test_closing_the_deal_stops_its_clock(closed: str) -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, deal(clock.now(), "d1", "proposalsent"))
    clock.advance(DAY)
    changes = worker.handle(OWNED, deal(clock.now(), "d1", closed))
    assert [(c.change, c.timer.timer_id) for c in changes] == [("stopped", "stale-deal:d1")]
    assert worker.book.timers == {}


def test_two_deals_run_two_clocks() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, deal(clock.now(), "d1", "proposalsent"))
    worker.handle(OWNED, deal(clock.now(), "d2", "replied"))
    assert {k: t.breach_at - t.started_at for k, t in worker.book.timers.items()} == {
        "stale-deal:d1": 14 * DAY,
        "stale-deal:d2": 5 * DAY,
    }
    clock.advance(DAY)
    worker.handle(OWNED, deal(clock.now(), "d1", "closedwon"))
    assert list(worker.book.timers) == ["stale-deal:d2"]
    clock.set(IN_HOURS + 5 * DAY)
    [firing] = worker.tick()
    assert (firing.timer.timer_id, firing.level) == ("stale-deal:d2", 1)


def test_a_stage_the_policy_does_not_time_cancels_the_deal_clock() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, deal(clock.now(), "d1", "contacted"))
    clock.advance(DAY)
    [change] = worker.handle(OWNED, deal(clock.now(), "d1", "negotiation"))
    assert (change.change, change.timer.timer_id) == ("cancelled", "stale-deal:d1")
    assert change.reason == "stale-deal no longer applies"
    assert worker.book.timers == {}
    assert worker.handle(OWNED, deal(clock.now(), "d2", "negotiation")) == []  # never starts


def test_an_older_stage_change_arriving_late_leaves_the_newer_stages_clock() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, deal(clock.now(), "d1", "proposalsent"))
    clock.advance(HOUR)
    late = deal(IN_HOURS - DAY, "d1", "closedwon")
    assert worker.handle(OWNED, late) == []
    assert worker.book.timers["stale-deal:d1"].context == {"stage": "proposalsent"}


# account-at-risk: thirty days without activity, for customers only.


def test_a_customers_activity_starts_and_restarts_the_thirty_days() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    assert started(worker.handle(CUSTOMER, event("INVOICE_PAID", clock.now()))) == {
        "account-at-risk": 30 * DAY
    }
    clock.advance(20 * DAY)
    call = event("CALL_COMPLETED", clock.now(), direction="INBOUND", status="completed")
    [change] = worker.handle(CUSTOMER, call)
    assert change.change == "restarted"
    assert worker.book.timers["account-at-risk"].breach_at == clock.now() + 30 * DAY
    clock.advance(30 * DAY - MINUTE)
    assert worker.tick() == []
    clock.advance(MINUTE)
    [firing] = worker.tick()
    assert (firing.timer.policy, firing.step.action) == ("account-at-risk", "remind_owner")


@pytest.mark.parametrize("stage", [None, "lead", "opportunity"])
def test_a_contact_who_is_not_a_customer_is_never_at_risk(stage: str | None) -> None:
    worker = Worker(ManualClock(IN_HOURS))
    assert worker.handle(contact(lifecycle_stage=stage), event("INVOICE_PAID", IN_HOURS)) == []


def test_a_former_customer_loses_the_clock_on_the_next_activity() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(CUSTOMER, event("PAYMENT_RECEIVED", clock.now()))
    clock.advance(5 * DAY)
    former = contact(lifecycle_stage="other", owner_id="rep-ana")
    [change] = worker.handle(former, event("MEETING_BOOKED", clock.now()))
    assert (change.change, change.timer.policy) == ("cancelled", "account-at-risk")
    assert change.reason == "account-at-risk no longer applies"
    assert worker.book.timers == {}


def test_a_late_arriving_older_activity_does_not_pull_the_at_risk_breach_earlier() -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(CUSTOMER, event("INVOICE_PAID", clock.now()))
    clock.advance(HOUR)
    late = event("PAYMENT_RECEIVED", IN_HOURS - 10 * DAY)
    worker.handle(CUSTOMER, late)
    assert worker.book.timers["account-at-risk"].breach_at == IN_HOURS + 30 * DAY


# Policies change under running timers.


REPLY_ONLY = """\
version: 1
policies:
  - name: reply-response
    kind: response
    description: Answer replies.
    starts_on: [{event: EMAIL_REPLIED}]
    when: {has_owner: true}
    stops_on: [{event: EMAIL_SENT}]
    due: {within: 2h}
    escalations:
      - {after: 0m, action: remind_owner}
"""


def test_a_policy_removed_since_the_clock_started_drops_its_timer_without_firing(
    tmp_path: Path,
) -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(HOT, assigned(clock.now()))
    worker.handle(HOT, event("EMAIL_REPLIED", clock.now()))
    assert set(worker.book.timers) == {"first-touch-hot", "reply-response"}

    path = tmp_path / "sla.yaml"
    path.write_text(REPLY_ONLY)
    worker.policies = load(path, SlaPolicies)  # redeployed without first-touch-hot
    clock.advance(5 * MINUTE)
    due = worker.due_at("first-touch-hot")
    after, firing = on_due(worker.policies, worker.book, "first-touch-hot", due, 0, clock.now())
    assert firing is None
    assert set(after.timers) == {"reply-response"}


def test_a_running_timer_follows_the_current_files_escalations(tmp_path: Path) -> None:
    clock = ManualClock(IN_HOURS)
    worker = Worker(clock)
    worker.handle(OWNED, event("EMAIL_REPLIED", clock.now()))
    path = tmp_path / "sla.yaml"
    path.write_text(REPLY_ONLY)  # one step only now, where the packaged file has three
    worker.policies = load(path, SlaPolicies)
    clock.advance(2 * HOUR)
    [firing] = worker.tick()
    assert (firing.level, firing.step.action, firing.final) == (1, "remind_owner", True)
    assert worker.book.timers == {}


# The policy file: the packaged one loads, and each mistake names its line and field.


def test_the_packaged_policies_load() -> None:
    policies = load(DEFAULT_POLICIES, SlaPolicies)
    assert [p.name for p in policies.policies] == [
        "first-touch-hot",
        "first-touch",
        "reply-response",
        "no-answer-follow-up",
        "stale-deal",
        "account-at-risk",
    ]
    assert policies.business_hours.timezone == "America/New_York"
    hot = policies.policy("first-touch-hot")
    assert hot is not None
    assert (hot.due.within, hot.due.outside_hours) == (5 * MINUTE, 30 * MINUTE)
    assert [s.after for s in hot.escalations] == [0 * MINUTE, 10 * MINUTE, 20 * MINUTE, 30 * MINUTE]
    stale = policies.policy("stale-deal")
    assert stale is not None
    assert stale.per_deal
    assert stale.due.by_stage["proposalsent"] == 14 * DAY
    assert policies.policy("no-such-policy") is None


BASE = """\
version: 1
policies:
  - name: follow
    kind: follow_up
    description: Follow up.
    starts_on: [{event: EMAIL_REPLIED}]
    due: {within: 1d}
    escalations:
      - {after: 0m, action: remind_owner}
      - {after: 1h, action: notify_manager}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sla.yaml"
    path.write_text(text)
    return path


def test_the_small_base_file_loads(tmp_path: Path) -> None:
    policies = load(write(tmp_path, BASE), SlaPolicies)
    assert [p.name for p in policies.policies] == ["follow"]


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        (
            "after: 1h",
            "after: 0m",
            ":3: field policies.0: escalations must be in order of `after`, "
            "each later than the last",
        ),
        (
            "action: notify_manager}",
            "action: notify_manager, channel: SLACK}",
            ":10: field policies.0.escalations.1: give both channel and recipient, or neither",
        ),
        (
            "action: notify_manager}",
            "action: reassign, channel: SLACK, recipient: '#sales'}",
            ":10: field policies.0.escalations.1: reassign sends no notification: "
            "remove channel and recipient",
        ),
        (
            "{within: 1d}",
            "{by_stage: {new: 7d}}",
            ":3: field policies.0: by_stage is for stale_deal policies",
        ),
        (
            "kind: follow_up",
            "kind: stale_deal",
            ":3: field policies.0: a stale_deal policy starts and stops on DEAL_STAGE_CHANGED only",
        ),
        (
            "within: 1d",
            "within: 1 day",
            ":7: field policies.0.due.within: '1 day' is not a duration",
        ),
        (
            "{within: 1d}",
            "{outside_hours: 4h}",
            ":7: field policies.0.due: give within, by_stage, or both",
        ),
        (
            "    due:",
            "    restrat: true\n    due:",
            ":7: field policies.0.restrat: Extra inputs are not permitted "
            "(remove it, or check its spelling)",
        ),
        (
            "remind_owner}",
            "remind_ownr}",
            ":9: field policies.0.escalations.0.action: Input should be 'remind_owner'",
        ),
        (
            "name: follow",
            "name: Follow Up",
            ":3: field policies.0.name: String should match pattern",
        ),
        (
            "version: 1\n",
            "version: 1\nbusiness_hours: {timezone: America/New_Yrok}\n",
            ":2: field business_hours.timezone: unknown time zone 'America/New_Yrok' "
            "(use an IANA name like Europe/Lisbon)",
        ),
    ],
    ids=[
        "escalations-out-of-order",
        "channel-without-recipient",
        "channel-on-reassign",
        "by-stage-on-follow-up",
        "stale-deal-on-another-event",
        "bad-duration",
        "outside-hours-alone",
        "unknown-key",
        "unknown-action",
        "bad-name",
        "unknown-time-zone",
    ],
)
def test_a_mistake_in_the_policy_file_names_its_line_and_field(
    tmp_path: Path, old: str, new: str, error: str
) -> None:
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(RuleFileError) as caught:
        load(path, SlaPolicies)
    assert f"{path}{error}" in str(caught.value)


def test_duplicate_policy_names_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + BASE.split("policies:\n", 1)[1])
    with pytest.raises(RuleFileError) as caught:
        load(path, SlaPolicies)
    assert str(caught.value) == (
        f"{path}:2: field policies: policy names must be unique; repeated: follow"
    )


def test_an_unknown_event_type_names_its_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("EMAIL_REPLIED", "EMAIL_REPLYED"))
    with pytest.raises(RuleFileError) as caught:
        load(path, SlaPolicies)
    assert f"{path}:6: field policies.0.starts_on.0.event" in str(caught.value)
    assert "'EMAIL_REPLIED'" in str(caught.value)
    assert "'ASSIGNED'" in str(caught.value)


def test_an_unknown_event_type_is_one_error_on_the_event_field(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("EMAIL_REPLIED", "EMAIL_REPLYED"))
    with pytest.raises(RuleFileError) as caught:
        load(path, SlaPolicies)
    lines = str(caught.value).splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}:6: field policies.0.starts_on.0.event: Input should be ")


def test_a_duration_too_large_is_a_rule_file_error(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("within: 1d", "within: 9999999999d"))
    with pytest.raises(RuleFileError, match=r":7: field policies\.0\.due\.within"):
        load(path, SlaPolicies)


# merges: the survivor takes over the retired contact's clocks.


def test_the_survivor_of_a_merge_takes_over_the_retired_contacts_clocks() -> None:
    survivor, retired = Worker(ManualClock(IN_HOURS)), Worker(ManualClock(IN_HOURS))
    survivor.handle(OWNED, deal(IN_HOURS, "d1", "proposalsent"))
    retired.handle(HOT, assigned(IN_HOURS - 2 * MINUTE))
    retired.handle(OWNED, deal(IN_HOURS, "d2", "contractsent"))
    book, adopted, dropped = merge_books(survivor.book, retired.book)
    assert sorted(book.timers) == ["first-touch-hot", "stale-deal:d1", "stale-deal:d2"]
    assert sorted(t.timer_id for t in adopted) == ["first-touch-hot", "stale-deal:d2"]
    assert dropped == []
    # The adopted clock keeps its own start and due time: the person has waited that long.
    assert book.timers["first-touch-hot"] == retired.book.timers["first-touch-hot"]


@pytest.mark.parametrize("survivor_first", [True, False])
def test_where_both_run_the_same_clock_the_one_that_started_first_stands(
    survivor_first: bool,
) -> None:
    early, late = IN_HOURS - 3 * MINUTE, IN_HOURS
    survivor, retired = Worker(ManualClock(IN_HOURS)), Worker(ManualClock(IN_HOURS))
    survivor.handle(HOT, assigned(early if survivor_first else late))
    retired.handle(HOT, assigned(late if survivor_first else early))
    book, adopted, dropped = merge_books(survivor.book, retired.book)
    assert book.timers["first-touch-hot"].started_at == early
    assert [t.started_at for t in dropped] == [late]
    assert [t.started_at for t in adopted] == ([] if survivor_first else [early])
