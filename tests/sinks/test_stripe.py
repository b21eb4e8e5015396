"""The Stripe destination of the billing sink against a local server that speaks Stripe's
API, idempotency keys included."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.sinks.billing.stripe import StripeInvoicer
from tests.fakes import Received
from tests.fakes.stripe import FakeStripe
from tests.records import crm_command

LINES = [
    {"description": "Boiler installation", "quantity": 1, "unit_amount_minor": 180_000},
    {"description": "Thermostat", "quantity": 2, "unit_amount_minor": 4_950},
]


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with FakeStripe.running() as fake:
        yield fake


def invoice(
    n: int = 1, email: str = "ana@example.com", currency: str = "EUR", **payload: Any
) -> dict[str, Any]:
    body = {
        "job_id": f"job-{n}",
        "job_system": "fieldservice",
        "email": email,
        "name": "Ana Silva",
        "currency": currency,
        "amount_minor": 189_900,
        "lines": LINES,
        "description": f"Boiler installation, job job-{n}",
    } | payload
    return crm_command(
        "CREATE_INVOICE",
        "c-1",
        body,
        command_id=f"cmd-invoice-{n}",
        issued_at=datetime(2026, 11, 21, 18, 5, tzinfo=UTC),
    )


def deliver(
    fake: FakeStripe, *batches: Sequence[dict[str, Any]], api_key: str | None = None, **opts: Any
) -> list[list[Outcome]]:
    async def run() -> list[list[Outcome]]:
        invoicer = StripeInvoicer(api_key or fake.api_key, fake.url, timeout_s=2, **opts)
        try:
            return [await invoicer.deliver(batch) for batch in batches]
        finally:
            await invoicer.close()

    return asyncio.run(run())


def form(request: Received) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.body or "").items()}


def posts(fake: FakeStripe) -> list[Received]:
    return [r for r in fake.requests if r.method == "POST"]


def test_an_invoice_is_made_field_by_field_and_finalised(stripe: FakeStripe) -> None:
    assert deliver(stripe, [invoice()]) == [[None]]
    (customer,) = stripe.customers.values()
    assert (customer["email"], customer["name"]) == ("ana@example.com", "Ana Silva")
    assert customer["metadata"] == {"switchboard_contact_id": "c-1"}
    (bill,) = stripe.invoices.values()
    assert bill["customer"] == customer["id"]
    assert (bill["currency"], bill["collection_method"], bill["days_until_due"]) == (
        "eur",
        "send_invoice",
        30,
    )
    assert bill["status"] == "open" and bill["number"] == "SB-0001"
    assert bill["auto_advance"] is True  # Stripe sends it now that it is final
    assert (bill["amount_due"], bill["total"]) == (189_900, 189_900)
    assert bill["metadata"] == {
        "switchboard_command_id": "cmd-invoice-1",
        "switchboard_contact_id": "c-1",
        "job_id": "job-1",
        "job_system": "fieldservice",
    }
    assert bill["description"] == "Boiler installation, job job-1"
    items = stripe.items_of(bill["id"])
    assert [
        (i["description"], i["quantity"], i["unit_amount_decimal"], i["amount"]) for i in items
    ] == [
        ("Boiler installation", 1, "180000", 180_000),
        ("Thermostat", 2, "4950", 9_900),
    ]
    assert {i["currency"] for i in items} == {"eur"}
    # The wire: form-encoded, the secret key as a bearer token, a key per step.
    sent = posts(stripe)
    assert [r.path for r in sent] == [
        "/v1/customers",
        "/v1/invoices",
        "/v1/invoiceitems",
        "/v1/invoiceitems",
        f"/v1/invoices/{bill['id']}/finalize",
    ]
    assert [r.headers["Idempotency-Key"] for r in sent] == [
        "cmd-invoice-1:customer",
        "cmd-invoice-1:invoice",
        "cmd-invoice-1:item:0",
        "cmd-invoice-1:item:1",
        "cmd-invoice-1:finalize",
    ]
    assert all(r.headers["Authorization"] == f"Bearer {stripe.api_key}" for r in stripe.requests)
    assert all(r.headers["Content-Type"] == "application/x-www-form-urlencoded" for r in sent)
    created = form(sent[1])
    assert created["pending_invoice_items_behavior"] == "exclude"
    assert created["auto_advance"] == "false"  # no finalising of a half-built draft
    assert form(sent[2])["invoice"] == bill["id"]


def test_an_existing_customer_is_found_by_email_and_charge_automatically_has_no_due_date(
    stripe: FakeStripe,
) -> None:
    assert deliver(stripe, [invoice(1)]) == [[None]]
    assert deliver(stripe, [invoice(2)], collection_method="charge_automatically") == [[None]]
    assert len(stripe.customers) == 1
    first, second = stripe.invoices.values()
    assert first["customer"] == second["customer"]
    assert second["collection_method"] == "charge_automatically"
    assert second["days_until_due"] is None


def test_a_redelivery_bills_nothing_twice(stripe: FakeStripe) -> None:
    assert deliver(stripe, [invoice()], [invoice()]) == [[None], [None]]
    assert len(stripe.invoices) == 1 and len(stripe.items) == 2
    assert stripe.created("/v1/invoices") == 1
    # The customer was found the second time; the other three steps were replayed.
    assert stripe.replayed == 4


def test_rate_limited_then_delivered_once(stripe: FakeStripe) -> None:
    stripe.rate_limit(retry_after="3")
    (outcome,) = deliver(stripe, [invoice()])[0]
    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == 3.0
    assert "HTTP 429 invalid_request_error/rate_limit" in str(outcome)
    assert deliver(stripe, [invoice()]) == [[None]]
    assert (
        len(stripe.invoices) == 1 and stripe.invoices_for("ana@example.com")[0]["status"] == "open"
    )


def test_a_server_error_then_delivered_once(stripe: FakeStripe) -> None:
    stripe.api_errors(1)
    (outcome,) = deliver(stripe, [invoice()])[0]
    assert isinstance(outcome, Retryable)
    assert "HTTP 500 api_error" in str(outcome)
    assert deliver(stripe, [invoice()]) == [[None]]
    assert len(stripe.invoices) == 1


def test_a_server_error_mid_invoice_then_delivered_once(stripe: FakeStripe) -> None:
    # The customer, the draft and the first item are made, then the second item fails.
    stripe.api_errors_on("/v1/invoiceitems", count=2, after=1)
    outcomes = deliver(stripe, [invoice()], [invoice()], [invoice()])
    assert [type(o[0]).__name__ for o in outcomes] == ["Retryable", "Retryable", "NoneType"]
    (bill,) = stripe.invoices.values()
    assert bill["status"] == "open" and bill["amount_due"] == 189_900
    assert len(stripe.items_of(bill["id"])) == 2
    assert stripe.created("/v1/invoices") == 1 and stripe.created("/v1/invoiceitems") == 2


def test_a_validation_error_is_rejected_naming_the_field_without_the_key(
    stripe: FakeStripe,
) -> None:
    (outcome,) = deliver(stripe, [invoice(currency="XYZ")])[0]
    assert isinstance(outcome, Rejected)
    assert "HTTP 400 invalid_request_error/parameter_invalid_currency: field currency" in str(
        outcome
    )
    assert stripe.api_key not in str(outcome) and stripe.api_key not in outcome.answer
    assert stripe.invoices == {}


def test_a_card_error_is_rejected_naming_the_field(stripe: FakeStripe) -> None:
    stripe.card_error()
    (outcome,) = deliver(stripe, [invoice()])[0]
    assert isinstance(outcome, Rejected)
    assert "HTTP 402 card_error/card_declined/generic_decline: field payment_method" in str(outcome)
    assert "Your card was declined." in str(outcome)


def test_a_bad_key_is_rejected_and_the_key_is_not_in_the_answer(stripe: FakeStripe) -> None:
    wrong = "sk_test_51WrongKeyNotThisOne99999"
    (outcome,) = deliver(stripe, [invoice()], api_key=wrong)[0]
    assert isinstance(outcome, Rejected)
    assert "HTTP 401" in str(outcome)
    assert wrong not in str(outcome) and wrong not in outcome.answer


def test_a_key_reused_with_other_parameters_is_refused(stripe: FakeStripe) -> None:
    assert deliver(stripe, [invoice()]) == [[None]]
    changed = invoice(description="Something else")
    (outcome,) = deliver(stripe, [changed])[0]
    assert isinstance(outcome, Rejected)
    assert "idempotency_error" in str(outcome)
    assert len(stripe.invoices) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"email": "not-an-address"}, "payload.email"),
        ({"lines": []}, "payload.lines"),
        ({"amount_minor": 1}, "payload: Value error, amount_minor 1 is not the sum"),
        ({"currency": "EURO"}, "payload.currency"),
    ],
)
def test_an_invalid_command_is_rejected_before_any_call(
    stripe: FakeStripe, payload: dict[str, Any], field: str
) -> None:
    (outcome,) = deliver(stripe, [invoice(**payload)])[0]
    assert isinstance(outcome, Rejected)
    assert f"field {field}" in str(outcome)
    assert stripe.requests == []


def test_of_several_customers_with_the_email_ours_is_billed_else_the_oldest(
    stripe: FakeStripe,
) -> None:
    def customer(cid: str, **metadata: str) -> None:
        stripe.customers[cid] = {
            "id": cid,
            "object": "customer",
            "email": "ana@example.com",
            "name": None,
            "metadata": metadata,
        }

    customer("cus_older")
    customer("cus_ours", switchboard_contact_id="c-1")
    customer("cus_newer")
    assert deliver(stripe, [invoice(1)]) == [[None]]
    assert [i["customer"] for i in stripe.invoices.values()] == ["cus_ours"]
    del stripe.customers["cus_ours"]
    assert deliver(stripe, [invoice(2)]) == [[None]]
    assert [i["customer"] for i in stripe.invoices.values()] == ["cus_ours", "cus_older"]
    assert len(stripe.customers) == 2  # none made
