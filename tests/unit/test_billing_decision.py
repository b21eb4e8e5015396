"""Invoices for completed billable jobs: what the contact stage decides (a pure function
of state and event), what the jobs webhook accepts, and that the command fits the Avro
contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.sources.base import Rejected, WebhookRequest
from connectors.sources.generic import parse_job
from processors.ids import decision_id
from processors.records.billing import invoice_outputs
from processors.state import ContactState
from streams.serde import AvroSerde, registry_client

T0 = datetime(2026, 11, 21, 18, 5, tzinfo=UTC)
OFFLINE = registry_client("http://127.0.0.1:9/unused")
LINES = [
    {"description": "Boiler installation", "quantity": 1, "unit_amount_minor": 180_000},
    {"description": "Thermostat", "quantity": 2, "unit_amount_minor": 4_950},
]


def ana(*identifiers: str) -> ContactState:
    return ContactState(
        contact_id="c-1",
        identifiers=list(identifiers or ("email:ana@example.com", "phone:+14155550132")),
        profile={"first_name": "Ana", "last_name": "Silva"},
    )


def job(n: int = 0, **payload: Any) -> dict[str, Any]:
    body = {
        "job_id": "job-7781",
        "job_type": "boiler_installation",
        "status": "completed",
        "previous_status": "in_progress",
        "technician": "tech-sam",
        "scheduled_for": None,
        "completed_at": T0,
        "billable": True,
        "amount_minor": None,
        "currency": "EUR",
        "line_items": LINES,
    }
    return {
        "event_id": f"fieldservice:job-7781-{n}",
        "event_type": "JOB_STATUS_CHANGED",
        "source_system": "fieldservice",
        "event_time": T0,
        "received_time": T0,
        "contact_id": "c-1",
        "payload": body | payload,
    }


def test_a_completed_billable_job_is_invoiced_with_its_lines_and_audited() -> None:
    (command, audit) = invoice_outputs(ana(), job())
    topic, key, record = command
    assert (topic, key) == ("billing", "c-1")
    assert record["command_type"] == "CREATE_INVOICE"
    assert record["command_id"] == decision_id("invoice", "fieldservice", "job-7781")
    assert record["causation_event_id"] == "fieldservice:job-7781-0"
    assert record["issued_at"] == T0
    assert record["payload"] == {
        "job_id": "job-7781",
        "job_system": "fieldservice",
        "email": "ana@example.com",
        "name": "Ana Silva",
        "currency": "EUR",
        "amount_minor": 189_900,
        "lines": LINES,
        "description": "Boiler installation, job job-7781",
    }
    assert audit[0] == "audit"
    entry = audit[2]
    assert (entry["stage"], entry["decision"]) == ("billing", "invoice_requested")
    assert entry["reason"] == ("job job-7781 completed and billable: invoice of 1,899.00 EUR")
    assert entry["inputs"]["command_id"] == record["command_id"]
    assert entry["inputs"]["lines"] == "2"
    assert entry["causation_event_ids"] == ["fieldservice:job-7781-0"]


def test_an_amount_without_lines_is_one_line_named_after_the_job() -> None:
    (command, _) = invoice_outputs(ana(), job(line_items=[], amount_minor=25_000, currency="usd"))
    payload = command[2]["payload"]
    assert payload["lines"] == [
        {"description": "Boiler installation", "quantity": 1, "unit_amount_minor": 25_000}
    ]
    assert (payload["amount_minor"], payload["currency"]) == (25_000, "USD")


def test_the_same_job_completed_twice_is_one_command_id() -> None:
    first = invoice_outputs(ana(), job(0))[0][2]
    again = invoice_outputs(ana(), job(1))[0][2]
    assert first["command_id"] == again["command_id"]
    assert first["causation_event_id"] != again["causation_event_id"]


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "in_progress"},
        {"status": "scheduled"},
        {"billable": False},
        {"status": "cancelled"},
    ],
)
def test_an_unfinished_or_unbillable_job_sends_nothing(payload: dict[str, Any]) -> None:
    assert invoice_outputs(ana(), job(**payload)) == []


def test_other_events_send_nothing_and_an_old_job_payload_is_not_billable() -> None:
    old = job()
    for name in ("billable", "amount_minor", "currency", "line_items"):
        del old["payload"][name]  # as a job from before these fields decodes in a test
    assert invoice_outputs(ana(), old) == []
    assert invoice_outputs(ana(), {**job(), "event_type": "FORM_SUBMITTED"}) == []


@pytest.mark.parametrize(
    ("state", "payload", "problem"),
    [
        (ana("phone:+14155550132"), {}, "no e-mail address to find the customer by"),
        (ana(), {"line_items": [], "amount_minor": None}, "no amount and no line items"),
        (ana(), {"currency": None}, "no currency"),
        (ana(), {"line_items": [], "amount_minor": 0}, "nothing to bill (the total is 0)"),
    ],
)
def test_a_billable_job_that_cannot_be_billed_is_audited_not_dropped(
    state: ContactState, payload: dict[str, Any], problem: str
) -> None:
    (only,) = invoice_outputs(state, job(**payload))
    topic, _, entry = only
    assert topic == "audit"
    assert (entry["stage"], entry["decision"]) == ("billing", "invoice_skipped")
    assert entry["reason"] == f"job job-7781: {problem}"


def test_the_command_fits_the_avro_contract() -> None:
    serde = AvroSerde(OFFLINE, "crm_command", "t", discriminator="command_type")
    (command, _) = invoice_outputs(ana(), job())
    prepared = serde.validate(command[2])
    assert prepared["payload"][0] == "io.switchboard.commands.CreateInvoice"


def hook(**job_fields: Any) -> WebhookRequest:
    body = {
        "event_id": "job-7781-completed",
        "occurred_at": "2026-11-21T18:05:00Z",
        "job": {"id": "job-7781", "type": "boiler_installation", "status": "completed"}
        | job_fields,
        "customer": {"id": "cust-552", "email": "ana@example.com"},
    }
    return WebhookRequest(json.dumps(body).encode(), {})


def test_the_jobs_webhook_carries_amount_currency_and_lines_into_the_event() -> None:
    (event,) = parse_job(hook(billable=True, currency="eur", line_items=LINES), T0)
    payload = event["payload"]
    assert payload["billable"] is True
    assert payload["currency"] == "EUR"
    assert payload["line_items"] == LINES
    assert payload["amount_minor"] is None
    events = AvroSerde(OFFLINE, "contact_event", "t", discriminator="event_type")
    events.validate(event)


def test_a_job_without_billing_fields_is_still_valid_and_not_billable() -> None:
    (event,) = parse_job(hook(), T0)
    payload = event["payload"]
    assert (payload["billable"], payload["line_items"], payload["currency"]) == (False, [], None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"amount_minor": 100}, "currency is needed"),
        (
            {"currency": "EUR", "amount_minor": 100, "line_items": LINES},
            "not the sum of line_items",
        ),
        ({"currency": "EURO"}, "field job.currency"),
        ({"currency": "EUR", "amount_minor": -1}, "field job.amount_minor"),
        (
            {"currency": "EUR", "line_items": [{"description": "", "unit_amount_minor": 1}]},
            "field job.line_items.0.description",
        ),
    ],
)
def test_bad_billing_fields_are_refused_naming_the_field(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(Rejected, match=message):
        parse_job(hook(**fields), T0)
