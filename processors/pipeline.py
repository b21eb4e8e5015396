"""Pipeline triggers (``processors/rules/pipeline.yaml``): deals move through their stages
on what actually happened (an e-mail reply, a meeting booked or held, a proposal or
contract sent, a payment), and a completed field-service job creates tasks and asks the
customer how it went.

Every rule whose trigger matches an event applies, in file order. A deal only moves
forward through ``stages`` unless its rule allows going back, and a move to the stage the
deal is in is no move, so an event applied twice moves nothing the second time.

``apply_rules(...)`` is pure: (rules, contact state, event) in, decisions out; the
contact stage turns them into CRM commands, notifications and audit entries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from string import Template
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from processors.durations import Duration
from processors.ids import decision_id
from processors.matching import EventMatch, payload_matches, scalars
from processors.state import CLOSED_STAGES, ContactState, Deal
from streams import rules as rule_files
from streams.rules import RuleModel, unique_names

CLOSED_LOST = "closedlost"  # terminal, outside the forward order: any open deal can be lost
DEFAULT_RULES = Path(__file__).parent / "rules" / "pipeline.yaml"

Channel = Literal["EMAIL", "SMS"]
_NAME = r"^[a-z0-9][a-z0-9-]*$"  # kebab-case: rule names label metrics


class Task(RuleModel):
    """A CRM task for the contact's owner; ``${field}`` in the title or notes is the
    event's payload field."""

    name: str = Field(pattern=_NAME)
    title: str = Field(min_length=1)
    due_in: Duration
    # The CRM sinks know these; a typo is refused here, not dead-lettered later.
    priority: Literal["LOW", "MEDIUM", "HIGH"] | None = None
    notes: str | None = None
    when: dict[str, str | list[str]] = Field(default_factory=dict)


class ContactNotice(RuleModel):
    """A message to the contact by the first of ``channels`` they can receive."""

    name: str = Field(pattern=_NAME)
    template: str = Field(min_length=1)
    subject: str | None = None
    channels: list[Channel] = Field(min_length=1)
    when: dict[str, str | list[str]] = Field(default_factory=dict)


class Rule(RuleModel):
    name: str = Field(pattern=_NAME)
    description: str | None = None
    trigger: EventMatch
    move_to: str | None = None
    allow_backwards: bool = False
    create_deal: bool = Field(
        False, description="When the contact has no open deal, open one at move_to."
    )
    tasks: list[Task] = Field(default_factory=list)
    notify_contact: list[ContactNotice] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _not_on(cls, data: Any) -> Any:
        # YAML 1.1 reads the key `on` as the boolean true.
        if isinstance(data, dict) and True in data:
            raise ValueError("`on:` reads as true in YAML: write `trigger:`")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.move_to is None and not self.tasks and not self.notify_contact:
            raise ValueError("give at least one of: move_to, tasks, notify_contact")
        if self.move_to is None and (self.create_deal or self.allow_backwards):
            raise ValueError("create_deal and allow_backwards need move_to")
        unique_names(self.tasks, "task")
        unique_names(self.notify_contact, "notify_contact")
        return self


class PipelineRules(RuleModel):
    version: int = 1
    stages: list[str] = Field(
        min_length=1, description="Deal stages in forward order; closedlost is outside it."
    )
    rules: list[Rule] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _ordered(cls, stages: list[str]) -> list[str]:
        if len(set(stages)) != len(stages):
            raise ValueError("each stage once")
        if CLOSED_LOST in stages:
            raise ValueError(f"{CLOSED_LOST} is terminal and outside the order: remove it")
        return stages

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[Rule]) -> list[Rule]:
        unique_names(rules, "rule")
        return rules

    @cached_property
    def rules_by_event(self) -> dict[str, list[Rule]]:
        """The rules each event type triggers, in file order (most events trigger none)."""
        found: dict[str, list[Rule]] = {}
        for rule in self.rules:
            found.setdefault(rule.trigger.event, []).append(rule)
        return found

    @model_validator(mode="after")
    def _known_stages(self) -> PipelineRules:
        # Raised as a ValidationError so the error names rules.N.move_to and its line.
        known = [*self.stages, CLOSED_LOST]
        errors: list[InitErrorDetails] = []
        for i, rule in enumerate(self.rules):
            if rule.move_to is None or rule.move_to in known:
                continue
            problem = f"{rule.move_to!r} is not a stage (use one of: {', '.join(known)})"
            errors.append(
                {
                    "type": PydanticCustomError("unknown_stage", "{problem}", {"problem": problem}),
                    "loc": ("rules", i, "move_to"),
                    "input": rule.move_to,
                }
            )
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def is_forward(self, current: str, target: str) -> bool:
        """A stage not in ``stages`` (a CRM's own) ranks before every stage."""
        if target == CLOSED_LOST:
            return True
        rank = {stage: i for i, stage in enumerate(self.stages)}
        return rank[target] > rank.get(current, -1)


@dataclass(frozen=True)
class DealMove:
    rule: str
    deal_id: str
    stage: str
    previous_stage: str | None  # None when created
    created: bool
    deal_name: str | None  # set when created
    reason: str
    # What the deal is worth, when the event that moved it says (a payment); else the
    # deal's own amount.
    amount_minor: int | None = None
    currency: str | None = None


@dataclass(frozen=True)
class TaskToCreate:
    rule: str
    task_id: str
    title: str
    due_at: datetime
    owner_id: str | None
    priority: str | None
    notes: str | None


@dataclass(frozen=True)
class ContactMessage:
    rule: str
    notification_id: str
    channel: str  # "EMAIL" | "SMS"
    recipient: str
    template: str
    subject: str | None
    context: dict[str, str]


@dataclass(frozen=True)
class PipelineOutcome:
    state: ContactState  # with open_deals updated
    moves: list[DealMove]
    tasks: list[TaskToCreate]
    messages: list[ContactMessage]
    skipped: list[str]  # why a message could not be sent (no address, no consent)


def load_rules(path: Path = DEFAULT_RULES) -> PipelineRules:
    """The pipeline rules in ``path``; raises RuleFileError naming file, line and field."""
    return rule_files.load(path, PipelineRules)


def apply_rules(
    rules: PipelineRules, state: ContactState, event: dict[str, Any]
) -> PipelineOutcome:
    deals = dict(state.open_deals)
    moves: list[DealMove] = []
    tasks: list[TaskToCreate] = []
    messages: list[ContactMessage] = []
    skipped: list[str] = []
    triggered = rules.rules_by_event.get(event["event_type"], [])
    payload = scalars(event["payload"]) if triggered else {}
    for rule in triggered:
        if not rule.trigger.matches(event):
            continue
        if rule.move_to is not None:
            move = _move(rules, rule, rule.move_to, state, deals, event)
            if move is not None:
                moves.append(move)
        for task in rule.tasks:
            if payload_matches(event["payload"], task.when):
                tasks.append(_task(rule, task, state, event, payload))
        for notice in rule.notify_contact:
            if payload_matches(event["payload"], notice.when):
                message = _message(rule, notice, state, event, payload)
                if isinstance(message, str):
                    skipped.append(message)
                else:
                    messages.append(message)
    if moves:
        state = state.model_copy(update={"open_deals": deals})
    return PipelineOutcome(state, moves, tasks, messages, skipped)


def _move(
    rules: PipelineRules,
    rule: Rule,
    target: str,
    state: ContactState,
    deals: dict[str, Deal],
    event: dict[str, Any],
) -> DealMove | None:
    """Moves (or opens) a deal in ``deals`` in place; None when nothing moves."""
    at: datetime = event["event_time"]
    why = f"{event['event_type'].lower().replace('_', ' ')} ({rule.name})"
    paid: dict[str, Any] = {}
    amount, currency = event["payload"].get("amount_minor"), event["payload"].get("currency")
    if amount is not None and currency:  # a payment (a CRM's stage change may lack either)
        paid = {"amount_minor": amount, "currency": str(currency).upper()}
    if not deals:
        if not rule.create_deal:
            return None
        deal_id = decision_id("deal", state.contact_id, event["event_id"], rule.name)
        name = f"{_display_name(state)} \u2014 {rule.name}"
        if target not in CLOSED_STAGES:
            deals[deal_id] = Deal(deal_id=deal_id, stage=target, updated_at=at, name=name, **paid)
        return DealMove(
            rule=rule.name,
            deal_id=deal_id,
            stage=target,
            previous_stage=None,
            created=True,
            deal_name=name,
            reason=f"{why}: new deal at {target}",
            **paid,
        )
    deal = current_deal(deals)
    if deal.stage == target:
        return None
    if not rule.allow_backwards and not rules.is_forward(deal.stage, target):
        return None
    if target in CLOSED_STAGES:
        del deals[deal.deal_id]
    else:
        deals[deal.deal_id] = deal.model_copy(update={"stage": target, "updated_at": at, **paid})
    return DealMove(
        rule=rule.name,
        deal_id=deal.deal_id,
        stage=target,
        previous_stage=deal.stage,
        created=False,
        deal_name=None,
        reason=f"{why}: {deal.stage} -> {target}",
        **paid,
    )


def current_deal(deals: dict[str, Deal]) -> Deal:
    """The deal the contact is working on now: the open one that changed last."""
    return max(deals.values(), key=lambda d: (d.updated_at, d.deal_id))


def _task(
    rule: Rule,
    task: Task,
    state: ContactState,
    event: dict[str, Any],
    payload: dict[str, str],
) -> TaskToCreate:
    return TaskToCreate(
        rule=rule.name,
        task_id=decision_id("task", rule.name, task.name, event["event_id"]),
        title=Template(task.title).safe_substitute(payload),
        due_at=event["event_time"] + task.due_in,
        owner_id=state.owner_id,
        priority=task.priority,
        notes=Template(task.notes).safe_substitute(payload) if task.notes else None,
    )


def _message(
    rule: Rule,
    notice: ContactNotice,
    state: ContactState,
    event: dict[str, Any],
    payload: dict[str, str],
) -> ContactMessage | str:
    """The message, or why it cannot be sent."""
    refused = []
    for channel in notice.channels:
        address, problem = state.address(channel)
        if address is None:
            refused.append(f"{channel} {problem}")
            continue
        return ContactMessage(
            rule=rule.name,
            # Not from the channel: a replay after an opt-out is still the same message.
            notification_id=decision_id("notify", rule.name, notice.name, event["event_id"]),
            channel=channel,
            recipient=address,
            template=notice.template,
            subject=notice.subject,
            context=payload
            | {
                "who": state.person_name() or address,
                "first_name": state.greeting_name(),
                "company": state.profile.get("company", ""),
                "contact_id": state.contact_id,
            },
        )
    return f"{rule.name}/{notice.name}: {notice.template} not sent: {'; '.join(refused)}"


def _display_name(state: ContactState) -> str:
    return (
        state.profile.get("company")
        or state.person_name()
        or state.identifier("email")
        or state.contact_id
    )
