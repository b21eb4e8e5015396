"""Invoices for completed billable jobs, to the billing sink."""

from __future__ import annotations

from typing import Any

from processors.ids import decision_id
from processors.records.base import audit_entry, crm_command
from processors.records.timeline import _money
from processors.state import ContactState
from streams.engine import Output


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
