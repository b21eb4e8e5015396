"""What SLA clocks write: an audit entry per start, stop or move, and each escalation
step's reminder, task or reassignment when due."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors.ids import decision_id
from processors.matching import SLA_BREACHED
from processors.records.base import audit_entry, notification
from processors.records.contact import upsert_contact
from processors.records.timeline import route_request
from processors.sla import Firing, Timer, TimerChange
from processors.state import ContactState
from streams.engine import Output

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
    audit_id = _step_id("sla-audit", contact_id, timer, level)
    audit = audit_entry(contact_id, "sla", decision, reason, inputs, [timer.cause], now, audit_id)
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
