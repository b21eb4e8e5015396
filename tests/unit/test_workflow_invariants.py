"""Properties of the workflow engine over random event timelines (hypothesis): never two
concurrent runs of one workflow for a contact, never more sends than the cap, every run
ends in a declared exit state or waits on a timer, no message sent twice (even with
duplicate events and due notices), the same timeline gives the same decisions, and no
contact moves back along the lifecycle stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.contact import advance
from processors.pipeline import load_rules as load_pipeline
from processors.scoring import load_model
from processors.state import Consent, ContactState, Deal
from processors.workflows.definitions import BUILTIN_EXITS, Workflow
from processors.workflows.effects import Audit, Effect, Message, Upsert
from processors.workflows.engine import Engine
from processors.workflows.library import Library, load_library
from processors.workflows.policies import Policies
from processors.workflows.runbook import RunBook

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
MODEL = load_model()
PIPELINE = load_pipeline()


def workflow(text: str) -> Workflow:
    return Workflow.model_validate(yaml.safe_load(text))


# A tight library: two workflows of one group on the same trigger, caps of one a day, quiet
# hours, a hand-off, and a stage move that would go backwards.
TIGHT_FLOWS = [
    """
name: first
version: 1
purpose: The higher-priority sequence of the group.
owner: ops@example.com
trigger: {event: FORM_SUBMITTED}
entry: {everyone: true}
reentry: after_exit
group: g
priority: 20
goal: {events: [{event: MEETING_BOOKED}], exit: won}
steps:
  - {id: hello, send: {channel: EMAIL, template: t1}}
  - id: listen
    wait_for: [{event: EMAIL_REPLIED, goto: won}]
    timeout: 1d
    on_timeout: again
  - {id: again, send: {channel: EMAIL, template: t2}}
  - {id: out, exit: quiet}
  - {id: won, exit: won}
exits:
  won: {tag: won, lifecycle_stage: opportunity}
  quiet: {tag: quiet}
""",
    """
name: second
version: 1
purpose: The lower-priority sequence of the group.
owner: ops@example.com
trigger: {event: FORM_SUBMITTED}
entry: {everyone: true}
reentry: 2h
group: g
priority: 10
goal: {events: [{event: MEETING_BOOKED}], exit: done}
steps:
  - {id: text, send: {channel: SMS, template: t3}}
  - {id: pause, wait: 2h}
  - {id: mail, send: {channel: EMAIL, template: t4}}
  - {id: done, exit: done}
exits:
  done: {tag: second-done}
""",
    """
name: caller
version: 1
purpose: A call makes a lead, then a customer, then hands off.
owner: ops@example.com
trigger: {event: CALL_COMPLETED}
entry: {everyone: true}
reentry: after_exit
goal: {state: {has_tag: [won]}, exit: done}
steps:
  - {id: text, send: {channel: SMS, template: t5}}
  - {id: lead, update: {lifecycle_stage: lead}}
  - {id: morning, wait_until: {time: "09:00"}}
  - {id: mail, send: {channel: EMAIL, template: t6}}
  - {id: done, exit: done}
exits:
  done: {lifecycle_stage: customer, hand_off: booker}
""",
    """
name: booker
version: 1
purpose: Tries to move the contact back to a lead, which it must not do.
owner: ops@example.com
trigger: {event: MEETING_BOOKED}
entry: {everyone: true}
reentry: after_exit
goal: {events: [{event: PAYMENT_RECEIVED}], exit: paid}
steps:
  - {id: back, update: {lifecycle_stage: salesqualifiedlead}}
  - {id: wait-pay, wait_for: [{event: PAYMENT_RECEIVED, goto: paid}], timeout: 3d, on_timeout: lost}
  - {id: lost, exit: lost}
  - {id: paid, exit: paid}
exits:
  paid: {tag: paid, lifecycle_stage: customer}
  lost: {tag: lost}
""",
]
TIGHT = Library(
    Policies.model_validate(
        {
            "timezone": "America/New_York",
            "quiet_hours": {"start": "21:00", "end": "08:00"},
            "frequency_caps": {"EMAIL": {"max": 1, "per": "1d"}, "SMS": {"max": 1, "per": "1d"}},
        }
    ),
    {w.name: {1: w} for w in map(workflow, TIGHT_FLOWS)},
)
PACKAGED = load_library()


def event(kind: str, **payload: Any) -> tuple[str, dict[str, Any]]:
    return kind, payload


EVENTS = [
    event("FORM_SUBMITTED", form_id="f", fields={}),
    event("CALL_COMPLETED", direction="INBOUND", status="no-answer"),
    event("CALL_COMPLETED", direction="INBOUND", status="completed"),
    event("CALL_COMPLETED", direction="INBOUND", status="completed", outcome="qualified"),
    event("CALL_COMPLETED", direction="OUTBOUND", status="completed", outcome="not_interested"),
    event("EMAIL_REPLIED", message_id="m", snippet="sounds good"),
    event("EMAIL_REPLIED", message_id="m", snippet="not interested"),
    event("EMAIL_REPLIED", message_id="m", snippet="poor work"),
    event("EMAIL_UNSUBSCRIBED", message_id="m", list_id="l"),
    event("MEETING_BOOKED", meeting_id="mt"),
    event("MEETING_CANCELLED", meeting_id="mt", cancelled_by="contact"),
    event("MEETING_COMPLETED", meeting_id="mt"),
    event("PAYMENT_RECEIVED", payment_id="p", amount_minor=100, currency="USD"),
    event("JOB_STATUS_CHANGED", job_id="j", job_type="boiler_installation", status="completed"),
    event("SLA_BREACHED", policy="stale-deal", level="1", deal_id="d-1"),
    event("CONTACT_UPDATED", properties={"lifecyclestage": "lead"}, previous={}),
]
GAPS = [timedelta(minutes=m) for m in (1, 30, 120, 600, 1440, 3000)]


@st.composite
def contacts(draw: st.DrawFn) -> ContactState:
    identifiers = []
    if draw(st.booleans()):
        identifiers.append("email:ana@example.com")
    if draw(st.booleans()):
        identifiers.append("phone:+15550100")
    zone = draw(st.sampled_from([None, "Europe/Lisbon", "Asia/Tokyo", "Not/AZone"]))
    deals = {"d-1": Deal(deal_id="d-1", stage="new", updated_at=T0)} if draw(st.booleans()) else {}
    return ContactState(
        contact_id="c-1",
        identifiers=identifiers,
        profile={"first_name": "Ana", **({"timezone": zone} if zone else {})},
        lifecycle_stage=draw(st.sampled_from([None, "lead", "salesqualifiedlead", "customer"])),
        owner_id="rep-1",
        owner_email=draw(st.sampled_from([None, "jordan@example.com"])),
        manager_email="maria@example.com",
        open_deals=deals,
        consent=Consent(email_opt_out=draw(st.booleans()), sms_opt_out=draw(st.booleans())),
    )


@st.composite
def timelines(draw: st.DrawFn) -> list[dict[str, Any]]:
    at = T0 + draw(st.sampled_from([timedelta(0), timedelta(hours=8)]))  # 10:00 or 18:00 NY
    events: list[dict[str, Any]] = []
    for n in range(draw(st.integers(1, 25))):
        at += draw(st.sampled_from(GAPS))
        if events and draw(st.integers(0, 9)) == 0:  # a redelivery: same id, later
            events.append({**draw(st.sampled_from(events)), "received_time": at})
            continue
        kind, payload = draw(st.sampled_from(EVENTS))
        events.append(
            {
                "event_id": f"e-{n}",
                "event_type": kind,
                "source_system": "test",
                "event_time": at,
                "received_time": at,
                "identity": {},
                "contact_id": None,
                "payload": payload,
            }
        )
    return events


@dataclass
class Call:
    now: datetime
    before: RunBook
    after: RunBook
    stage_before: str | None
    effects: list[Effect]
    duplicate: bool  # a due notice delivered a second time


@dataclass
class Trace:
    calls: list[Call] = field(default_factory=list)

    def effects(self) -> list[Effect]:
        return [e for c in self.calls for e in c.effects]


def drive(
    library: Library, state: ContactState, events: list[dict[str, Any]], late: timedelta
) -> Trace:
    """As the worker does: waits fire (each notice twice: a duplicate) before each event;
    an event already seen does not reach the engine."""
    engine = Engine(library, PIPELINE)
    trace = Trace()
    book = RunBook()

    def record(now: datetime, outcome: Any, duplicate: bool = False) -> None:
        nonlocal book, state
        stage = state.lifecycle_stage
        trace.calls.append(Call(now, book, outcome.book, stage, outcome.effects, duplicate))
        book, state = outcome.book, outcome.state

    def fire_until(limit: datetime | None) -> None:
        for _ in range(500):
            waiting = [r for r in book.runs.values() if r.waiting_until is not None]
            if not waiting:
                return
            run = min(waiting, key=lambda r: (r.waiting_until, r.workflow))
            due = run.waiting_until
            assert due is not None
            if limit is not None and due > limit:
                return
            now = due + late if limit is None or due + late <= limit else due
            seq = run.seq
            for duplicate in (False, True):
                record(now, engine.on_due(book, state, run.workflow, due, seq, now), duplicate)
        raise AssertionError("the waits never end")

    for item in events:
        fire_until(item["event_time"])
        changed = advance(state, item, MODEL)
        if changed.score is None:
            continue  # seen before: the worker stops here
        state = changed.state
        record(item["event_time"], engine.on_event(book, state, item, item["event_time"]))
    fire_until(None)
    return trace


def exits_of(library: Library, name: str) -> set[str]:
    return {e for w in library.versions[name].values() for e in w.exits} | set(BUILTIN_EXITS)


CHECK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIBRARIES = st.sampled_from([PACKAGED, TIGHT])
LATENESS = st.sampled_from([timedelta(0), timedelta(minutes=5), timedelta(hours=3)])


@CHECK
@given(LIBRARIES, contacts(), timelines(), LATENESS)
def test_never_two_concurrent_runs_of_one_workflow(
    library: Library, state: ContactState, events: list[dict[str, Any]], late: timedelta
) -> None:
    for call in drive(library, state, events, late).calls:
        running = set(call.before.runs)
        for effect in call.effects:
            if not isinstance(effect, Audit):
                continue
            if effect.decision == "workflow_exited":
                running.discard(effect.workflow)
            elif effect.decision == "workflow_entered":
                assert effect.workflow not in running, "entered while already in it"
                running.add(effect.workflow)
        assert running == set(call.after.runs)


@CHECK
@given(LIBRARIES, contacts(), timelines(), LATENESS)
def test_never_more_sends_than_the_cap(
    library: Library, state: ContactState, events: list[dict[str, Any]], late: timedelta
) -> None:
    sent: dict[str, list[datetime]] = {}
    for call in drive(library, state, events, late).calls:
        for effect in call.effects:
            if isinstance(effect, Message) and effect.to_contact:
                sent.setdefault(effect.channel, []).append(call.now)
    for channel, times in sent.items():
        cap = library.policies.frequency_caps.get(channel)  # type: ignore[call-overload]
        if cap is None:
            continue
        for start in times:
            assert len([t for t in times if start <= t < start + cap.per]) <= cap.max


@CHECK
@given(LIBRARIES, contacts(), timelines(), LATENESS)
def test_every_run_ends_in_a_declared_exit_or_waits_on_a_timer(
    library: Library, state: ContactState, events: list[dict[str, Any]], late: timedelta
) -> None:
    for call in drive(library, state, events, late).calls:
        for effect in call.effects:
            if isinstance(effect, Audit) and effect.decision == "workflow_exited":
                assert effect.inputs["exit"] in exits_of(library, effect.workflow)
        for run in call.after.runs.values():
            assert run.waiting_until is not None, f"{run.workflow} stopped at {run.step}"
            flow = library.version(run.workflow, run.version)
            step = flow.step(run.step) if flow else None
            assert step is not None and step.kind in ("send", "wait", "wait_until", "wait_for")


@CHECK
@given(LIBRARIES, contacts(), timelines(), LATENESS)
def test_no_message_is_sent_twice_and_a_timeline_always_decides_the_same(
    library: Library, state: ContactState, events: list[dict[str, Any]], late: timedelta
) -> None:
    trace = drive(library, state, events, late)
    first = trace.effects()
    ids = [e.notification_id for e in first if isinstance(e, Message)]
    assert len(ids) == len(set(ids))
    for call in trace.calls:
        if call.duplicate:  # a due notice seen again does nothing at all
            assert call.effects == [] and call.after == call.before
    assert drive(library, state, events, late).effects() == first


@CHECK
@given(LIBRARIES, contacts(), timelines(), LATENESS)
def test_one_run_per_group_and_only_a_higher_priority_preempts(
    library: Library, state: ContactState, events: list[dict[str, Any]], late: timedelta
) -> None:
    def flow(name: str) -> Workflow:
        found = library.current(name)
        assert found is not None
        return found

    for call in drive(library, state, events, late).calls:
        groups = [flow(name).group for name in call.after.runs if flow(name).group]
        assert len(groups) == len(set(groups))
        entered = [
            e.workflow
            for e in call.effects
            if isinstance(e, Audit) and e.decision == "workflow_entered"
        ]
        for effect in call.effects:
            if isinstance(effect, Audit) and effect.inputs.get("exit") == "preempted":
                loser = flow(effect.workflow)
                assert any(
                    flow(w).group == loser.group and flow(w).priority > loser.priority
                    for w in entered
                )


@CHECK
@given(LIBRARIES, contacts(), timelines(), LATENESS)
def test_no_contact_moves_back_along_the_lifecycle_stages(
    library: Library, state: ContactState, events: list[dict[str, Any]], late: timedelta
) -> None:
    order = library.policies.lifecycle_stages
    for call in drive(library, state, events, late).calls:
        for effect in call.effects:
            if isinstance(effect, Upsert) and "lifecyclestage" in effect.properties:
                target = effect.properties["lifecyclestage"]
                if call.stage_before in order:
                    assert order.index(target) > order.index(call.stage_before)
