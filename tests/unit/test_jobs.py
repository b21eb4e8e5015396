"""Job records decided from what happened (processors.jobs) and what they send
(processors.records): a payment's job and the operations team's notification, a field
system's status changes, the scheduled inspection beside a workflow's task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from connectors.sinks.notify.templates import render_slack, render_text
from processors.identity import merge_states
from processors.ids import decision_id
from processors.jobs import Operations, decide, inspection_job_id
from processors.records.jobs import job_outputs
from processors.records.workflows import workflow_outputs
from processors.state import JOBS_KEPT, ContactState, JobRef
from processors.workflows.effects import Task

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
OPS = Operations("SLACK", ("#ops",))


def contact(**changes: Any) -> ContactState:
    base: dict[str, Any] = {
        "contact_id": "c-1",
        "identifiers": ["email:ana@example.com", "phone:+15550100"],
        "profile": {
            "first_name": "Ana",
            "last_name": "Diaz",
            "service": "Boiler installation",
            "address": "12 Elm St",
            "city": "Springfield",
            "postcode": "01101",
        },
        "owner_id": "rep-jordan",
    }
    return ContactState.model_validate(base | changes)


def event(kind: str, at: datetime = T0, n: int = 1, **payload: Any) -> dict[str, Any]:
    return {
        "event_id": f"{kind}-{n}",
        "event_type": kind,
        "source_system": "stripe" if kind != "JOB_STATUS_CHANGED" else "servicetitan",
        "event_time": at,
        "received_time": at,
        "payload": payload,
    }


def paid(n: int = 1, at: datetime = T0, **payload: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"payment_id": f"pi_{n}", "amount_minor": 450_000, "currency": "usd"}
    fields |= {"method": "card", "invoice_id": None}
    return event("PAYMENT_RECEIVED", at, n, **(fields | payload))


def job_event(status: str, at: datetime, n: int = 1, **payload: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"job_id": "ST-77", "job_type": "boiler_installation"}
    fields |= {"status": status}
    fields |= {"previous_status": None, "technician": None, "scheduled_for": None}
    fields |= {"completed_at": None}
    return event("JOB_STATUS_CHANGED", at, n, **(fields | payload))


def test_a_payment_makes_a_pending_job_with_service_address_and_amount() -> None:
    state, change = decide(contact(), paid())
    assert change is not None
    job_id = decision_id("job", "c-1", "paid", "pi_1")
    assert (change.job_id, change.created, change.paid) == (job_id, True, True)
    assert change.fields == {
        "job_id": job_id,
        "job_type": "service",
        "status": "pending",
        "title": "Boiler installation for Ana Diaz",
        "service": "Boiler installation",
        "address": "12 Elm St, Springfield, 01101",
        "amount_minor": 450_000,
        "currency": "USD",
        "scheduled_for": None,
        "completed_at": None,
        "technician": None,
        "external_id": None,
        "related_job_id": None,
    }
    assert change.reason == "paid 4,500.00 USD (payment pi_1)"
    assert state.jobs == {job_id: JobRef(job_type="service", status="pending", updated_at=T0)}


def test_a_payment_and_its_invoice_make_one_job() -> None:
    state, first = decide(contact(), paid(invoice_id="in_9"))
    invoice = event("INVOICE_PAID", T0, 2, invoice_id="in_9", amount_minor=450_000)
    invoice["payload"] |= {"currency": "usd", "customer_id": None}
    after, second = decide(state, invoice)
    assert first is not None and second is None
    assert after is state


def test_a_status_change_updates_the_job_the_payment_made_then_finds_it_by_its_id() -> None:
    state, made = decide(contact(), paid())
    assert made is not None
    booked_for = T0 + timedelta(days=2)
    state, scheduled = decide(
        state, job_event("scheduled", T0 + timedelta(hours=1), scheduled_for=booked_for)
    )
    assert scheduled is not None
    assert (scheduled.job_id, scheduled.created, scheduled.paid) == (made.job_id, False, False)
    assert scheduled.fields["scheduled_for"] == booked_for
    assert scheduled.fields["external_id"] == "ST-77"
    done_at = T0 + timedelta(days=2, hours=5)
    state, completed = decide(
        state,
        job_event("Completed", done_at, 2, technician="tech-12", previous_status="scheduled"),
    )
    assert completed is not None
    assert completed.job_id == made.job_id
    assert {k: v for k, v in completed.fields.items() if v is not None} == {
        "job_id": made.job_id,
        "job_type": "boiler_installation",
        "status": "completed",
        "completed_at": done_at,  # the event's time when the system gave none
        "technician": "tech-12",
        "external_id": "ST-77",
    }
    assert completed.reason == "servicetitan job ST-77 completed (was scheduled): the job"
    assert state.jobs[made.job_id].status == "completed"


def test_a_job_nobody_paid_for_is_a_new_record_and_an_older_change_is_ignored() -> None:
    state, change = decide(contact(), job_event("in_progress", T0))
    assert change is not None and change.created
    assert change.job_id == decision_id("job", "c-1", "servicetitan", "ST-77")
    assert change.fields["address"] == "12 Elm St, Springfield, 01101"
    assert change.fields["title"] == "boiler_installation for Ana Diaz"
    after, stale = decide(state, job_event("scheduled", T0 - timedelta(hours=1), 2))
    assert stale is None and after is state


def test_a_completed_payment_job_is_not_taken_by_another_field_job() -> None:
    state, made = decide(contact(), paid())
    state, _ = decide(state, job_event("completed", T0 + timedelta(hours=1)))
    state, other = decide(state, job_event("scheduled", T0 + timedelta(hours=2), 2, job_id="X"))
    assert made is not None and other is not None
    assert other.created and other.job_id != made.job_id


def test_jobs_are_bounded_and_united_in_a_merge() -> None:
    state = contact()
    for n in range(JOBS_KEPT + 5):
        state, _ = decide(state, paid(n, T0 + timedelta(minutes=n)))
    assert len(state.jobs) == JOBS_KEPT
    other, _ = decide(contact(contact_id="c-2"), paid(99, T0 + timedelta(days=1)))
    merged = merge_states(state, other)
    assert len(merged.jobs) == JOBS_KEPT
    assert decision_id("job", "c-2", "paid", "pi_99") in merged.jobs  # the newest stays


def test_a_payments_outputs_are_the_job_its_audit_and_the_ops_notification() -> None:
    state, change = decide(contact(), paid())
    assert change is not None
    outputs = job_outputs(state, change, Operations("EMAIL", ("ops@x.com", "lead@x.com")))
    assert [(topic, key) for topic, key, _ in outputs] == [
        ("commands", "c-1"),
        ("audit", "c-1"),
        ("notifications", "c-1"),
        ("notifications", "c-1"),
        ("audit", "c-1"),
    ]
    command, audit = outputs[0][2], outputs[1][2]
    assert command["command_type"] == "UPSERT_JOB"
    assert command["command_id"] == decision_id("upsert-job", change.job_id, "PAYMENT_RECEIVED-1")
    assert command["payload"] == change.fields
    assert command["causation_event_id"] == "PAYMENT_RECEIVED-1"
    assert (audit["stage"], audit["decision"]) == ("jobs", "job_created")
    assert audit["inputs"]["amount_minor"] == "450000"
    notes = [o[2] for o in outputs if o[0] == "notifications"]
    assert [(n["channel"], n["recipient"], n["template"]) for n in notes] == [
        ("EMAIL", "ops@x.com", "payment_received_ops"),
        ("EMAIL", "lead@x.com", "payment_received_ops"),
    ]
    assert len({n["notification_id"] for n in notes}) == 2
    subject, text = render_text(notes[0])
    assert subject == "Paid: 4,500.00 USD from Ana Diaz"
    assert "Service: Boiler installation\nAddress: 12 Elm St, Springfield, 01101\n" in text
    assert render_slack(notes[0])["text"].startswith("Paid: *4,500.00 USD* from *Ana Diaz*")
    assert outputs[4][2]["decision"] == "operations_notified"


def test_no_ops_recipient_and_a_status_change_notify_nobody() -> None:
    state, change = decide(contact(), paid())
    assert change is not None
    assert [o[0] for o in job_outputs(state, change, Operations())] == ["commands", "audit"]
    state, update = decide(state, job_event("scheduled", T0 + timedelta(hours=1)))
    assert update is not None
    outputs = job_outputs(state, update, OPS)
    assert [o[0] for o in outputs] == ["commands", "audit"]
    assert outputs[1][2]["decision"] == "job_updated"


def test_a_workflow_task_with_a_job_schedules_the_inspection_job() -> None:
    state, _ = decide(contact(), job_event("completed", T0))
    due = T0 + timedelta(days=30)
    task = Task(
        "task-9", "Follow-up inspection", due, "MEDIUM", None, "evt-1", "inspection", "ST-77"
    )
    plain = Task("task-8", "Invoice", due, "HIGH", None, "evt-1")
    outputs = workflow_outputs(state, [plain, task], T0 + timedelta(days=4))
    kinds = [(o[0], o[2].get("command_type") or o[2].get("decision")) for o in outputs]
    assert kinds == [
        ("commands", "CREATE_TASK"),
        ("commands", "CREATE_TASK"),
        ("commands", "UPSERT_JOB"),
        ("audit", "job_scheduled"),
    ]
    job = outputs[2][2]
    assert job["command_id"] == decision_id("upsert-job", inspection_job_id("task-9"))
    assert job["payload"] == {
        "job_id": inspection_job_id("task-9"),
        "job_type": "inspection",
        "status": "scheduled",
        "title": "Follow-up inspection",
        "service": "inspection",
        "address": "12 Elm St, Springfield, 01101",
        "amount_minor": None,
        "currency": None,
        "scheduled_for": due,
        "completed_at": None,
        "technician": None,
        "external_id": None,
        # The installation's record, found by the field system's id the trigger named.
        "related_job_id": decision_id("job", "c-1", "servicetitan", "ST-77"),
    }
