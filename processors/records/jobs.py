"""Job records in the CRM (processors.jobs decides them) and the operations team's notices."""

from __future__ import annotations

from datetime import datetime

from processors.ids import decision_id
from processors.jobs import INSPECTION, JobChange, Operations, address_of, inspection_job_id
from processors.records.base import audit_entry, crm_command, notification
from processors.records.timeline import _money
from processors.state import ContactState
from processors.workflows.effects import Task
from streams.engine import Output


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
