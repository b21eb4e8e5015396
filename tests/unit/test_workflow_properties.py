"""Property tests of the pure workflow engine over random event timelines (hypothesis).

A timeline is a contact (with or without an e-mail address and a phone number, opted out
or not, with or without an owner, at some lifecycle stage, maybe with an open deal and a
time zone) and 1..25 events of the kinds the workflows react to, minutes to days apart,
some delivered twice (the same event id: the contact stage sees it has the event and
skips the engine). The test drives the engine as the contact stage does: it keeps the
schedule of waits in step with the book after every call, delivers each due notice when
the wait is over or later (the timers topic runs late), sometimes twice (a duplicate
notice) and sometimes redelivers an old one (a stale notice), and processes events and
notices in the order they arrive, on a clock that only moves forward. After the last
event every remaining wait fires until no run is left.

Two libraries: the packaged one, and a tight one (one e-mail a day, two texts in 12
hours, quiet hours, four workflows of one group with priorities and three of another,
exits that hand off, including a preempted run's hand-off back into its own group, and
stage moves that would go backwards).

The properties: never two concurrent runs of one workflow; never more sends than a
channel's cap in any window; every run ends in a declared exit or waits on a timer (and
once every wait has fired, none is left); no message sent twice; the same timeline
decides the same; no contact moved back along the lifecycle stages; one workflow of a
group at a time; the audit trail of entries and exits follows the book."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from processors.contact import advance
from processors.pipeline import load_rules as load_pipeline
from processors.scoring import load_model
from processors.state import Consent, ContactState, Deal
from processors.workflows.definitions import BUILTIN_EXITS, Workflow
from processors.workflows.effects import Audit, Effect, Message, Outcome, Upsert
from processors.workflows.engine import Engine
from processors.workflows.library import Library, load_library
from processors.workflows.runbook import RunBook

MODEL = load_model()
PIPELINE = load_pipeline()
PACKAGED = load_library()

# ---- the tight library --------------------------------------------------------------------

TIGHT_FILES = {
    "policies.yaml": """
version: 1
timezone: Europe/Lisbon
quiet_hours: {start: "22:00", end: "07:30"}
frequency_caps:
  EMAIL: {max: 1, per: 1d}
  SMS: {max: 2, per: 12h}
max_trigger_age: 6h
""",
    "hot-call.yaml": """
name: hot-call
version: 1
purpose: A caller the voice AI qualified is texted and mailed until they book.
owner: sales@example.com
trigger: {event: CALL_COMPLETED, when: {outcome: qualified}}
entry: {can_receive: SMS}
reentry: after_exit
group: outreach
priority: 30
goal: {events: [{event: MEETING_BOOKED}], exit: booked}
steps:
  - {id: text, send: {channel: SMS, template: booking_link}}
  - {id: pause, wait: 20m}
  - {id: mail, send: {channel: EMAIL, template: booking_link, subject: Book a call}}
  - id: listen
    wait_for:
      - {event: EMAIL_REPLIED, goto: replied}
      - {event: MEETING_CANCELLED, goto: lost}
    timeout: 6h
    on_timeout: second-text
  - {id: second-text, send: {channel: SMS, template: booking_reminder}}
  - {id: evening, wait_until: {time: "18:30"}}
  - {id: third-text, send: {channel: SMS, template: booking_reminder}}
  - {id: call-them, task: {title: "Call ${who}: qualified, not booked", due_in: 2h}}
  - {id: gone, exit: unbooked}
  - {id: replied, update: {lifecycle_stage: salesqualifiedlead}}
  - {id: replied-exit, exit: replied}
  - {id: lost, exit: lost}
exits:
  booked: {tag: hot-booked, lifecycle_stage: opportunity, deal_stage: appointmentscheduled}
  replied: {tag: hot-replied}
  unbooked: {tag: hot-unbooked, notify: {to: owner, template: workflow_outcome}, hand_off: drip}
  lost: {tag: hot-lost, lifecycle_stage: lead}
""",
    "callback.yaml": """
name: callback
version: 1
purpose: A missed inbound call gets a call-back task and a text.
owner: front-desk@example.com
trigger: {event: CALL_COMPLETED, when: {direction: INBOUND, status: [no-answer, busy, voicemail]}}
entry: {can_receive: SMS, lifecycle_stage_not_in: [customer, evangelist]}
reentry: 1d
group: outreach
priority: 25
goal: {events: [{event: CALL_COMPLETED, when: {status: completed}}], exit: reached}
steps:
  - {id: task, task: {title: "Call back ${who}", due_in: 15m, priority: HIGH}}
  - {id: text, send: {channel: SMS, template: missed_call_text_back}}
  - id: listen
    wait_for: [{event: MEETING_BOOKED, goto: booked}]
    timeout: 3h
    on_timeout: missed
  - {id: missed, exit: missed}
  - {id: booked, exit: booked}
exits:
  reached: {tag: callback-reached}
  booked: {tag: callback-booked, lifecycle_stage: salesqualifiedlead}
  missed: {tag: callback-missed, notify: {to: owner, template: workflow_attention}}
  preempted: {tag: callback-preempted}
""",
    "drip.yaml": """
name: drip
version: 1
purpose: A web lead gets two e-mails a day apart and a text the next working morning.
owner: marketing@example.com
trigger: {event: FORM_SUBMITTED}
entry: {lifecycle_stage_not_in: [customer, evangelist]}
reentry: 2h
group: outreach
priority: 20
goal:
  events: [{event: EMAIL_UNSUBSCRIBED}]
  state: {has_tag: [hot-booked]}
  exit: stopped
steps:
  - {id: welcome, send: {channel: EMAIL, template: welcome, subject: Hello}}
  - {id: day-two, wait: 1d}
  - {id: follow, send: {channel: EMAIL, template: follow_up, subject: Following up}}
  - {id: morning, wait_until: {time: "09:00", days: [mon, tue, wed, thu, fri]}}
  - {id: text, send: {channel: SMS, template: drip_text}}
  - id: check
    branch:
      - {when: {band_in: [SQL]}, goto: promote}
      - {when: {has_owner: false}, goto: orphan}
    otherwise: finish
  - {id: promote, update: {lifecycle_stage: marketingqualifiedlead}}
  - {id: promoted, exit: promoted}
  - {id: orphan, notify: {to: manager, template: workflow_attention}}
  - {id: orphaned, exit: unowned}
  - {id: finish, exit: finished}
exits:
  stopped: {tag: drip-stopped}
  promoted: {tag: drip-promoted, lifecycle_stage: salesqualifiedlead}
  unowned: {tag: drip-unowned}
  finished: {tag: drip-finished, lifecycle_stage: subscriber}
  preempted: {tag: drip-preempted, hand_off: aftercare}
""",
    "reply-nudge.yaml": """
name: reply-nudge
version: 1
purpose: >
  A reply is acknowledged at once and the owner told a day later; a preempted nudge
  goes back on the drip.
owner: marketing@example.com
trigger: {event: EMAIL_REPLIED}
entry: {lacks_tag: [drip-stopped]}
reentry: after_exit
group: outreach
priority: 10
goal: {events: [{event: MEETING_COMPLETED}], exit: done}
steps:
  - {id: ack, send: {channel: EMAIL, template: reply_ack, subject: Thanks}}
  - {id: ping, send: {channel: SMS, template: reply_ping}}
  - {id: pause, wait: 1d}
  - {id: owner, notify: {to: owner, template: workflow_attention}}
  - {id: close, exit: done}
exits:
  done: {tag: nudged, lifecycle_stage: marketingqualifiedlead}
  preempted: {tag: nudge-preempted, hand_off: drip}
""",
    "aftercare.yaml": """
name: aftercare
version: 1
purpose: A payment makes a customer; a weekend survey follows.
owner: success@example.com
trigger: {event: PAYMENT_RECEIVED}
entry: {lifecycle_stage_not_in: [evangelist]}
reentry: 3d
goal: {events: [{event: JOB_STATUS_CHANGED, when: {status: completed}}], exit: served}
steps:
  - {id: make-customer, update: {lifecycle_stage: customer, properties: {onboarding: started}}}
  - {id: welcome, send: {channel: EMAIL, template: onboarding_welcome}}
  - {id: settle, wait: 2h}
  - id: check
    branch: [{when: {has_open_deal: true}, goto: deal-won}]
    otherwise: survey
  - {id: deal-won, update: {deal_stage: closedwon}}
  - {id: survey, wait_until: {time: "10:00", days: [sat, sun]}}
  - {id: ask, send: {channel: SMS, template: satisfaction_survey}}
  - id: listen
    wait_for:
      - {event: EMAIL_REPLIED, when: {snippet_contains: [great, thank]}, goto: happy}
      - {event: MEETING_CANCELLED, goto: unhappy}
    timeout: 2d
    on_timeout: done
  - {id: done, exit: quiet}
  - {id: happy, exit: happy}
  - {id: unhappy, notify: {to: manager, template: workflow_attention}}
  - {id: unhappy-exit, exit: unhappy}
exits:
  served: {tag: aftercare-served}
  happy: {tag: aftercare-happy, lifecycle_stage: evangelist}
  quiet: {tag: aftercare-quiet, lifecycle_stage: lead}
  unhappy: {tag: aftercare-unhappy}
""",
    "job-survey.yaml": """
name: job-survey
version: 1
purpose: Any completed job gets a survey text the next morning.
owner: field@example.com
trigger: {event: JOB_STATUS_CHANGED, when: {status: completed}}
entry: {everyone: true}
reentry: after_exit
group: service
priority: 5
goal: {events: [{event: EMAIL_REPLIED, when: {snippet_contains: [great]}}], exit: happy}
steps:
  - {id: morning, wait_until: {time: "08:00"}}
  - {id: ask, send: {channel: SMS, template: satisfaction_survey}}
  - {id: done, exit: asked}
exits:
  happy: {tag: survey-happy}
  asked: {tag: survey-asked}
  preempted: {tag: survey-preempted, hand_off: warranty}
""",
    "warranty.yaml": """
name: warranty
version: 1
purpose: A roof job's warranty is registered; a survey pushed out of the group registers it too.
owner: field@example.com
trigger: {event: JOB_STATUS_CHANGED, when: {status: completed, job_type: roof_replacement}}
entry: {everyone: true}
reentry: 2d
group: service
priority: 20
goal: {events: [{event: MEETING_BOOKED}], exit: booked}
steps:
  - {id: register, update: {properties: {warranty: registered}}}
  - {id: mail, send: {channel: EMAIL, template: warranty_registered}}
  - {id: settle, wait: 3d}
  - {id: done, exit: registered}
exits:
  booked: {tag: warranty-booked}
  registered: {tag: warranty-registered}
""",
    "install-check.yaml": """
name: install-check
version: 1
purpose: An installation gets an inspection task and an e-mail a week later.
owner: field@example.com
trigger:
  event: JOB_STATUS_CHANGED
  when: {status: completed, job_type: [boiler_installation, solar_installation]}
entry: {has_owner: true}
reentry: 2d
group: service
priority: 15
goal: {events: [{event: MEETING_BOOKED}], exit: booked}
steps:
  - {id: inspect, task: {title: "Inspect ${job_type} job ${job_id}", due_in: 7d}}
  - {id: week, wait: 7d}
  - {id: mail, send: {channel: EMAIL, template: inspection_reminder}}
  - {id: done, exit: reminded}
exits:
  booked: {tag: install-booked}
  reminded: {tag: install-reminded}
""",
    "stale-deal.yaml": """
name: stale-deal
version: 1
purpose: A stale deal gets one e-mail; silence closes it lost.
owner: sales@example.com
trigger: {event: SLA_BREACHED, when: {policy: stale-deal, level: "1"}}
entry: {has_open_deal: true}
reentry: 1d
goal: {events: [{event: MEETING_BOOKED}], exit: saved}
steps:
  - {id: nudge, send: {channel: EMAIL, template: re_engagement}}
  - id: listen
    wait_for: [{event: EMAIL_REPLIED, goto: saved}]
    timeout: 1d
    on_timeout: close
  - {id: close, update: {deal_stage: closedlost}}
  - {id: lost, exit: lost}
  - {id: saved, exit: saved}
exits:
  saved: {tag: deal-saved, deal_stage: qualifiedtobuy}
  lost: {tag: deal-lost, notify: {to: owner, template: workflow_outcome}}
""",
}


def _tight_library() -> Library:
    """Loaded (and linted as a set) from files, like the packaged one."""
    with tempfile.TemporaryDirectory() as directory:
        for name, text in TIGHT_FILES.items():
            (Path(directory) / name).write_text(text)
        return load_library(Path(directory))


LIBRARIES = {"packaged": PACKAGED, "tight": _tight_library()}
LIBRARY_NAMES = st.sampled_from(sorted(LIBRARIES))

# ---- contacts -----------------------------------------------------------------------------

STAGES = [None, *PACKAGED.policies.lifecycle_stages]
ZONES = [
    None,
    "Europe/Lisbon",
    "Asia/Tokyo",
    "America/Los_Angeles",
    "Pacific/Kiritimati",
    "Mars/Base",
]
DEAL_STAGES = [None, "new", "contacted", "qualifiedtobuy"]


@dataclass(frozen=True)
class Contact:
    """The contact at the start, in few words (a failing example prints short)."""

    email: bool = True
    phone: bool = True
    email_opt_out: bool = False
    sms_opt_out: bool = False
    email_bounced: bool = False
    owner_email: str | None = "jordan@example.com"  # "": an owner with no e-mail known
    stage: str | None = None
    deal: str | None = None  # the stage of an open deal
    zone: str | None = None  # the profile's timezone

    def state(self) -> ContactState:
        identifiers = ["crm:101"]
        identifiers += ["email:ana@example.com"] if self.email else []
        identifiers += ["phone:+15550100"] if self.phone else []
        owned = self.owner_email is not None
        deals = {}
        if self.deal is not None:
            updated = datetime(2026, 1, 2, tzinfo=UTC)
            deals["d-1"] = Deal(deal_id="d-1", stage=self.deal, updated_at=updated)
        return ContactState(
            contact_id="c-1",
            identifiers=identifiers,
            profile={"first_name": "Ana", **({"timezone": self.zone} if self.zone else {})},
            lifecycle_stage=self.stage,
            owner_id="rep-1" if owned else None,
            owner_email=self.owner_email or None,
            manager_email="maria@example.com" if owned else None,
            open_deals=deals,
            consent=Consent(
                email_opt_out=self.email_opt_out,
                sms_opt_out=self.sms_opt_out,
                email_bounced=self.email_bounced,
            ),
        )


# Three times in four, and once in four (shrinking towards the first).
_OFTEN = st.integers(0, 3).map(lambda n: n < 3)
_SELDOM = st.integers(0, 3).map(lambda n: n == 3)
CONTACTS = st.builds(
    Contact,
    email=_OFTEN,
    phone=_OFTEN,
    email_opt_out=_SELDOM,
    sms_opt_out=_SELDOM,
    email_bounced=_SELDOM,
    owner_email=st.sampled_from(["jordan@example.com", "", None]),
    stage=st.sampled_from(STAGES),
    deal=st.sampled_from(DEAL_STAGES),
    zone=st.sampled_from(ZONES),
)

# ---- events -------------------------------------------------------------------------------

Payload = tuple[dict[str, Any], dict[str, Any]]  # identity, payload


def _form() -> st.SearchStrategy[Payload]:
    fields = st.fixed_dictionaries(
        {},
        optional={
            "first_name": st.just("Ana"),
            "company_size": st.sampled_from(["8", "250"]),
            "industry": st.sampled_from(["saas", "retail"]),
            "title": st.sampled_from(["VP Sales", "Intern"]),
            "country": st.sampled_from(["US", "FR"]),
        },
    )
    identity = st.sampled_from([{}, {"email": "ana@example.com"}])
    return st.tuples(identity, fields.map(lambda f: {"form_id": "contact-us", "fields": f}))


CALLS = [
    {"direction": "INBOUND", "status": "no-answer"},
    {"direction": "INBOUND", "status": "busy"},
    {"direction": "INBOUND", "status": "voicemail"},
    {"direction": "INBOUND", "status": "completed"},
    {"direction": "INBOUND", "status": "completed", "outcome": "qualified"},
    {"direction": "OUTBOUND", "status": "completed", "outcome": "qualified"},
    {"direction": "OUTBOUND", "status": "completed", "outcome": "not_interested"},
    {"direction": "INBOUND", "status": "completed", "outcome": "not_interested"},
]
SNIPPETS = [
    "Sounds good, call me tomorrow",
    "Not interested, thanks",
    "No thanks",
    "Great job, thank you!",
    "Poor work: the boiler is broken",
    "Please unsubscribe me",
    None,
]
JOB_TYPES = ["boiler_installation", "roof_replacement", "solar_installation", "repair"]


def _calls() -> st.SearchStrategy[Payload]:
    identity = st.sampled_from([{}, {"phone": "+15550100"}])
    call = st.sampled_from(CALLS).map(lambda c: {"call_id": "call-1", "duration_seconds": 40, **c})
    return st.tuples(identity, call)


def _fixed(payload: dict[str, Any]) -> st.SearchStrategy[Payload]:
    return st.just(({}, payload))


KINDS: dict[str, st.SearchStrategy[Payload]] = {
    "FORM_SUBMITTED": _form(),
    "CALL_COMPLETED": _calls(),
    "EMAIL_REPLIED": st.sampled_from(SNIPPETS).map(
        lambda s: ({}, {"message_id": "m-1", "snippet": s})
    ),
    "EMAIL_UNSUBSCRIBED": _fixed({"message_id": "m-1", "list_id": "news"}),
    "MEETING_BOOKED": _fixed(
        {"meeting_id": "mt-1", "starts_at": datetime(2026, 1, 9, 15, tzinfo=UTC)}
    ),
    "MEETING_CANCELLED": _fixed({"meeting_id": "mt-1", "cancelled_by": "contact"}),
    "MEETING_COMPLETED": _fixed({"meeting_id": "mt-1", "outcome": "held"}),
    "PAYMENT_RECEIVED": _fixed({"payment_id": "p-1", "amount_minor": 120000, "currency": "usd"}),
    "JOB_STATUS_CHANGED": st.tuples(
        st.just({}),
        st.fixed_dictionaries(
            {
                "job_id": st.just("j-1"),
                "job_type": st.sampled_from(JOB_TYPES),
                "status": st.sampled_from(["completed", "completed", "in_progress"]),
            }
        ),
    ),
    "SLA_BREACHED": st.sampled_from(["1", "1", "2"]).map(
        lambda level: (
            {},
            {"policy": "stale-deal", "level": level, "timer_id": "stale-deal", "deal_id": "d-1"},
        )
    ),
}
# Swarm testing: each timeline draws its events from a few kinds, so that two kinds that
# interact (a reply, then a missed call) meet often.
PALETTES = st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=5, unique=True)
# Gaps between events: the edges that matter (a cap's day, a wait's length) and anything.
GAPS = st.one_of(
    st.sampled_from([1, 5, 10, 20, 30, 45, 60, 120, 180, 360, 720, 1440, 2880, 4320]),
    st.integers(1, 5 * 1440),
).map(lambda minutes: timedelta(minutes=minutes))
# Mondays to start from, two of them a few days before a daylight-saving change.
STARTS = [
    datetime(2026, 1, 5, tzinfo=UTC),
    datetime(2026, 3, 2, tzinfo=UTC),  # US clocks change on 8 March, the EU's on 29 March
    datetime(2026, 10, 19, tzinfo=UTC),  # the EU's on 25 October, the US's on 1 November
]


@dataclass(frozen=True)
class Arrival:
    """An event as it reaches the contact stage, at ``at`` (its event time, or later: a
    late or a repeated delivery)."""

    event_id: str
    kind: str
    event_time: datetime
    at: datetime
    payload: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)

    def event(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.kind,
            "source_system": "test",
            "event_time": self.event_time,
            "received_time": self.at,
            "identity": self.identity,
            "contact_id": "c-1",
            "payload": self.payload,
        }


@dataclass(frozen=True)
class Notice:
    """How the timers topic delivers the due notice of one wait: ``late`` after it is due,
    and then maybe a duplicate of it, or a redelivery of an old notice."""

    late: timedelta = timedelta(0)
    extra: Literal["none", "duplicate", "stale"] = "none"


@dataclass(frozen=True)
class Timeline:
    contact: Contact
    arrivals: tuple[Arrival, ...]  # in the order they arrive
    notices: tuple[Notice, ...] = (Notice(),)  # one per wait scheduled, cycled


NOTICES = st.builds(
    Notice,
    st.sampled_from([0, 0, 0, 1, 5, 90, 600, 1800]).map(lambda m: timedelta(minutes=m)),
    st.sampled_from(["none", "none", "duplicate", "stale"]),
)


@st.composite
def timelines(draw: st.DrawFn) -> Timeline:
    at = draw(st.sampled_from(STARTS)) + timedelta(minutes=draw(st.integers(0, 7 * 1440)))
    palette = draw(PALETTES)
    arrivals: list[Arrival] = []
    for n in range(draw(st.integers(1, 25))):
        at += draw(GAPS)
        if arrivals and draw(st.integers(0, 7)) == 7:
            # A redelivery: the same event (same id), arriving again now.
            again = draw(st.sampled_from(arrivals))
            arrivals.append(replace(again, at=max(at, again.at)))
            continue
        kind = draw(st.sampled_from(palette))
        identity, payload = draw(KINDS[kind])
        # Most events arrive at once; some a little later, some as a backfill days late.
        delay = timedelta(minutes=draw(st.sampled_from([0] * 8 + [1, 30, 2 * 1440])))
        arrivals.append(Arrival(f"e-{n}", kind, at, at + delay, payload, identity))
    arrivals.sort(key=lambda a: a.at)  # stable: equal times keep their order
    notices = draw(st.lists(NOTICES, min_size=1, max_size=8))
    return Timeline(draw(CONTACTS), tuple(arrivals), tuple(notices))


# ---- driving the engine as the contact stage does -----------------------------------------


@dataclass(frozen=True)
class Call:
    """One call into the engine and what it returned."""

    what: str  # "event e-3", "due drip", "duplicate due drip", "stale due drip"
    now: datetime
    before: RunBook
    after: RunBook
    stage_before: str | None  # the contact's lifecycle stage the engine was given
    stage_after: str | None
    effects: list[Effect]


@dataclass
class Trace:
    calls: list[Call] = field(default_factory=list)
    # At the end, once every wait has fired:
    book: RunBook = field(default_factory=RunBook)
    state: ContactState = field(default_factory=lambda: ContactState(contact_id="c-1"))

    def effects(self) -> list[Effect]:
        return [e for c in self.calls for e in c.effects]


MAX_STEPS = 2_000  # events plus notices: lint rules out loops, this bounds an engine bug


def drive(library: Library, timeline: Timeline, check_purity: bool = False) -> Trace:
    """Run ``timeline`` through a new engine over ``library``; with ``check_purity``, also
    check that no call changes the book or the state it was given."""
    engine = Engine(library, PIPELINE)
    trace = Trace()
    book = RunBook()
    state = timeline.contact.state()
    # The worker's schedule of waits: workflow -> (due, seq, how its notice arrives).
    schedule: dict[str, tuple[datetime, int, Notice]] = {}
    delivered: list[tuple[str, datetime, int]] = []
    scheduled = 0
    clock = timeline.arrivals[0].at
    pending = list(timeline.arrivals)

    def record(
        what: str, now: datetime, outcome: Outcome, given: tuple[RunBook, ContactState] | None
    ) -> None:
        nonlocal book, state
        assert given is None or given == (book, state), f"{what}: the engine changed its inputs"
        trace.calls.append(
            Call(
                what,
                now,
                book,
                outcome.book,
                state.lifecycle_stage,
                outcome.state.lifecycle_stage,
                outcome.effects,
            )
        )
        book, state = outcome.book, outcome.state
        reschedule()

    def reschedule() -> None:
        """As the worker: a timer for every waiting run, none for the others."""
        nonlocal scheduled
        for name, run in book.runs.items():
            if run.waiting_until is None:
                schedule.pop(name, None)
                continue
            current = schedule.get(name)
            if current is None or current[:2] != (run.waiting_until, run.seq):
                notice = timeline.notices[scheduled % len(timeline.notices)]
                schedule[name] = (run.waiting_until, run.seq, notice)
                scheduled += 1
        for name in list(schedule):
            if name not in book.runs:
                del schedule[name]

    def inputs() -> tuple[RunBook, ContactState] | None:
        """Copies of what the next call is given, to check it changes neither."""
        return (book.model_copy(deep=True), state.model_copy(deep=True)) if check_purity else None

    def due(name: str, at: datetime, seq: int, now: datetime, what: str) -> None:
        given = inputs()
        record(f"{what} {name}", now, engine.on_due(book, state, name, at, seq, now), given)

    for _ in range(MAX_STEPS):
        notices = sorted((d + n.late, name) for name, (d, _, n) in schedule.items())
        if pending and (not notices or pending[0].at < notices[0][0]):
            arrival = pending.pop(0)
            clock = max(clock, arrival.at)
            event = arrival.event()
            changed = advance(state, event, MODEL)
            if changed.score is None:
                continue  # an event the contact has seen: the worker stops here
            state = changed.state
            given = inputs()
            outcome = engine.on_event(book, state, event, clock)
            record(f"event {arrival.event_id}", clock, outcome, given)
        elif notices:
            arrives, name = notices[0]
            at, seq, notice = schedule.pop(name)
            clock = max(clock, arrives)
            due(name, at, seq, clock, "due")
            if notice.extra == "duplicate":
                due(name, at, seq, clock, "duplicate due")
            elif notice.extra == "stale" and delivered:
                old = delivered[len(delivered) // 2]
                due(old[0], old[1], old[2], clock, "stale due")
            delivered.append((name, at, seq))
        else:
            trace.book, trace.state = book, state
            return trace
    raise AssertionError(f"more than {MAX_STEPS} events and notices: the waits never end")


def flow(library: Library, name: str, version: int) -> Workflow:
    found = library.version(name, version)
    assert found is not None, f"no {name} v{version}"
    return found


CHECK = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- the properties -----------------------------------------------------------------------


def _two_events(first: Arrival, second: Arrival) -> Timeline:
    return Timeline(Contact(), (first, second))


def _arrival(event_id: str, kind: str, minute: int, payload: dict[str, Any]) -> Arrival:
    at = datetime(2026, 1, 5, 0, minute, tzinfo=UTC)
    return Arrival(event_id, kind, at, at, payload)


REPLY = _arrival("e-0", "EMAIL_REPLIED", 1, {"message_id": "m-1", "snippet": "Sounds good"})
# Found by these tests before db5162a: drip (priority 20) preempted reply-nudge, whose
# `preempted` exit hands off to drip, which entered twice in one call.
REPLY_THEN_FORM = _two_events(
    REPLY, _arrival("e-1", "FORM_SUBMITTED", 2, {"form_id": "contact-us", "fields": {}})
)
# And callback (priority 25) preempted reply-nudge, whose hand-off put drip beside callback.
REPLY_THEN_MISSED_CALL = _two_events(
    REPLY,
    _arrival(
        "e-1",
        "CALL_COMPLETED",
        2,
        {"call_id": "call-1", "direction": "INBOUND", "status": "no-answer"},
    ),
)


@CHECK
@example("tight", REPLY_THEN_FORM)
@given(LIBRARY_NAMES, timelines())
def test_never_two_concurrent_runs_of_one_workflow(name: str, timeline: Timeline) -> None:
    library = LIBRARIES[name]
    for call in drive(library, timeline).calls:
        # The book holds one run per workflow by construction (a dict by name): what can go
        # wrong is entering a workflow the contact is in, which replaces its run.
        assert all(key == run.workflow for key, run in call.after.runs.items()), call.what
        running = set(call.before.runs)
        for effect in call.effects:
            if not isinstance(effect, Audit):
                continue
            if effect.decision == "workflow_exited":
                running.discard(effect.workflow)
            elif effect.decision == "workflow_entered":
                assert effect.workflow not in running, (
                    f"{call.what}: entered {effect.workflow} while already in it"
                )
                running.add(effect.workflow)


@CHECK
@given(LIBRARY_NAMES, timelines())
def test_never_more_sends_than_the_cap(name: str, timeline: Timeline) -> None:
    library = LIBRARIES[name]
    sent: dict[str, list[datetime]] = {}
    for call in drive(library, timeline).calls:
        for effect in call.effects:
            if isinstance(effect, Message) and effect.to_contact:
                sent.setdefault(effect.channel, []).append(call.now)
    for channel, cap in library.policies.frequency_caps.items():
        times = sorted(sent.get(channel, []))
        for start in times:
            window = [t for t in times if start <= t < start + cap.per]
            assert len(window) <= cap.max, f"{channel}: {len(window)} from {start} (cap {cap})"


@CHECK
@given(LIBRARY_NAMES, timelines())
def test_every_run_ends_in_a_declared_exit_or_waits_on_a_timer(
    name: str, timeline: Timeline
) -> None:
    library = LIBRARIES[name]
    trace = drive(library, timeline)
    for call in trace.calls:
        for effect in call.effects:
            if isinstance(effect, Audit) and effect.decision == "workflow_exited":
                version = flow(library, effect.workflow, effect.inputs["version"])
                assert effect.inputs["exit"] in {*version.exits, *BUILTIN_EXITS}, call.what
        for run in call.after.runs.values():
            assert run.waiting_until is not None, f"{call.what}: {run.workflow} at {run.step}"
            step = flow(library, run.workflow, run.version).step(run.step)
            assert step is not None, f"{call.what}: {run.workflow} at no step {run.step}"
            assert step.kind in ("send", "wait", "wait_until", "wait_for"), (
                f"{call.what}: {run.workflow} stopped at {step.kind} step {run.step}"
            )
    # Once every wait has fired, every run has ended.
    assert trace.book.runs == {}


@CHECK
@given(LIBRARY_NAMES, timelines())
def test_no_message_is_sent_twice(name: str, timeline: Timeline) -> None:
    library = LIBRARIES[name]
    trace = drive(library, timeline)
    ids = [e.notification_id for e in trace.effects() if isinstance(e, Message)]
    assert len(ids) == len(set(ids))
    for call in trace.calls:
        if call.what.startswith("duplicate due"):  # a notice seen again does nothing
            assert call.effects == [] and call.after == call.before


@CHECK
@given(LIBRARY_NAMES, timelines())
def test_the_same_timeline_decides_the_same(name: str, timeline: Timeline) -> None:
    library = LIBRARIES[name]
    first = drive(library, timeline, check_purity=True)
    second = drive(library, timeline)
    assert [(c.what, c.now, c.effects, c.after) for c in second.calls] == [
        (c.what, c.now, c.effects, c.after) for c in first.calls
    ]
    assert (second.book, second.state) == (first.book, first.state)


@CHECK
@given(LIBRARY_NAMES, timelines())
def test_no_contact_moves_back_along_the_lifecycle_stages(name: str, timeline: Timeline) -> None:
    library = LIBRARIES[name]
    order = library.policies.lifecycle_stages
    for call in drive(library, timeline).calls:
        stage = call.stage_before
        for effect in call.effects:
            if isinstance(effect, Upsert) and "lifecyclestage" in effect.properties:
                target = effect.properties["lifecyclestage"]
                if stage in order:
                    assert order.index(target) >= order.index(stage), (
                        f"{call.what}: {stage} -> {target}"
                    )
                stage = target
        assert call.stage_after == stage, call.what  # the state says what the CRM was told


@CHECK
@example("tight", REPLY_THEN_MISSED_CALL)
@given(LIBRARY_NAMES, timelines())
def test_one_workflow_of_a_group_at_a_time(name: str, timeline: Timeline) -> None:
    library = LIBRARIES[name]
    for call in drive(library, timeline).calls:
        groups = [
            flow(library, run.workflow, run.version).group for run in call.after.runs.values()
        ]
        named = [g for g in groups if g is not None]
        assert len(named) == len(set(named)), f"{call.what}: {sorted(call.after.runs)}"


# Hypothesis's smallest example: a repair job starts job-survey (service, priority 5); an
# installation job a minute later starts install-check (priority 15), which preempts the
# survey; the survey's `preempted` exit hands off to warranty (priority 20), which preempts
# install-check before install-check was announced or took a step.
INSTALL_PREEMPTED_BEFORE_IT_ENTERED = _two_events(
    _arrival(
        "e-0",
        "JOB_STATUS_CHANGED",
        1,
        {"job_id": "j-1", "job_type": "repair", "status": "completed"},
    ),
    _arrival(
        "e-1",
        "JOB_STATUS_CHANGED",
        2,
        {"job_id": "j-1", "job_type": "boiler_installation", "status": "completed"},
    ),
)


@CHECK
@example("tight", INSTALL_PREEMPTED_BEFORE_IT_ENTERED)
@given(LIBRARY_NAMES, timelines())
def test_the_audit_trail_of_entries_and_exits_follows_the_book(
    name: str, timeline: Timeline
) -> None:
    """Read in order, a call's workflow_entered and workflow_exited entries take the
    contact's runs from the book before the call to the book after it: a run exits only
    after it entered, and every run announced as entered is in the book or exited later."""
    library = LIBRARIES[name]
    for call in drive(library, timeline).calls:
        running = set(call.before.runs)
        for effect in call.effects:
            if not isinstance(effect, Audit):
                continue
            if effect.decision == "workflow_exited":
                assert effect.workflow in running, (
                    f"{call.what}: {effect.workflow} exited, but it had not entered"
                )
                running.discard(effect.workflow)
            elif effect.decision == "workflow_entered":
                running.add(effect.workflow)
        assert running == set(call.after.runs), (
            f"{call.what}: the audit says {sorted(running)}, the book {sorted(call.after.runs)}"
        )
