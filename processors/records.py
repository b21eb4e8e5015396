"""The records the contact stage sends for its decisions: audit entries, CRM commands,
notifications and routing requests, built from pure inputs (state, decision, time), so
what a decision sends is unit-tested without Kafka.

Ids are deterministic (``decision_id``): the same decision from the same inputs has the
same id, which is the sinks' idempotency key and makes a replay recognisable."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors.ids import decision_id
from processors.matching import SLA_BREACHED
from processors.pipeline import PipelineOutcome
from processors.sla import Firing, Timer, TimerChange
from processors.state import ContactState
from processors.workflow_engine import Audit, Effect, Message, Task, Upsert

# Every routing message goes to one partition, where the router decides in one order.
ROUTER_KEY = "router"

# (channel name, key, record): what a stage sends, to which Channels field.
Output = tuple[str, str, dict[str, Any]]


def audit_entry(
    contact_id: str,
    stage: str,
    decision: str,
    reason: str,
    inputs: dict[str, Any],
    causes: list[str],
    at: datetime,
) -> dict[str, Any]:
    return {
        # The reason tells apart two decisions of one kind without a causing event (merges).
        "audit_id": decision_id(contact_id, stage, decision, reason, *causes),
        "contact_id": contact_id,
        "recorded_at": at,
        "stage": stage,
        "decision": decision,
        "reason": reason,
        "inputs": {k: str(v) for k, v in inputs.items()},
        "causation_event_ids": causes,
    }


def notification(
    contact_id: str,
    notification_id: str,
    channel: str,
    recipient: str,
    template: str,
    subject: str | None,
    context: dict[str, str],
    at: datetime,
    cause: str | None,
) -> Output:
    record = {
        "notification_id": notification_id,
        "channel": channel,
        "recipient": recipient,
        "template": template,
        "subject": subject,
        "context": context,
        "contact_id": contact_id,
        "issued_at": at,
        "causation_event_id": cause,
    }
    return ("notifications", contact_id, record)


def crm_command(
    contact_id: str, kind: str, command_id: str, payload: dict[str, Any], at: datetime, cause: str
) -> Output:
    record = {
        "command_id": command_id,
        "command_type": kind,
        "contact_id": contact_id,
        "issued_at": at,
        "causation_event_id": cause,
        "payload": payload,
    }
    return ("commands", contact_id, record)


def upsert_contact(
    state: ContactState, command_id: str, cause: str | None, at: datetime, **properties: str
) -> dict[str, Any]:
    """An UPSERT_CONTACT with what the CRM should show: identifiers, profile, score."""

    return {
        "command_id": command_id,
        "command_type": "UPSERT_CONTACT",
        "contact_id": state.contact_id,
        "issued_at": at,
        "causation_event_id": cause,
        "payload": {
            "email": state.identifier("email"),
            "phone": state.identifier("phone"),
            "crm_id": state.identifier("crm"),
            "first_name": state.profile.get("first_name"),
            "last_name": state.profile.get("last_name"),
            "company": state.profile.get("company"),
            "title": state.profile.get("title"),
            "properties": {
                "lead_score": f"{state.score:g}",
                **({"lead_band": state.band} if state.band else {}),
                **properties,
            },
        },
    }


def route_request(state: ContactState, cause: str, at: datetime) -> Output:
    return (
        "routing",
        ROUTER_KEY,
        {
            "kind": "ROUTE",
            "contact_id": state.contact_id,
            "contact": state.model_dump_json(),
            "rep_id": None,
            "rep": None,
            "cause": cause,
            "at": at,
        },
    )


# ---- SLA timers ------------------------------------------------------------------------

_CHANGE_DECISIONS = {
    "started": "sla_started",
    "restarted": "sla_restarted",
    "stopped": "sla_met",
    "cancelled": "sla_cancelled",
}


def timer_change_audit(contact_id: str, change: TimerChange, cause: str) -> dict[str, Any]:
    timer = change.timer
    inputs: dict[str, Any] = {
        "policy": timer.policy,
        "timer_id": timer.timer_id,
        "started_at": timer.started_at.isoformat(),
        "breach_at": timer.breach_at.isoformat(),
        "owner_id": timer.owner_id or "",
        **timer.context,
    }
    if change.change == "stopped":
        inputs["waited_s"] = int((change.at - timer.started_at).total_seconds())
        inputs["level"] = timer.level
    return audit_entry(
        contact_id,
        "sla",
        _CHANGE_DECISIONS[change.change],
        f"{timer.policy}: {change.reason}",
        inputs,
        [cause],
        change.at,
    )


def _step_id(kind: str, contact_id: str, timer: Timer, level: int) -> str:
    # A timer is one run of a clock: its policy, subject and start tell it apart.
    return decision_id(kind, contact_id, timer.timer_id, timer.started_at.isoformat(), str(level))


def firing_outputs(state: ContactState, firing: Firing, now: datetime) -> list[Output]:
    """What one escalation step sends: its action, and an audit entry that says why."""
    timer, step, level = firing.timer, firing.step, firing.level
    contact_id = state.contact_id
    policy = firing.policy
    outputs: list[Output] = []
    context = {
        "who": state.who(),
        "contact_id": contact_id,
        "company": state.profile.get("company", ""),
        "policy": policy.name,
        "expectation": policy.description,
        "breach_at": f"{timer.breach_at:%Y-%m-%d %H:%M}Z",
        "started_at": f"{timer.started_at:%Y-%m-%d %H:%M}Z",
        "level": str(level),
        "owner_id": state.owner_id or "",
        "score": f"{state.score:g}",
        **timer.context,
    }
    outcome: str = step.action
    if step.action in ("remind_owner", "notify_manager"):
        owner = step.action == "remind_owner"
        recipient = step.recipient or (state.owner_email if owner else state.manager_email)
        if recipient is None:
            outcome = f"{step.action} skipped: no e-mail known for the " + (
                "owner" if owner else "owner's manager"
            )
        else:
            outputs.append(
                notification(
                    contact_id,
                    _step_id("sla-notify", contact_id, timer, level),
                    step.channel or "EMAIL",
                    recipient,
                    "sla_reminder" if owner else "sla_escalation",
                    None,
                    context,
                    now,
                    timer.cause,
                )
            )
    elif step.action == "reassign":
        outputs.append(route_request(state, timer.cause, now))
    else:  # flag_crm
        command_id = _step_id("sla-flag", contact_id, timer, level)
        outputs.append(
            (
                "commands",
                contact_id,
                upsert_contact(
                    state,
                    command_id,
                    timer.cause,
                    now,
                    sla_breach=policy.name,
                    sla_breached_at=timer.breach_at.isoformat(),
                ),
            )
        )
    decision = "sla_breached" if level == 1 else "sla_escalated"
    late = (
        f", {firing.lateness.total_seconds():.0f}s late"
        if firing.lateness.total_seconds() >= 1
        else ""
    )
    reason = (
        f"{policy.name}: not met by {timer.breach_at:%Y-%m-%d %H:%M}Z "
        f"({policy.description}); step {level} of {len(policy.escalations)}: {outcome}{late}"
    )
    inputs = {
        "policy": policy.name,
        "timer_id": timer.timer_id,
        "level": level,
        "action": step.action,
        "started_at": timer.started_at.isoformat(),
        "breach_at": timer.breach_at.isoformat(),
        "due_at": timer.due_at.isoformat(),
        "fired_at": now.isoformat(),
        "lateness_ms": int(firing.lateness.total_seconds() * 1000),
        "owner_id": state.owner_id or "",
        "final": firing.final,
        **timer.context,
    }
    audit = audit_entry(contact_id, "sla", decision, reason, inputs, [timer.cause], now)
    audit["audit_id"] = _step_id("sla-audit", contact_id, timer, level)
    outputs.append(("audit", contact_id, audit))
    return outputs


def breach_trigger(contact_id: str, firing: Firing) -> dict[str, Any]:
    """An escalation step as an SLA_BREACHED trigger, so a workflow can start on it (the
    stale-deal clock breaching starts re-engagement)."""
    timer = firing.timer
    return {
        "event_id": _step_id("sla-breach", contact_id, timer, firing.level),
        "event_type": SLA_BREACHED,
        "event_time": timer.due_at,
        "payload": {
            "policy": timer.policy,
            "level": str(firing.level),
            "timer_id": timer.timer_id,
            **({"deal_id": timer.subject} if timer.subject else {}),
        },
    }


# ---- pipeline triggers -----------------------------------------------------------------


def pipeline_outputs(
    state: ContactState, outcome: PipelineOutcome, event: dict[str, Any]
) -> list[Output]:
    """The commands, notifications and audit entries of the pipeline rules an event met."""
    contact_id, at, cause = state.contact_id, event["event_time"], event["event_id"]
    outputs: list[Output] = []

    def command(kind: str, command_id: str, payload: dict[str, Any]) -> None:
        outputs.append(crm_command(contact_id, kind, command_id, payload, at, cause))

    def audit(decision: str, reason: str, inputs: dict[str, Any]) -> None:
        entry = audit_entry(contact_id, "pipeline", decision, reason, inputs, [cause], at)
        outputs.append(("audit", contact_id, entry))

    for move in outcome.moves:
        deal = outcome.state.open_deals.get(move.deal_id)
        if move.created:
            command(
                "CREATE_DEAL",
                decision_id("create-deal", contact_id, move.deal_id, cause),
                {
                    "deal_id": move.deal_id,
                    "name": move.deal_name or move.deal_id,
                    "stage": move.stage,
                    "pipeline": None,
                    "amount_minor": deal.amount_minor if deal else None,
                    "currency": deal.currency if deal else None,
                },
            )
        else:
            command(
                "UPDATE_DEAL_STAGE",
                decision_id("deal-stage", contact_id, move.deal_id, move.stage, cause),
                {
                    "deal_id": move.deal_id,
                    "stage": move.stage,
                    "previous_stage": move.previous_stage,
                },
            )
        inputs = {
            "rule": move.rule,
            "deal_id": move.deal_id,
            "stage": move.stage,
            "previous_stage": move.previous_stage or "",
        }
        audit("deal_created" if move.created else "deal_moved", move.reason, inputs)
    for task in outcome.tasks:
        command(
            "CREATE_TASK",
            task.task_id,
            {
                "task_id": task.task_id,
                "title": task.title,
                "due_at": task.due_at,
                "owner_id": task.owner_id,
                "priority": task.priority,
                "notes": task.notes,
            },
        )
        audit(
            "task_created",
            f"{task.rule}: {task.title}",
            {"rule": task.rule, "task_id": task.task_id, "due_at": task.due_at.isoformat()},
        )
    for message in outcome.messages:
        outputs.append(
            notification(
                contact_id,
                message.notification_id,
                message.channel,
                message.recipient,
                message.template,
                message.subject,
                message.context,
                at,
                cause,
            )
        )
        audit(
            "contact_notified",
            f"{message.rule}: {message.template} by {message.channel}",
            {"rule": message.rule, "template": message.template, "channel": message.channel},
        )
    for reason in outcome.skipped:
        audit("notification_skipped", reason, {})
    return outputs


def stage_change_triggers(outcome: PipelineOutcome, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The pipeline's own deal moves as DEAL_STAGE_CHANGED triggers, so the stale-deal
    clock follows them without waiting for the CRM's change feed to echo them."""
    return [
        {
            "event_id": f"{event['event_id']}:{move.rule}:{move.deal_id}",
            "event_type": "DEAL_STAGE_CHANGED",
            "event_time": event["event_time"],
            "payload": {
                "deal_id": move.deal_id,
                "stage": move.stage,
                "previous_stage": move.previous_stage,
            },
        }
        for move in outcome.moves
    ]


# ---- workflows -------------------------------------------------------------------------


def workflow_outputs(state: ContactState, effects: list[Effect], now: datetime) -> list[Output]:
    """What the workflow engine decided, as records, in the order it decided them."""
    contact_id = state.contact_id
    outputs: list[Output] = []

    for effect in effects:
        if isinstance(effect, Audit):
            entry = audit_entry(
                contact_id,
                "workflow",
                effect.decision,
                effect.reason,
                effect.inputs,
                [effect.cause],
                now,
            )
            entry["audit_id"] = effect.audit_id
            outputs.append(("audit", contact_id, entry))
        elif isinstance(effect, Message):
            outputs.append(
                notification(
                    contact_id,
                    effect.notification_id,
                    effect.channel,
                    effect.recipient,
                    effect.template,
                    effect.subject,
                    effect.context,
                    now,
                    effect.cause,
                )
            )
        elif isinstance(effect, Upsert):
            record = upsert_contact(
                state, effect.command_id, effect.cause, now, **effect.properties
            )
            outputs.append(("commands", contact_id, record))
        elif isinstance(effect, Task):
            payload = {
                "task_id": effect.task_id,
                "title": effect.title,
                "due_at": effect.due_at,
                "owner_id": state.owner_id,
                "priority": effect.priority,
                "notes": effect.notes,
            }
            outputs.append(
                crm_command(contact_id, "CREATE_TASK", effect.task_id, payload, now, effect.cause)
            )
        else:
            payload = {
                "deal_id": effect.deal_id,
                "stage": effect.stage,
                "previous_stage": effect.previous_stage,
            }
            outputs.append(
                crm_command(
                    contact_id, "UPDATE_DEAL_STAGE", effect.command_id, payload, now, effect.cause
                )
            )
    return outputs
