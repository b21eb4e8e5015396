"""SLA policies (``processors/rules/sla.yaml``) and the timers they run, per contact.

A policy says which event starts its clock (an assignment, an inbound reply, an
unanswered call, a deal entering a stage, any account activity), which awaited activity
stops it (a rep's call, an e-mail reply sent, a stage change), how long the contact may
wait (shorter inside business hours, per deal stage) and what happens when the wait is
over: an escalation chain of steps (remind the owner, notify the manager, reassign
through routing, flag in the CRM), each a set time after the breach.

Pure: ``on_event`` and ``on_due`` take the contact's timers and return the new ones and
what happened, so every policy and step is unit-tested with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from processors.durations import Duration
from processors.hours import BusinessHours
from processors.matching import ASSIGNED, EventMatch
from processors.state import ContactState
from streams import rules as rule_files
from streams.rules import RuleModel, unique_names

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)  # made once: to_ms runs at every timer put and check
DEFAULT_POLICIES = Path(__file__).parent / "rules" / "sla.yaml"

PolicyKind = Literal["first_touch", "response", "follow_up", "stale_deal", "at_risk"]
Action = Literal["remind_owner", "notify_manager", "reassign", "flag_crm"]
NotifyChannel = Literal["EMAIL", "SLACK", "SMS", "WEBHOOK", "LOG"]


class Escalation(RuleModel):
    """One step of the chain, ``after`` the breach. A notification goes to the owner's or
    their manager's e-mail unless the step names a ``channel`` and ``recipient``."""

    after: Duration
    action: Action
    channel: NotifyChannel | None = None
    recipient: str | None = None

    @model_validator(mode="after")
    def _addressed(self) -> Escalation:
        if (self.channel is None) != (self.recipient is None):
            raise ValueError("give both channel and recipient, or neither")
        if self.channel is not None and self.action not in ("remind_owner", "notify_manager"):
            raise ValueError(f"{self.action} sends no notification: remove channel and recipient")
        return self


class Due(RuleModel):
    """How long the contact may wait: ``within`` (or ``outside_hours`` when the clock
    starts outside business hours); for deals, ``by_stage`` first."""

    within: Duration | None = None
    outside_hours: Duration | None = None
    by_stage: dict[str, Duration] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> Due:
        if self.within is None and not self.by_stage:
            raise ValueError("give within, by_stage, or both")
        if self.outside_hours is not None and self.within is None:
            raise ValueError("outside_hours needs within (the wait inside business hours)")
        return self


class Conditions(RuleModel):
    """Who the policy applies to, judged on the contact's state when the clock starts."""

    band_in: list[str] | None = None
    lifecycle_stage_in: list[str] | None = None
    has_owner: bool | None = None

    def hold(self, state: ContactState) -> bool:
        if self.band_in is not None and state.band not in self.band_in:
            return False
        if self.lifecycle_stage_in is not None and state.lifecycle_stage not in set(
            self.lifecycle_stage_in
        ):
            return False
        return self.has_owner is None or (state.owner_id is not None) == self.has_owner


class Policy(RuleModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    kind: PolicyKind
    description: str = Field(min_length=1)
    starts_on: list[EventMatch] = Field(min_length=1)
    stops_on: list[EventMatch] = Field(default_factory=list)
    restart: bool = Field(
        False, description="A start while the clock runs starts it again (else it is ignored)."
    )
    when: Conditions = Field(default_factory=Conditions)
    due: Due
    escalations: list[Escalation] = Field(min_length=1)

    @property
    def per_deal(self) -> bool:
        return self.kind == "stale_deal"

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        afters = [step.after for step in self.escalations]
        if any(later <= earlier for earlier, later in pairwise(afters)):
            raise ValueError("escalations must be in order of `after`, each later than the last")
        if self.per_deal and any(
            m.event != "DEAL_STAGE_CHANGED" for m in self.starts_on + self.stops_on
        ):
            raise ValueError("a stale_deal policy starts and stops on DEAL_STAGE_CHANGED only")
        if self.due.by_stage and not self.per_deal:
            raise ValueError("by_stage is for stale_deal policies")
        return self

    def wait(self, at: datetime, stage: str | None, hours: BusinessHours) -> timedelta | None:
        """How long a clock started at ``at`` runs; None if the policy sets no limit here."""
        if stage is not None and stage in self.due.by_stage:
            return self.due.by_stage[stage]
        if self.due.outside_hours is not None and not hours.contains(at):
            return self.due.outside_hours
        return self.due.within


class SlaPolicies(RuleModel):
    version: int = 1
    business_hours: BusinessHours = Field(default_factory=BusinessHours)
    policies: list[Policy] = Field(min_length=1)

    @field_validator("policies")
    @classmethod
    def _unique(cls, policies: list[Policy]) -> list[Policy]:
        unique_names(policies, "policy")
        return policies

    def policy(self, name: str) -> Policy | None:
        return next((p for p in self.policies if p.name == name), None)


def load_policies(path: Path = DEFAULT_POLICIES) -> SlaPolicies:
    return rule_files.load(path, SlaPolicies)


class Timer(BaseModel):
    """A running SLA clock. ``due_at`` is when its next escalation step fires; ``level``
    counts the steps taken."""

    policy: str
    subject: str | None = None  # the deal, for per-deal policies
    started_at: datetime
    breach_at: datetime
    due_at: datetime
    level: int = 0
    owner_id: str | None = None
    cause: str
    context: dict[str, str] = Field(default_factory=dict)

    @property
    def timer_id(self) -> str:
        return timer_id(self.policy, self.subject)


def timer_id(policy: str, subject: str | None) -> str:
    return policy if subject is None else f"{policy}:{subject}"


class TimerBook(BaseModel):
    """A contact's running timers, by timer id (the value of the timers table), and the
    partition they live on, so a worker rebuilds its schedule without hashing every key."""

    partition: int = -1
    timers: dict[str, Timer] = Field(default_factory=dict)


@dataclass(frozen=True)
class TimerChange:
    """A clock that started, started again, stopped (the awaited activity came) or was
    cancelled (the policy no longer applies)."""

    change: Literal["started", "restarted", "stopped", "cancelled"]
    timer: Timer
    reason: str
    at: datetime


@dataclass(frozen=True)
class Firing:
    """An escalation step that is due: the timer as it was, the step, its 1-based level."""

    policy: Policy
    timer: Timer
    step: Escalation
    level: int
    lateness: timedelta
    final: bool


def on_event(
    policies: SlaPolicies, book: TimerBook, state: ContactState, event: dict[str, Any]
) -> tuple[TimerBook, list[TimerChange]]:
    """Start, restart, stop or cancel clocks for ``event`` (a contact event, or an
    ASSIGNED trigger), judged on the contact's ``state`` after it."""
    timers = dict(book.timers)
    changes: list[TimerChange] = []
    at: datetime = event["event_time"]
    for policy in policies.policies:
        subject = str(event["payload"].get("deal_id")) if policy.per_deal else None
        key = timer_id(policy.name, subject)
        running = timers.get(key)
        if running is not None and at < running.started_at:
            continue  # older than the running clock (it arrived late): it changes nothing
        if running is not None:
            stop = next((m for m in policy.stops_on if m.matches(event)), None)
            if stop is not None:
                del timers[key]
                changes.append(
                    TimerChange("stopped", running, f"{_describe(event)} stopped the clock", at)
                )
                continue
        if not any(m.matches(event) for m in policy.starts_on):
            continue
        if running is not None and not policy.restart:
            continue
        stage = str(event["payload"].get("stage")) if policy.per_deal else None
        wait = policy.wait(at, stage, policies.business_hours) if policy.when.hold(state) else None
        if wait is None:
            if running is not None:
                del timers[key]
                changes.append(
                    TimerChange("cancelled", running, f"{policy.name} no longer applies", at)
                )
            continue
        breach = at + wait
        timer = Timer(
            policy=policy.name,
            subject=subject,
            started_at=at,
            breach_at=breach,
            due_at=whole_ms(breach + policy.escalations[0].after),
            owner_id=state.owner_id,
            cause=event["event_id"],
            context={"stage": stage} if stage else {},
        )
        timers[key] = timer
        reason = f"{_describe(event)} started the clock: due by {breach.isoformat()}"
        changes.append(TimerChange("restarted" if running else "started", timer, reason, at))
    if not changes:  # most events: the book as it was, not a copy validated again
        return book, changes
    return TimerBook(timers=timers), changes


def merge_books(
    survivor: TimerBook, retired: TimerBook
) -> tuple[TimerBook, list[Timer], list[Timer]]:
    """The survivor of a merge takes over the retired contact's clocks. Where both run
    the same one, the clock that started first stands: the person has waited that long.
    Returns the book, the timers it adopted and the ones it dropped."""
    timers = dict(survivor.timers)
    adopted: list[Timer] = []
    dropped: list[Timer] = []
    for key, timer in retired.timers.items():
        own = timers.get(key)
        if own is not None and own.started_at <= timer.started_at:
            dropped.append(timer)
            continue
        if own is not None:
            dropped.append(own)
        timers[key] = timer
        adopted.append(timer)
    return TimerBook(partition=survivor.partition, timers=timers), adopted, dropped


def on_due(
    policies: SlaPolicies,
    book: TimerBook,
    key: str,
    due_at: datetime,
    level: int,
    now: datetime,
) -> tuple[TimerBook, Firing | None]:
    """Take the escalation step of timer ``key`` that was due at ``due_at`` (its ``level``
    steps taken so far). A timer that has since stopped, restarted or moved on (a
    duplicate or stale due notice) takes no step: each step fires once."""
    timer = book.timers.get(key)
    if timer is None or to_ms(timer.due_at) != to_ms(due_at) or timer.level != level:
        return book, None
    timers = dict(book.timers)
    policy = policies.policy(timer.policy)
    if policy is None:  # the policy was removed from the file since the clock started
        del timers[key]
        return TimerBook(timers=timers), None
    steps = policy.escalations
    step = steps[min(level, len(steps) - 1)]
    final = level + 1 >= len(steps)
    if final:
        del timers[key]
    else:  # the next step keeps its spacing from this one, even when this one fired late
        gap = steps[level + 1].after - step.after
        timers[key] = timer.model_copy(update={"level": level + 1, "due_at": whole_ms(now + gap)})
    firing = Firing(policy, timer, step, level + 1, max(now - due_at, timedelta(0)), final)
    return TimerBook(timers=timers), firing


def to_ms(at: datetime) -> int:
    """Milliseconds since the epoch: the precision of times on Kafka (Avro timestamp-millis)."""
    return (at - EPOCH) // _MS


def whole_ms(at: datetime) -> datetime:
    if at.microsecond % 1000 == 0:
        return at  # most are (Kafka's times): datetime.replace is slow, per timer and wait
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _describe(event: dict[str, Any]) -> str:
    if event["event_type"] == ASSIGNED:  # its id is a hash: the rep says more
        return f"assignment to {event['payload'].get('rep_id')}"
    kind = str(event["event_type"]).lower().replace("_", " ")
    return f"{kind} ({event['event_id']})"
