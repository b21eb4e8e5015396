"""The contact's timeline in the CRM: an activity per call, message, meeting or payment,
the next step a call asks of the owner, and the request to route a lead."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from processors.ids import decision_id
from processors.records.base import ROUTER_KEY, audit_entry, crm_command
from processors.routing import ROUTED_FIELDS
from processors.state import ContactState, NextStep
from streams.engine import Output

# A call's next step becomes the owner's task, due this long after the call.
NEXT_STEP_DUE = timedelta(hours=1)


# Outcomes after which the caller expects to hear back soon.
URGENT_OUTCOMES = {"qualified", "callback_requested", "booked", "interested"}

# The event types activity() logs: the rest (most events) need no record made and hashed.
ACTIVITY_TYPES = frozenset(
    {
        "CALL_COMPLETED",
        "EMAIL_REPLIED",
        "MEETING_BOOKED",
        "MEETING_COMPLETED",
        "FORM_SUBMITTED",
        "PAYMENT_RECEIVED",
        "INVOICE_PAID",
    }
)


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
    if kind not in ACTIVITY_TYPES:
        return None
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
            "contact": state.model_dump_json(include=set(ROUTED_FIELDS)),
            "rep_id": None,
            "rep": None,
            "cause": cause,
            "at": at,
        },
    )
