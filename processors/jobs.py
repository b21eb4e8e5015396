"""Job records: the field-service jobs a contact has in the CRM, decided from what happened.

- A payment (PAYMENT_RECEIVED, INVOICE_PAID) makes a job record: the service the contact
  asked for, where, what was paid, status ``pending`` (paid, not yet booked). A payment
  and its invoice's ``invoice.paid`` name the same invoice and make one job, not two.
- A job status change from a field system (JOB_STATUS_CHANGED) updates the job it names:
  found by the field system's job id; else the contact's newest open job that no field
  system has named yet (the one its payment made) becomes it; else a new record. A change
  older than the record's last one is ignored (field systems deliver out of order).
- A completed job's follow-up inspection is a scheduled job record too; the job-completed
  workflow's task step makes it (``job:`` on the step; records/workflows.py).

Pure: ``decide(state, event)`` returns the new state and the change, so it is unit-tested
without Kafka; processors.records.jobs turns a change into its UPSERT_JOB, audit entry and the
operations team's notifications."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from processors.ids import decision_id
from processors.state import ContactState, JobRef, kept_jobs

PAYMENTS = frozenset({"PAYMENT_RECEIVED", "INVOICE_PAID"})
JOB_EVENTS = PAYMENTS | {"JOB_STATUS_CHANGED"}
# A job in one of these is finished: a payment's job no longer waits for the field system.
CLOSED = frozenset({"completed", "cancelled", "canceled"})
SERVICE = "service"  # the job type of a job a payment made, until a field system names it
INSPECTION = "inspection"


@dataclass(frozen=True)
class Operations:
    """Who hears of each payment (settings operations_channel, operations_recipients): a
    Slack channel, a webhook recipient, or e-mail addresses, one notification each."""

    channel: str = "SLACK"
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobChange:
    """An UPSERT_JOB to send: ``fields`` are its payload's (None leaves a stored value)."""

    job_id: str
    created: bool
    reason: str
    fields: dict[str, Any]
    cause: str
    at: datetime
    paid: bool  # made by a payment: the operations team hears of it


def address_of(state: ContactState) -> str | None:
    """Where a job is done: the contact's address, on one line."""
    parts = [state.profile.get(k) for k in ("address", "city", "postcode")]
    return ", ".join(p for p in parts if p) or None


def decide(state: ContactState, event: dict[str, Any]) -> tuple[ContactState, JobChange | None]:
    """The job change ``event`` makes, and the state that remembers it; (state, None) when
    it makes none."""
    if event["event_type"] in PAYMENTS:
        return _paid(state, event)
    return _status_changed(state, event)


def _paid(state: ContactState, event: dict[str, Any]) -> tuple[ContactState, JobChange | None]:
    p, at = event["payload"], event["event_time"]
    # A payment intent and the invoice it paid arrive as two events: one job.
    paid_for = p.get("invoice_id") or p.get("payment_id") or event["event_id"]
    job_id = decision_id("job", state.contact_id, "paid", paid_for)
    if job_id in state.jobs:
        return state, None
    service = state.profile.get("service")
    amount = f"{p['amount_minor'] / 100:,.2f} {p['currency'].upper()}"
    fields = {
        "job_id": job_id,
        "job_type": SERVICE,
        "status": "pending",
        "title": f"{service or 'Service'} for {state.who()}"[:500],
        "service": service,
        "address": address_of(state),
        "amount_minor": p["amount_minor"],
        "currency": p["currency"].upper(),
        "scheduled_for": None,
        "completed_at": None,
        "technician": None,
        "external_id": None,
        "related_job_id": None,
    }
    ref = JobRef(job_type=SERVICE, status="pending", updated_at=at)
    after = state.model_copy(update={"jobs": kept_jobs({**state.jobs, job_id: ref})})
    what = f"invoice {p['invoice_id']}" if p.get("invoice_id") else f"payment {p.get('payment_id')}"
    reason = f"paid {amount} ({what})"
    return after, JobChange(job_id, True, reason, fields, event["event_id"], at, True)


def _status_changed(
    state: ContactState, event: dict[str, Any]
) -> tuple[ContactState, JobChange | None]:
    p, at = event["payload"], event["event_time"]
    external = str(p["job_id"])
    status = str(p["status"]).strip().lower()
    job_id = next((k for k, j in state.jobs.items() if j.external_id == external), None)
    created = False
    if job_id is None:
        waiting = [
            (j.updated_at, k)
            for k, j in state.jobs.items()
            if j.external_id is None and j.job_type == SERVICE and j.status not in CLOSED
        ]
        if waiting:
            job_id = max(waiting)[1]
            how = "the job the contact's payment made"
        else:
            job_id = decision_id("job", state.contact_id, event["source_system"], external)
            created = True
            how = "a new job"
    else:
        how = "the job"
    before = state.jobs.get(job_id)
    if before is not None and before.updated_at > at:
        return state, None  # a later change is in already
    completed = p.get("completed_at") or (at if status == "completed" else None)
    fields = {
        "job_id": job_id,
        "job_type": p["job_type"],
        "status": status,
        "title": None,
        "service": None,
        "address": address_of(state) if created else None,
        "amount_minor": None,
        "currency": None,
        "scheduled_for": p.get("scheduled_for"),
        "completed_at": completed,
        "technician": p.get("technician"),
        "external_id": external,
        "related_job_id": None,
    }
    if created:
        fields["title"] = f"{p['job_type']} for {state.who()}"[:500]
    ref = JobRef(
        job_type=p["job_type"],
        status=status,
        updated_at=at,
        external_id=external,
        scheduled_for=p.get("scheduled_for") or (before.scheduled_for if before else None),
        technician=p.get("technician") or (before.technician if before else None),
    )
    after = state.model_copy(update={"jobs": kept_jobs({**state.jobs, job_id: ref})})
    previous = f" (was {before.status})" if before is not None else ""
    reason = f"{event['source_system']} job {external} {status}{previous}: {how}"
    return after, JobChange(job_id, created, reason, fields, event["event_id"], at, False)


def inspection_job_id(task_id: str) -> str:
    """The scheduled inspection job beside a workflow's inspection task."""
    return decision_id("job", "inspection", task_id)
