"""The three shapes every decision's records take: an audit entry, a notification and
a CRM command, each with a deterministic id (``decision_id``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from processors.ids import decision_id
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
    audit_id: str | None = None,
) -> dict[str, Any]:
    return {
        # The reason tells apart two decisions of one kind without a causing event (merges).
        "audit_id": audit_id or decision_id(contact_id, stage, decision, reason, *causes),
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
