"""The records the contact stage sends for its decisions: audit entries, CRM commands,
notifications and routing requests, built from pure inputs (state, decision, time), so
what a decision sends is unit-tested without Kafka.

Ids are deterministic (``decision_id``): the same decision from the same inputs has the
same id, which is the sinks' idempotency key and makes a replay recognisable."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from processors.area import facts as area_facts
from processors.ids import decision_id
from processors.jobs import INSPECTION, JobChange, Operations, address_of, inspection_job_id
from processors.matching import SLA_BREACHED
from processors.pipeline import PipelineOutcome
from processors.profile import CRM_PROPERTIES
from processors.sla import Firing, Timer, TimerChange
from processors.state import ContactState, NextStep, OwnerTask, kept_tasks
from processors.workflows.effects import Audit, Effect, Message, Task, Upsert
from streams.engine import Output

# Every routing message goes to one partition, where the router decides in one order.
ROUTER_KEY = "router"


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
    contact_id: str,
    kind: str,
    command_id: str,
    payload: dict[str, Any],
    at: datetime,
    cause: str | None,
    topic: str = "commands",
) -> Output:
    record = {
        "command_id": command_id,
        "command_type": kind,
        "contact_id": contact_id,
        "issued_at": at,
        "causation_event_id": cause,
        "payload": payload,
    }
    return (topic, contact_id, record)


def contact_fields(state: ContactState) -> dict[str, Any]:
    """What the CRM contact shows of the state, but the score (which moves with nearly
    every event, so it rides along with the changes that matter instead)."""
    return {
        "email": state.identifier("email"),
        "phone": state.identifier("phone"),
        "crm_id": state.identifier("crm"),
        "first_name": state.profile.get("first_name"),
        "last_name": state.profile.get("last_name"),
        "company": state.profile.get("company"),
        "title": state.profile.get("title"),
        "properties": {
            **{k: state.profile[k] for k in CRM_PROPERTIES if k in state.profile},
            **({"lead_band": state.band} if state.band else {}),
            **area_properties(state),
        },
    }


def area_properties(state: ContactState) -> dict[str, str]:
    """The service-area check as CRM properties: service_area (in, out, unknown),
    service_branch, distance_km."""
    found = area_facts(state.area)
    return {("service_branch" if k == "branch" else k): v for k, v in found.items()}


def qualification_audit(
    before: ContactState | None, state: ContactState, event: dict[str, Any]
) -> list[Output]:
    """Audit entries for what qualification learnt: an enrichment provider's answer (the
    fields it gave), and a new service-area check (in area, branch, distance). Most events
    are neither: one string compare and one identity test."""
    out: list[Output] = []
    contact_id, at, causes = state.contact_id, event["event_time"], [event["event_id"]]
    if event["event_type"] == "CONTACT_ENRICHED":
        p = event["payload"]
        fields = p.get("fields") or {}
        reason = (
            f"{p['provider']} knows "
            + " and ".join(
                w
                for w, on in (
                    ("the company", p["company_found"]),
                    ("the person", p["person_found"]),
                )
                if on
            )
            if p["status"] == "found"
            else f"{p['provider']} knows neither {p.get('domain') or 'the domain'} nor the e-mail"
        )
        inputs = {
            "domain": p.get("domain") or "",
            **{f"enriched.{k}": v for k, v in fields.items()},
        }
        decision = "enriched" if p["status"] == "found" else "not_enriched"
        out.append(
            (
                "audit",
                contact_id,
                audit_entry(contact_id, "enrichment", decision, reason, inputs, causes, at),
            )
        )
    area = state.area
    previous = before.area if before is not None else None
    if area is not None and (
        previous is None or (previous.postcode, previous.country) != (area.postcode, area.country)
    ):
        inputs = {"postcode": area.postcode, **area_facts(area)}
        if area.team:
            inputs["team"] = area.team
        decision = {True: "in_area", False: "out_of_area", None: "area_unknown"}[area.in_area]
        out.append(
            (
                "audit",
                contact_id,
                audit_entry(contact_id, "area", decision, area.reason, inputs, causes, at),
            )
        )
    return out


def upsert_contact(
    state: ContactState, command_id: str, cause: str | None, at: datetime, **properties: str
) -> dict[str, Any]:
    """An UPSERT_CONTACT with what the CRM should show: identifiers, profile, score."""
    payload = contact_fields(state)
    payload["properties"] = {"lead_score": f"{state.score:g}", **payload["properties"]}
    payload["properties"].update(properties)
    return {
        "command_id": command_id,
        "command_type": "UPSERT_CONTACT",
        "contact_id": state.contact_id,
        "issued_at": at,
        "causation_event_id": cause,
        "payload": payload,
    }


def merge_outputs(
    before: ContactState | None,
    merged: ContactState,
    retired: str,
    identifier: str,
    at: datetime,
    adopted: Iterable[str] = (),
) -> list[Output]:
    """What the CRM is told of a merge, in order: MERGE_CONTACTS (it moves everything of
    ``retired`` onto the survivor), the owner the survivor keeps when it came from the
    retired contact (a CRM's own merge keeps the survivor's fields, blank or not), the
    merged profile, and a CREATE_DEAL under the survivor for each open deal it
    ``adopted`` from ``retired``.

    The retired contact's own CREATE_DEAL went out keyed by it, on another partition, in
    no order with the survivor's later stage changes; made again here (same deal id, its
    values now) it comes before them in the survivor's order, and after the profile (a CRM
    ties a deal to a contact that exists). A sink applies a CREATE_DEAL of a deal that
    exists as nothing, so whichever create comes second changes nothing. A deal without a
    name is the CRM's own (known from its change feed), never Switchboard's to create."""
    survivor = merged.contact_id
    cause = f"merged:{retired}"
    outputs = [
        crm_command(
            survivor,
            "MERGE_CONTACTS",
            decision_id("merge", survivor, retired),
            {"retired_contact_id": retired, "identifier": identifier},
            at,
            None,
        )
    ]
    previous = before.owner_id if before else None
    if merged.owner_id is not None and merged.owner_id != previous:
        payload = {
            "owner_id": merged.owner_id,
            "previous_owner_id": previous,
            "reason": f"kept from {retired}, merged into this contact",
        }
        command_id = decision_id("merge-owner", survivor, retired)
        outputs.append(crm_command(survivor, "SET_OWNER", command_id, payload, at, None))
    upsert = upsert_contact(merged, decision_id("upsert", survivor, cause), cause, at)
    outputs.append(("commands", survivor, upsert))
    for deal_id in adopted:
        deal = merged.open_deals.get(deal_id)
        if deal is None or deal.name is None:
            continue
        command_id = decision_id("merge-deal", survivor, retired, deal_id)
        payload = deal_payload(deal_id, deal.name, deal.stage, deal.amount_minor, deal.currency)
        outputs.append(crm_command(survivor, "CREATE_DEAL", command_id, payload, at, None))
    return outputs


def deal_payload(
    deal_id: str, name: str, stage: str, amount_minor: int | None, currency: str | None
) -> dict[str, Any]:
    """A CREATE_DEAL's payload."""
    return {
        "deal_id": deal_id,
        "name": name,
        "stage": stage,
        "pipeline": None,
        "amount_minor": amount_minor,
        "currency": currency,
    }


# ---- the contact's timeline in the CRM -------------------------------------------------

# A call's next step becomes the owner's task, due this long after the call.
NEXT_STEP_DUE = timedelta(hours=1)
# Outcomes after which the caller expects to hear back soon.
URGENT_OUTCOMES = {"qualified", "callback_requested", "booked", "interested"}


def _money(amount_minor: int, currency: str) -> str:
    return f"{amount_minor / 100:,.2f} {currency.upper()}"


def _duration(seconds: int) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _lines(*pairs: tuple[str, Any]) -> str | None:
    shown = [f"{label}: {value}" for label, value in pairs if value not in (None, "")]
    return "\n".join(shown) or None


def activity(event: dict[str, Any]) -> dict[str, Any] | None:
    """The LOG_ACTIVITY payload of what happened with the person, for the CRM's timeline:
    calls, e-mail replies, meetings booked and held, forms and payments; None for the
    rest (opens and clicks are scoring's, not the rep's timeline)."""
    kind, p = event["event_type"], event["payload"]
    record: dict[str, Any] = {
        "activity_id": decision_id("activity", event["event_id"]),
        "occurred_at": event["event_time"],
        "outcome": None,
        "duration_seconds": None,
        "summary": None,
        "direction": "inbound",
        "status": None,
        "handled_by": None,
        "recording_url": None,
    }
    if kind == "CALL_COMPLETED":
        direction = p["direction"].lower()
        return record | {
            "activity_type": "call",
            "title": f"{direction.capitalize()} call ({p['status']}, "
            f"{_duration(p['duration_seconds'])})",
            "direction": direction,
            "status": p["status"],
            "duration_seconds": p["duration_seconds"],
            "outcome": p["outcome"],
            "summary": _lines(
                ("Summary", p["transcript_summary"]),
                ("Service requested", p["requested_service"]),
                ("Next step", p["next_step"]),
            ),
            "handled_by": p["handled_by"],
            "recording_url": p["recording_url"],
        }
    if kind == "EMAIL_REPLIED":
        return record | {
            "activity_type": "email",
            "title": f"E-mail reply: {p['subject'] or '(no subject)'}",
            "summary": p["snippet"],
        }
    if kind == "MEETING_BOOKED":
        return record | {
            "activity_type": "meeting",
            "title": f"Meeting booked: {p['title'] or 'meeting'}",
            "status": "scheduled",
            "summary": _lines(
                ("Starts", f"{p['starts_at']:%Y-%m-%d %H:%M} UTC"),
                ("Host", p["host"]),
                ("Where", p["location"]),
            ),
        }
    if kind == "MEETING_COMPLETED":
        return record | {
            "activity_type": "meeting",
            "title": "Meeting held",
            "direction": "outbound",
            "status": "completed",
            "outcome": p["outcome"],
            "handled_by": p["host"],
        }
    if kind == "FORM_SUBMITTED":
        return record | {
            "activity_type": "form",
            "title": f"Form submitted: {p['form_name'] or p['form_id']}",
            "summary": _lines(*sorted(p["fields"].items()), ("Page", p["page_url"])),
        }
    if kind in ("PAYMENT_RECEIVED", "INVOICE_PAID"):
        return record | {
            "activity_type": "payment",
            "title": f"Payment received: {_money(p['amount_minor'], p['currency'])}",
            "status": "paid",
            "summary": _lines(
                ("Method", p.get("method")),
                ("Invoice", p.get("invoice_id")),
                ("Payment", p.get("payment_id")),
            ),
        }
    return None


def next_step(state: ContactState, event: dict[str, Any]) -> NextStep | None:
    """The task a call's next step (a voice AI's, or a rep's notes) or a callback the
    person asked for asks of the owner, with what they need before dialling back; None
    when the event asks for none."""
    p = event["payload"]
    if event["event_type"] == "CALLBACK_REQUESTED":
        return NextStep(
            task_id=decision_id("callback", event["event_id"]),
            title=f"Call back {state.who()}"[:500],
            due_at=p["due_at"],
            priority="HIGH",
            notes=_lines(
                ("Reason", p["reason"]),
                ("Number", p["phone"] or state.identifier("phone")),
                ("Asked during call", p["call_id"]),
            ),
            cause=event["event_id"],
            at=event["event_time"],
        )
    if event["event_type"] != "CALL_COMPLETED" or not p["next_step"]:
        return None
    return NextStep(
        task_id=decision_id("next-step", event["event_id"]),
        title=f"{p['next_step']} \u2014 {state.who()}"[:500],
        due_at=event["event_time"] + NEXT_STEP_DUE,
        priority="HIGH" if (p["outcome"] or "").lower() in URGENT_OUTCOMES else "MEDIUM",
        notes=_lines(
            ("Outcome", p["outcome"]),
            ("Service requested", p["requested_service"]),
            ("Summary", p["transcript_summary"]),
            ("Call", f"{p['direction'].lower()}, {p['status']}, handled by {p['handled_by']}"),
            ("Recording", p["recording_url"]),
        ),
        cause=event["event_id"],
        at=event["event_time"],
    )


def activity_outputs(state: ContactState, event: dict[str, Any]) -> list[Output]:
    """The event's activity on the contact's timeline, if it is one, or its note."""
    if event["event_type"] == "NOTE_LOGGED":
        p = event["payload"]
        note_id = decision_id("note", event["event_id"])
        body = _lines(("Note", p["body"]), ("By", p["author"]), ("During call", p["call_id"]))
        note = {"note_id": note_id, "body": body or p["body"]}
        return [
            crm_command(
                state.contact_id, "ADD_NOTE", note_id, note, event["event_time"], event["event_id"]
            )
        ]
    logged = activity(event)
    if logged is None:
        return []
    command = crm_command(
        state.contact_id,
        "LOG_ACTIVITY",
        logged["activity_id"],
        logged,
        event["event_time"],
        event["event_id"],
    )
    return [command]


def next_step_outputs(contact_id: str, task: NextStep, owner_id: str | None) -> list[Output]:
    """The CREATE_TASK of a call's next step for ``owner_id``, and its audit entry."""
    payload = {
        "task_id": task.task_id,
        "title": task.title,
        "due_at": task.due_at,
        "owner_id": owner_id,
        "priority": task.priority,
        "notes": task.notes,
    }
    entry = audit_entry(
        contact_id,
        "timeline",
        "task_created",
        f"call's next step: {task.title}",
        {"task_id": task.task_id, "owner_id": owner_id or ""},
        [task.cause],
        task.at,
    )
    return [
        crm_command(contact_id, "CREATE_TASK", task.task_id, payload, task.at, task.cause),
        ("audit", contact_id, entry),
    ]


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
        if move.created:
            command(
                "CREATE_DEAL",
                decision_id("create-deal", contact_id, move.deal_id, cause),
                deal_payload(
                    move.deal_id,
                    move.deal_name or move.deal_id,
                    move.stage,
                    move.amount_minor,
                    move.currency,
                ),
            )
        else:
            command(
                "UPDATE_DEAL_STAGE",
                decision_id("deal-stage", contact_id, move.deal_id, move.stage, cause),
                {
                    "deal_id": move.deal_id,
                    "stage": move.stage,
                    "previous_stage": move.previous_stage,
                    "amount_minor": move.amount_minor,
                    "currency": move.currency,
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
            if effect.job_type is not None:
                outputs += scheduled_job_outputs(state, effect, now)
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


# ---- billing ---------------------------------------------------------------------------


def invoice_outputs(state: ContactState, event: dict[str, Any]) -> list[Output]:
    """A completed billable job's CREATE_INVOICE, to the billing sink, and its audit entry;
    the audit entry alone when the job cannot be billed (no e-mail to find the customer
    by, no amount); nothing for any other event.

    The command id is the job's, not the event's: a job reported completed twice is one
    invoice (the billing sink's ledger and Stripe's idempotency keys see the same id)."""
    if event["event_type"] != "JOB_STATUS_CHANGED":
        return []
    p = event["payload"]
    if not p.get("billable") or str(p["status"]).lower() != "completed":
        return []
    contact_id, at, cause = state.contact_id, event["event_time"], event["event_id"]
    job_id, system = p["job_id"], event["source_system"]
    lines = [
        {
            "description": item["description"],
            "quantity": item["quantity"],
            "unit_amount_minor": item["unit_amount_minor"],
        }
        for item in p.get("line_items") or []
    ]
    title = str(p["job_type"]).replace("_", " ").capitalize()
    if not lines and p.get("amount_minor") is not None:
        line = {"description": title, "quantity": 1, "unit_amount_minor": p["amount_minor"]}
        lines = [line]
    total = sum(line["quantity"] * line["unit_amount_minor"] for line in lines)
    email, currency = state.identifier("email"), p.get("currency")
    inputs: dict[str, Any] = {"job_id": job_id, "job_system": system, "job_type": p["job_type"]}
    problem = (
        "no e-mail address to find the customer by" if email is None
        else "no amount and no line items" if not lines
        else "no currency" if not currency
        else "nothing to bill (the total is 0)" if total == 0
        else None
    )  # fmt: skip
    if problem is not None:
        entry = audit_entry(
            contact_id,
            "billing",
            "invoice_skipped",
            f"job {job_id}: {problem}",
            inputs,
            [cause],
            at,
        )
        return [("audit", contact_id, entry)]
    assert email is not None and currency  # for mypy: problem says so
    command_id = decision_id("invoice", system, job_id)
    payload = {
        "job_id": job_id,
        "job_system": system,
        "email": email,
        "name": state.person_name() or None,
        "currency": currency.upper(),
        "amount_minor": total,
        "lines": lines,
        "description": f"{title}, job {job_id}",
    }
    inputs |= {
        "command_id": command_id,
        "amount": _money(total, currency),
        "lines": len(lines),
        "email": email,
    }
    entry = audit_entry(
        contact_id,
        "billing",
        "invoice_requested",
        f"job {job_id} completed and billable: invoice of {_money(total, currency)}",
        inputs,
        [cause],
        at,
    )
    command = crm_command(
        contact_id, "CREATE_INVOICE", command_id, payload, at, cause, topic="billing"
    )
    return [command, ("audit", contact_id, entry)]


# ---- job records -----------------------------------------------------------------------


def job_outputs(state: ContactState, change: JobChange, operations: Operations) -> list[Output]:
    """A job change's UPSERT_JOB and its audit entry, and for a payment's job a
    notification to each operations recipient."""
    contact_id, at, cause = state.contact_id, change.at, change.cause
    fields = change.fields
    command_id = decision_id("upsert-job", change.job_id, cause)
    outputs: list[Output] = [crm_command(contact_id, "UPSERT_JOB", command_id, fields, at, cause)]
    inputs = {
        k: v.isoformat() if isinstance(v, datetime) else v
        for k, v in fields.items()
        if v is not None
    }
    decision = "job_created" if change.created else "job_updated"
    entry = audit_entry(contact_id, "jobs", decision, change.reason, inputs, [cause], at)
    outputs.append(("audit", contact_id, entry))
    if not change.paid or not operations.recipients:
        return outputs
    amount = fields["amount_minor"]
    context = {
        "who": state.who(),
        "contact_id": contact_id,
        "company": state.profile.get("company", ""),
        "email": state.identifier("email") or "",
        "phone": state.identifier("phone") or "",
        "amount": _money(amount, fields["currency"]) if amount is not None else "",
        "service": fields["service"] or "",
        "address": fields["address"] or "",
        "job_id": change.job_id,
        "paid_for": change.reason,
        "owner_id": state.owner_id or "",
    }
    for recipient in operations.recipients:
        outputs.append(
            notification(
                contact_id,
                decision_id("ops-paid", change.job_id, recipient),
                operations.channel,
                recipient,
                "payment_received_ops",
                f"Paid: {context['amount']} from {context['who']}",
                context,
                at,
                cause,
            )
        )
    notified = audit_entry(
        contact_id,
        "jobs",
        "operations_notified",
        f"payment: operations told by {operations.channel}",
        {"job_id": change.job_id, "recipients": ",".join(operations.recipients)},
        [cause],
        at,
    )
    outputs.append(("audit", contact_id, notified))
    return outputs


def scheduled_job_outputs(state: ContactState, task: Task, now: datetime) -> list[Output]:
    """The job record a workflow's task schedules beside itself (the follow-up
    inspection): status scheduled, due when the task is."""
    job_id = inspection_job_id(task.task_id)
    # The trigger names the field system's job; the record has Switchboard's id.
    related = next((k for k, j in state.jobs.items() if j.external_id == task.related_job_id), None)
    fields = {
        "job_id": job_id,
        "job_type": task.job_type,
        "status": "scheduled",
        "title": task.title,
        "service": INSPECTION if task.job_type == INSPECTION else None,
        "address": address_of(state),
        "amount_minor": None,
        "currency": None,
        "scheduled_for": task.due_at,
        "completed_at": None,
        "technician": None,
        "external_id": None,
        "related_job_id": related,
    }
    contact_id = state.contact_id
    command = crm_command(
        contact_id, "UPSERT_JOB", decision_id("upsert-job", job_id), fields, now, task.cause
    )
    entry = audit_entry(
        contact_id,
        "jobs",
        "job_scheduled",
        f"{task.job_type} due {task.due_at:%Y-%m-%d}: {task.title}",
        {"job_id": job_id, "task_id": task.task_id, "follows": task.related_job_id or ""},
        [task.cause],
        now,
    )
    return [command, ("audit", contact_id, entry)]


def with_tasks(state: ContactState, outputs: list[Output]) -> ContactState:
    """``state`` remembering the tasks ``outputs`` create for the owner (a pipeline
    rule's, a workflow's, an SLA escalation's, a call's next step), for the caller lookup."""
    tasks = state.tasks
    for topic, _, record in outputs:
        if topic == "commands" and record["command_type"] == "CREATE_TASK":
            p = record["payload"]
            made = OwnerTask(
                task_id=p["task_id"], title=p["title"], due_at=p["due_at"], at=record["issued_at"]
            )
            tasks = kept_tasks(tasks, made)
    return state if tasks is state.tasks else state.model_copy(update={"tasks": tasks})
