"""Per-contact state: what Switchboard knows about one person, and how each canonical
event changes it. Pure: ``apply_event(state, event)`` returns the new state, so it is
unit-tested without Kafka and replayed identically."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Self

from pydantic import BaseModel, Field

from processors import profile as profiles
from processors.area import AreaCheck, facts

RECENT_EVENT_IDS = 500  # enough to ignore any redelivery Kafka can produce
# Sources whose webhook signatures carry no time (Twilio, Typeform, Vapi): a captured
# request can be replayed at any moment, and they retry for days. Their event ids are
# kept for REPLAY_WINDOW whatever else the contact does (at most UNTIMED_IDS_KEPT, the
# oldest going first), beside the last RECENT_EVENT_IDS of every source.
UNTIMED_SOURCES = frozenset({"twilio", "typeform", "vapi"})
REPLAY_WINDOW = timedelta(days=7)
UNTIMED_IDS_KEPT = 200
# Identifiers a contact keeps. Sources name each call, form response or booking with an
# external id of its own (Vapi call ids, Typeform tokens, Calendly URIs); kept without
# bound they would grow the state, rewritten on every event, towards Kafka's record limit.
IDENTIFIERS_KEPT = 50


class PlainModel(BaseModel):
    """A model whose deep copy is rebuilt from its plain values: the lists and dicts are
    new and the leaves (str, numbers, datetimes) immutable, so it is as deep as
    copy.deepcopy, and about eight times faster on a contact's hundreds of values."""

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        return self.model_validate(self.model_dump())

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """BaseModel.model_copy for these models (no extra fields, no private attributes),
        its shallow copy built directly: pydantic's copies its three dicts through
        copy.copy, and a contact's event makes several of these copies."""
        if deep:
            return super().model_copy(update=update, deep=True)
        copied = self.__class__.__new__(self.__class__)
        values = self.__dict__.copy()
        fields_set = set(self.__pydantic_fields_set__)
        if update:
            values.update(update)
            fields_set.update(update)
        object.__setattr__(copied, "__dict__", values)
        object.__setattr__(copied, "__pydantic_fields_set__", fields_set)
        object.__setattr__(copied, "__pydantic_extra__", None)
        object.__setattr__(copied, "__pydantic_private__", None)
        return copied


class Deal(BaseModel):
    deal_id: str
    stage: str
    updated_at: datetime
    amount_minor: int | None = None
    currency: str | None = None
    # The name Switchboard gave the deal when it opened it (CREATE_DEAL), so a merge can
    # issue its create again; None for a deal known only from the CRM's change feed.
    name: str | None = None


class JobRef(BaseModel):
    """A job record this contact has in the CRM (processors.jobs): enough to find it again
    when the field system reports on it."""

    job_type: str
    status: str
    updated_at: datetime
    external_id: str | None = None  # the field system's job id, once it named one
    scheduled_for: datetime | None = None  # for the caller lookup's next job
    technician: str | None = None


# Job records a contact keeps (the newest); an older job's later update makes a new record.
JOBS_KEPT = 10


def kept_jobs(jobs: dict[str, JobRef]) -> dict[str, JobRef]:
    """The JOBS_KEPT most recently updated of ``jobs``."""
    if len(jobs) <= JOBS_KEPT:
        return jobs
    return dict(sorted(jobs.items(), key=lambda item: item[1].updated_at)[-JOBS_KEPT:])


class Consent(BaseModel):
    email_opt_out: bool = False
    sms_opt_out: bool = False
    email_bounced: bool = False


class NextStep(BaseModel):
    """A task a call asked of the contact's owner, held until the router has named one."""

    task_id: str
    title: str
    due_at: datetime
    priority: str
    notes: str | None
    cause: str
    at: datetime


# Next steps a contact holds for its owner at most (more calls before routing answers).
PENDING_TASKS = 10


class LastCall(BaseModel):
    """The contact's latest call, for whoever answers the next one."""

    call_id: str
    at: datetime
    direction: str
    status: str
    outcome: str | None = None
    summary: str | None = None
    handled_by: str | None = None


class Meeting(BaseModel):
    """A meeting booked with the contact (their jobs are ``jobs``)."""

    title: str
    status: str  # scheduled, completed, cancelled
    starts_at: datetime | None = None
    host: str | None = None
    location: str | None = None
    updated_at: datetime


class OwnerTask(BaseModel):
    """A task Switchboard created for the contact's owner (a call's next step, a callback)."""

    task_id: str
    title: str
    due_at: datetime
    at: datetime


# The meetings and tasks a contact keeps: the newest, enough for a caller lookup.
MEETINGS_KEPT = 10
TASKS_KEPT = 10


class Award(BaseModel):
    rule: str
    points: float
    at: datetime
    decays: bool


class ScoringState(PlainModel):
    """The behavioural history scoring needs: awards, and recent matches per frequency rule."""

    awards: list[Award] = Field(default_factory=list)
    matches: dict[str, list[datetime]] = Field(default_factory=dict)


class ContactState(PlainModel):
    contact_id: str
    identifiers: list[str] = Field(default_factory=list)
    profile: dict[str, str] = Field(default_factory=dict)
    # Each profile field's origin (processors.profile ranks them): a weaker source never
    # overwrites what a stronger one said.
    profile_origin: dict[str, str] = Field(default_factory=dict)
    lifecycle_stage: str | None = None
    owner_id: str | None = None
    owner_email: str | None = None  # from the roster at assignment, for SLA reminders
    manager_email: str | None = None
    score: float = 0.0
    score_components: dict[str, float] = Field(default_factory=dict)
    band: str | None = None
    scoring: ScoringState = Field(default_factory=ScoringState)
    last_inbound: dict[str, datetime] = Field(default_factory=dict)
    last_outbound: dict[str, datetime] = Field(default_factory=dict)
    open_deals: dict[str, Deal] = Field(default_factory=dict)
    jobs: dict[str, JobRef] = Field(default_factory=dict)  # by job_id, at most JOBS_KEPT
    consent: Consent = Field(default_factory=Consent)
    tags: list[str] = Field(default_factory=list)  # left by workflow exits
    # The workflows the contact is in now: name -> "v<version> <step>" (the engine's
    # table decides; this is what `switchboard explain` shows).
    workflows: dict[str, str] = Field(default_factory=dict)
    routing: str | None = None  # requested, assigned, held or unassigned
    pending_tasks: list[NextStep] = Field(default_factory=list)  # until routing answers
    tasks: list[OwnerTask] = Field(default_factory=list)  # created for the owner, newest last
    last_call: LastCall | None = None
    meetings: dict[str, Meeting] = Field(default_factory=dict)  # by meeting id
    # Where the contact is against the service areas (processors.area), when it has a postcode.
    area: AreaCheck | None = None
    recent_event_ids: list[str] = Field(default_factory=list)
    # Event ids of UNTIMED_SOURCES and when they arrived, for REPLAY_WINDOW.
    untimed_event_ids: dict[str, datetime] = Field(default_factory=dict)
    first_seen: datetime | None = None
    last_event_time: datetime | None = None

    def has_seen(self, event_id: str) -> bool:
        return event_id in self.recent_event_ids or event_id in self.untimed_event_ids

    def facts(self) -> dict[str, str]:
        """The profile, and the service-area check as the fields service_area, branch and
        distance_km: what firmographic scoring rules and workflow filters test."""
        if self.area is None:
            return self.profile
        return {**self.profile, **facts(self.area)}

    def identifier(self, kind: str) -> str | None:
        """The strongest identifier of a kind (email, phone, crm), without its prefix."""
        prefix = f"{kind}:"
        return next((i[len(prefix) :] for i in self.identifiers if i.startswith(prefix)), None)

    def identifiers_by_kind(self) -> dict[str, str]:
        """The strongest identifier of each kind, without its prefix: ``identifier`` of
        every kind in one pass (a contact keeps up to IDENTIFIERS_KEPT)."""
        found: dict[str, str] = {}
        for identifier in self.identifiers:
            kind, _, value = identifier.partition(":")
            if kind not in found:
                found[kind] = value
        return found

    def address(self, channel: str) -> tuple[str | None, str]:
        """The contact's address on ``channel`` (EMAIL or SMS) if they may be sent a
        message there, else None and why not (no address, opted out, bounced)."""
        if channel == "EMAIL":
            address, problem = self.identifier("email"), "no e-mail address"
            opted_out, bounced = self.consent.email_opt_out, self.consent.email_bounced
        else:
            address, problem = self.identifier("phone"), "no phone number"
            opted_out, bounced = self.consent.sms_opt_out, False
        if address is None:
            return None, problem
        if opted_out:
            return None, "opted out"
        if bounced:
            return None, "address bounced"
        return address, ""

    def person_name(self) -> str:
        return " ".join(
            filter(None, (self.profile.get("first_name"), self.profile.get("last_name")))
        )

    def greeting_name(self) -> str:
        """How a message to the person greets them: their first name, else "there" (an
        address or a blank is never a name)."""
        return self.profile.get("first_name") or "there"

    def who(self) -> str:
        """How a person is named in a message: their name, else an address, else the id."""
        return (
            self.person_name()
            or next(
                (
                    i.split(":", 1)[1]
                    for i in self.identifiers
                    if i.startswith(("email:", "phone:"))
                ),
                None,
            )
            or self.contact_id
        )


# What a contact without a state starts from: copied, not validated, at each first event.
_NEW_CONTACT = ContactState(contact_id="")


def new_contact(contact_id: str) -> ContactState:
    """ContactState(contact_id=contact_id), a shallow copy of a shared template: like
    every state handed out, its lists, dicts and models are changed by copy, never in
    place."""
    return _NEW_CONTACT.model_copy(update={"contact_id": contact_id})


CLOSED_STAGES = {"closedwon", "closedlost", "closed_won", "closed_lost"}

# (channel, direction) of each event type; CALL_COMPLETED depends on its direction.
_TOUCH = {
    "FORM_SUBMITTED": ("web", "in"),
    "PAGE_VIEWED": ("web", "in"),
    "EMAIL_SENT": ("email", "out"),
    "EMAIL_OPENED": ("email", "in"),
    "EMAIL_CLICKED": ("email", "in"),
    "EMAIL_REPLIED": ("email", "in"),
    "MEETING_BOOKED": ("meeting", "in"),
    "MEETING_COMPLETED": ("meeting", "out"),
    "PAYMENT_RECEIVED": ("billing", "in"),
    "INVOICE_PAID": ("billing", "in"),
    "JOB_STATUS_CHANGED": ("field", "out"),
}


def identifiers_of(identity: dict[str, Any]) -> list[str]:
    """Every identifier of an identity block, strongest first (the event's key is first)."""
    found = []
    if identity.get("crm_id"):
        found.append(f"crm:{identity['crm_id']}")
    if identity.get("email"):
        found.append(f"email:{identity['email']}")
    if identity.get("phone"):
        found.append(f"phone:{identity['phone']}")
    found += [f"ext:{k}:{v}" for k, v in sorted((identity.get("external_ids") or {}).items())]
    return found


def kept_untimed(arrivals: dict[str, datetime]) -> dict[str, datetime]:
    """The ids of the last REPLAY_WINDOW (counted back from the newest), at most
    UNTIMED_IDS_KEPT of them."""
    if not arrivals:
        return arrivals
    since = max(arrivals.values()) - REPLAY_WINDOW
    fresh = sorted((at, event_id) for event_id, at in arrivals.items() if at >= since)
    return {event_id: at for at, event_id in fresh[-UNTIMED_IDS_KEPT:]}


def bounded_identifiers(identifiers: list[str]) -> list[str]:
    """At most IDENTIFIERS_KEPT, in their order: the oldest external ids go first (they
    name one interaction, not the person), then the newest of the rest (the first e-mail
    and phone are the contact's own)."""
    over = len(identifiers) - IDENTIFIERS_KEPT
    if over <= 0:
        return identifiers
    dropped = set([i for i in identifiers if i.startswith("ext:")][:over])
    return [i for i in identifiers if i not in dropped][:IDENTIFIERS_KEPT]


def apply_event(state: ContactState, event: dict[str, Any]) -> ContactState:
    """The state after ``event``. An event already seen changes nothing (invariant 2)."""
    if state.has_seen(event["event_id"]):
        return state
    return applied(state, event)


def applied(state: ContactState, event: dict[str, Any]) -> ContactState:
    """apply_event for an event ``state`` has not seen (the caller checked)."""
    at: datetime = event["event_time"]
    payload: dict[str, Any] = event["payload"]
    kind: str = event["event_type"]
    # The new values are worked out first and the state copied once with them: it shares
    # with ``state`` only what is not replaced (a deep copy was a twentieth of a worker's
    # time, and each pydantic attribute set costs about a copy of a small dict).
    changed: dict[str, Any] = {}
    recent = state.recent_event_ids[1 - RECENT_EVENT_IDS :]
    recent.append(event["event_id"])
    changed["recent_event_ids"] = recent
    if event["source_system"] in UNTIMED_SOURCES:
        changed["untimed_event_ids"] = kept_untimed(
            {**state.untimed_event_ids, event["event_id"]: event["received_time"]}
        )
    identifiers = list(state.identifiers)
    for identifier in identifiers_of(event["identity"]):
        if identifier not in identifiers:
            identifiers.append(identifier)
    changed["identifiers"] = bounded_identifiers(identifiers)
    profile, profile_origin = dict(state.profile), dict(state.profile_origin)
    email = event["identity"].get("email")
    if email and "email_domain" not in profile:
        profile["email_domain"] = email.rpartition("@")[2]
    changed["first_seen"] = min(filter(None, (state.first_seen, at)))
    changed["last_event_time"] = max(filter(None, (state.last_event_time, at)))

    channel_direction = _TOUCH.get(kind)
    if kind == "CALL_COMPLETED":
        channel_direction = ("phone", "in" if payload["direction"] == "INBOUND" else "out")
    elif kind == "REP_ACTIVITY_LOGGED":
        channel_direction = (payload["activity_type"], "out")
    if channel_direction is not None:
        channel, direction = channel_direction
        touched = "last_inbound" if direction == "in" else "last_outbound"
        touches: dict[str, datetime] = getattr(state, touched)
        if channel not in touches or touches[channel] < at:
            changed[touched] = {**touches, channel: at}  # shared with ``state`` unless changed

    for field, known in (event.get("profile") or {}).items():
        profiles.take(profile, profile_origin, {field: known["value"]}, known["origin"])
    if kind == "CONTACT_UPDATED":
        properties = payload["properties"]
        if "lifecyclestage" in properties:
            changed["lifecycle_stage"] = properties["lifecyclestage"]
        edited = {k: v for k, v in properties.items() if k not in _NOT_PROFILE}
        profiles.take(profile, profile_origin, edited, "crm")
    elif kind == "FORM_SUBMITTED":
        answers = {k: v for k, v in payload["fields"].items() if k in _PROFILE_FIELDS}
        profiles.take(profile, profile_origin, answers, "self")
    elif kind == "DEAL_STAGE_CHANGED":
        deal_id = payload["deal_id"]
        open_deals = changed["open_deals"] = dict(state.open_deals)
        if payload["stage"] in CLOSED_STAGES:
            open_deals.pop(deal_id, None)
        else:
            open_deals[deal_id] = Deal(
                deal_id=deal_id,
                stage=payload["stage"],
                updated_at=at,
                amount_minor=payload.get("amount_minor"),
                currency=payload.get("currency"),
            )
    elif kind == "CALL_COMPLETED":
        if state.last_call is None or state.last_call.at <= at:
            # .get: events built by hand (tests, replays of old records) may lack fields.
            changed["last_call"] = LastCall(
                call_id=payload.get("call_id") or event["event_id"],
                at=at,
                direction=payload["direction"].lower(),
                status=payload.get("status") or "completed",
                outcome=payload.get("outcome"),
                summary=payload.get("transcript_summary"),
                handled_by=payload.get("handled_by"),
            )
    elif kind in _MEETING_STATUS:
        changed["meetings"] = kept_meetings(_met(state.meetings, kind, payload, at))
    elif kind == "EMAIL_UNSUBSCRIBED":
        changed["consent"] = state.consent.model_copy(update={"email_opt_out": True})
    elif kind == "EMAIL_BOUNCED" and payload["bounce_type"] == "hard":
        changed["consent"] = state.consent.model_copy(update={"email_bounced": True})
    changed["profile"], changed["profile_origin"] = profile, profile_origin
    return state.model_copy(update=changed)


_MEETING_STATUS = {
    "MEETING_BOOKED": "scheduled",
    "MEETING_COMPLETED": "completed",
    "MEETING_CANCELLED": "cancelled",
}


def _met(
    meetings: dict[str, Meeting], kind: str, payload: dict[str, Any], at: datetime
) -> dict[str, Meeting]:
    """``meetings`` with the event's meeting brought up to date."""
    meeting_id = payload["meeting_id"]
    known = meetings.get(meeting_id)
    if kind == "MEETING_BOOKED":
        meeting = Meeting(
            title=payload.get("title") or "meeting",
            status="scheduled",
            starts_at=payload.get("starts_at"),
            host=payload.get("host"),
            location=payload.get("location"),
            updated_at=at,
        )
    elif known is not None:
        meeting = known.model_copy(update={"status": _MEETING_STATUS[kind], "updated_at": at})
    else:
        return meetings  # held or cancelled before we heard it was booked: nothing to show
    return {**meetings, meeting_id: meeting}


def kept_meetings(meetings: dict[str, Meeting]) -> dict[str, Meeting]:
    """The MEETINGS_KEPT most recently changed."""
    if len(meetings) <= MEETINGS_KEPT:
        return meetings
    return dict(sorted(meetings.items(), key=lambda item: item[1].updated_at)[-MEETINGS_KEPT:])


def kept_tasks(tasks: list[OwnerTask], task: OwnerTask) -> list[OwnerTask]:
    """``tasks`` with ``task`` (once), the TASKS_KEPT newest."""
    if any(t.task_id == task.task_id for t in tasks):
        return tasks
    return [*tasks, task][-TASKS_KEPT:]


# CRM properties that are identifiers or lifecycle, not profile.
_NOT_PROFILE = {"lifecyclestage", "email", "phone"}

# Form answers that describe the person or their company, kept for scoring and routing.
_PROFILE_FIELDS = {
    "first_name",
    "last_name",
    "company",
    "title",
    "industry",
    "company_size",
    "address",
    "city",
    "country",
    "region",
    "postcode",
    "timezone",
    "service",
    "deal_size",
}

# What an enrichment provider may tell (connectors/sources/enrichment.py), ranked below
# everything the person or a person said (processors/profile.py).
ENRICHED_FIELDS = frozenset(
    {"company", "industry", "company_size", "annual_revenue", "country", "title", "seniority"}
)
