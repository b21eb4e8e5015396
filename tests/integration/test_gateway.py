"""Real HTTP requests against a running gateway process and the real broker: each
provider's example payload, correctly signed, lands as the expected Avro event; bad
input gets the right status and the dead-letter topic gets what it should."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streams.registry import register_catalog
from streams.serde import registry_client
from streams.settings import Settings
from tests.conftest import Infra, free_port
from tests.gateway_process import Gateway, started
from tests.kafka_helpers import get, running_gateway
from tests.webhooks import SECRETS, fixture, post, signed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(
    infra: Infra, session_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with started(infra, f"{session_prefix}gw-", log, gateway_max_body_bytes=64 * 1024) as running:
        yield running


ANA = b"email:ana.silva@example.com"
AT = datetime.fromisoformat

# (source, fixture file, [(event_id, key, event_type, expected identity/payload subset)])
CASES: list[tuple[str, str, list[tuple[str, bytes, str, dict[str, Any]]]]] = [
    (
        "stripe",
        "stripe_invoice_paid.json",
        [
            (
                "stripe:evt_1NG8Du2eZvKYlo2CUI79vXWy",
                ANA,
                "INVOICE_PAID",
                {
                    "phone": "+14155550132",
                    "external_ids": {"stripe": "cus_NffrFeUfNV2Hib"},
                    "invoice_id": "in_1NG8Du2eZvKYlo2C8Cvzjwvl",
                    "amount_minor": 125000,
                    "currency": "usd",
                },
            )
        ],
    ),
    (
        "stripe",
        "stripe_payment_intent_succeeded.json",
        [
            (
                "stripe:evt_3MtwBwLkdIwHu7ix0dAqGwPc",
                ANA,
                "PAYMENT_RECEIVED",
                {
                    "payment_id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
                    "amount_minor": 2000,
                    "method": "card",
                },
            )
        ],
    ),
    (
        "stripe",
        "stripe_checkout_session_completed.json",
        [
            (
                "stripe:evt_1Ot4q2LkdIwHu7ixRnZj7o5N",
                b"email:bruno@example.org",
                "PAYMENT_RECEIVED",
                {
                    "phone": "+351912345678",
                    "payment_id": "pi_3Ot4pwLkdIwHu7ix0qSd6y8B",
                    "amount_minor": 9900,
                    "currency": "eur",
                },
            )
        ],
    ),
    (
        "twilio",
        "twilio_status_completed.txt",
        [
            (
                "twilio:CA2a4b6c8d0e1f2a3b4c5d6e7f8a9b0c1d:completed",
                b"phone:+14155550132",
                "CALL_COMPLETED",
                {
                    "direction": "INBOUND",
                    "status": "completed",
                    "duration_seconds": 247,
                    "from_number": "+14155550132",
                    "to_number": "+14155550100",
                    "event_time": AT("2026-11-21T16:20:05+00:00"),
                },
            )
        ],
    ),
    (
        "vapi",
        "vapi_end_of_call_report.json",
        [
            (
                "vapi:3f1c8a52-7d0e-4b8a-9c55-2d1e6f0b9a11:end-of-call-report",
                ANA,
                "CALL_COMPLETED",
                {
                    "phone": "+14155550132",
                    "outcome": "qualified",
                    "requested_service": "boiler replacement",
                    "next_step": "book site visit",
                    "transcript_summary": "Caller needs a boiler replaced before winter; "
                    "asked for a quote and a visit on Tuesday.",
                    "handled_by": "Riley (front desk)",
                    "duration_seconds": 247,
                },
            )
        ],
    ),
    (
        "calendly",
        "calendly_invitee_created.json",
        [
            (
                "calendly:https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/"
                "AAAAAAAAAAAAAAAA:invitee.created",
                ANA,
                "MEETING_BOOKED",
                {
                    "phone": "+14155550132",
                    "host": "rep.jordan@northside.example",
                    "title": "Site visit",
                    "starts_at": AT("2026-11-24T17:00:00+00:00"),
                    "location": "Customer address",
                },
            )
        ],
    ),
    (
        "calendly",
        "calendly_invitee_canceled.json",
        [
            (
                "calendly:https://api.calendly.com/scheduled_events/GBGBDCAADAEDCRZ2/invitees/"
                "AAAAAAAAAAAAAAAA:invitee.canceled",
                ANA,
                "MEETING_CANCELLED",
                {"cancelled_by": "Ana Silva", "reason": "Found another installer"},
            )
        ],
    ),
    (
        "typeform",
        "typeform_form_response.json",
        [
            (
                "typeform:01J0QWAYK0C0NNV2XHZ1S7T3JW",
                ANA,
                "FORM_SUBMITTED",
                {
                    "phone": "+14155550132",
                    "form_name": "Request a quote",
                    "page_url": "https://northside.example/quote",
                    "fields": {
                        "full_name": "Ana Silva",
                        "email": "ana.silva@example.com",
                        "phone": "+14155550132",
                        "service": "Boiler replacement",
                        "homeowner": "true",
                    },
                    "utm": {"utm_source": "google", "utm_campaign": "winter-boilers"},
                },
            )
        ],
    ),
    (
        "forms",
        "forms_submission.json",
        [
            (
                "webform:sub-20261121-0042",
                b"email:carla.m@example.net",
                "FORM_SUBMITTED",
                {
                    "phone": "+14155550177",
                    "fields": {"message": "Do you service heat pumps?", "postcode": "94110"},
                },
            )
        ],
    ),
    (
        "jobs",
        "jobs_completed.json",
        [
            (
                "fieldservice:job-7781-completed",
                ANA,
                "JOB_STATUS_CHANGED",
                {
                    "job_type": "boiler_installation",
                    "status": "completed",
                    "previous_status": "in_progress",
                    "completed_at": AT("2026-11-21T18:05:00+00:00"),
                },
            )
        ],
    ),
    (
        "mailgun",
        "mailgun_clicked.json",
        [
            (
                "mailgun:Ase7i2zsRYeDXztHGENqRA",
                ANA,
                "EMAIL_CLICKED",
                {
                    "message_id": "20261121160000.1.ABCDEF@mg.northside.example",
                    "url": "https://northside.example/book?utm_campaign=winter-boilers",
                },
            )
        ],
    ),
    (
        "mailgun-inbound",
        "mailgun_inbound.txt",
        [
            (
                "mailgun:inbound:<CAF=x1@mail.example.com>",
                ANA,
                "EMAIL_REPLIED",
                {
                    "in_reply_to": "<20261121160000.1.ABCDEF@mg.northside.example>",
                    "subject": "Re: Your boiler quote",
                    "snippet": "Yes, Tuesday works.",
                },
            )
        ],
    ),
    (
        "hubspot",
        "hubspot_batch.json",
        [
            (
                "hubspot:1795000601",
                b"crm:4501",
                "CONTACT_UPDATED",
                {
                    "crm_id": "4501",
                    "email": "ana.silva@example.com",
                    "properties": {"email": "ana.silva@example.com"},
                },
            ),
            (
                "hubspot:1795000602",
                b"crm:4501",
                "CONTACT_UPDATED",
                {"properties": {"lifecyclestage": "salesqualifiedlead"}},
            ),
            (
                "hubspot:1795000603",
                b"ext:hubspot_deal:9912",
                "DEAL_STAGE_CHANGED",
                {"deal_id": "9912", "stage": "contractsent"},
            ),
        ],
    ),
]


def flatten(event: dict[str, Any]) -> dict[str, Any]:
    return {**event["identity"], **event["payload"], "event_time": event["event_time"]}


@pytest.mark.parametrize(("source", "name", "expected"), CASES, ids=[c[1] for c in CASES])
def test_a_signed_provider_example_lands_as_the_expected_avro_event(
    gateway: Gateway, source: str, name: str, expected: list[tuple[str, bytes, str, dict[str, Any]]]
) -> None:
    answer = gateway.send(source, fixture(name))
    assert answer.status == 200, answer.body
    assert answer.body == {"accepted": len(expected), "event_ids": [e[0] for e in expected]}

    landed = gateway.events_by_id()
    for event_id, key, event_type, subset in expected:
        got_key, event = landed[event_id]
        assert got_key == key
        assert event["event_type"] == event_type
        assert event["source_system"] == (
            source
            if source not in ("forms", "jobs", "mailgun-inbound")
            else {"forms": "webform", "jobs": "fieldservice", "mailgun-inbound": "mailgun"}[source]
        )
        assert event["received_time"] <= datetime.now(UTC)
        flat = flatten(event)
        assert {k: flat[k] for k in subset} == subset


def test_a_provider_retry_is_the_same_event(gateway: Gateway) -> None:
    first = gateway.send("stripe", fixture("stripe_payment_intent_succeeded.json"))
    again = gateway.send("stripe", fixture("stripe_payment_intent_succeeded.json"))
    assert first.status == again.status == 200
    assert first.body["event_ids"] == again.body["event_ids"]


def sent_nothing(gateway: Gateway, before: set[str]) -> bool:
    return set(gateway.events_by_id()) == before


def test_a_wrong_signature_is_401_and_writes_nothing(gateway: Gateway) -> None:
    before, letters = set(gateway.events_by_id()), len(gateway.dead_letters_now())
    body = fixture("forms_submission.json").replace(b"sub-20261121-0042", b"sub-forged")
    url = gateway.url("forms")
    _, headers = signed("forms", fixture("forms_submission.json"), url)  # signed other bytes
    answer = post(url, body, headers)
    assert answer.status == 401
    assert answer.body == {"error": "signature does not match the body"}
    assert sent_nothing(gateway, before)
    assert len(gateway.dead_letters_now()) == letters


def test_a_stale_timestamp_is_401(gateway: Gateway) -> None:
    before = set(gateway.events_by_id())
    body = fixture("stripe_invoice_paid.json").replace(b"evt_1NG8", b"evt_old1")
    answer = gateway.send("stripe", body, now=datetime.now(UTC).timestamp() - 3600)
    assert answer.status == 401
    assert "tolerance 300s" in answer.body["error"]
    assert sent_nothing(gateway, before)


def test_a_missing_signature_header_is_401(gateway: Gateway) -> None:
    answer = post(
        gateway.url("typeform"),
        fixture("typeform_form_response.json"),
        {"Content-Type": "application/json"},
    )
    assert answer.status == 401
    assert answer.body == {"error": "missing Typeform-Signature header"}


def dead_letter_for(gateway: Gateway, body: bytes) -> dict[str, Any]:
    matching = [d for d in gateway.dead_letters_now() if d["original_value"] == body]
    assert len(matching) == 1, f"expected one dead letter for the body, found {len(matching)}"
    return matching[0]


def test_malformed_json_is_400_and_dead_lettered(gateway: Gateway) -> None:
    body = b'{"submission_id": "sub-broken", "form_id": '
    answer = gateway.send("forms", body)
    assert answer.status == 400
    assert answer.body["error"].startswith("body is not valid JSON")
    letter = dead_letter_for(gateway, body)
    assert letter["stage"] == "gateway"
    assert letter["source"] == "forms"
    assert letter["error_type"] == "malformed_body"
    assert letter["reason"] == answer.body["error"]
    assert letter["original_headers"]["Content-Type"] == b"application/json"


def test_a_dead_letter_keeps_no_secret_cookie_or_signature(gateway: Gateway) -> None:
    """Issue 20, item 9: Vapi's shared secret arrives as a header of every request; a
    dead letter keeps an allow-list of headers, not everything but Authorization."""
    body = b'{"message": {"type": "end-of-call-report", "call": '
    url = gateway.url("vapi")
    signed_body, headers = signed("vapi", body, url, None)
    cookie = "session=sb-8f2e0c; csrftoken=41ab"
    answer = post(
        url,
        signed_body,
        {**headers, "Cookie": cookie, "Authorization": "Bearer abc", "X-Request-Id": "req-7"},
    )
    assert answer.status == 400
    letter = dead_letter_for(gateway, body)
    stored = {k.lower(): v for k, v in letter["original_headers"].items()}
    assert stored["x-request-id"] == b"req-7"
    assert not {"x-vapi-secret", "cookie", "authorization"} & stored.keys()
    everything = repr(letter).encode()
    assert SECRETS["vapi"].encode() not in everything and b"sb-8f2e0c" not in everything


def test_a_missing_field_is_400_naming_it_and_dead_lettered(gateway: Gateway) -> None:
    data = json.loads(fixture("jobs_completed.json"))
    del data["job"]["type"]
    data["event_id"] = "job-7781-missing-type"
    body = json.dumps(data).encode()
    answer = gateway.send("jobs", body)
    assert answer.status == 400
    assert answer.body == {"error": "field job.type: field required", "field": "job.type"}
    letter = dead_letter_for(gateway, body)
    assert letter["error_type"] == "invalid_payload"
    assert letter["reason"] == "field job.type: field required"


def test_an_unusable_identifier_is_400_naming_the_field(gateway: Gateway) -> None:
    data = json.loads(fixture("forms_submission.json"))
    data.update(submission_id="sub-bad-mail", email="not-an-address")
    answer = gateway.send("forms", json.dumps(data).encode())
    assert answer.status == 400
    assert answer.body["field"] == "email"
    assert "'not-an-address' is not an e-mail address" in answer.body["error"]


def test_an_oversized_body_is_413_counted_and_not_stored(gateway: Gateway) -> None:
    """Issue 20, item 8: a body over the limit is never read whole, so never verified:
    nothing of it may be stored, only counted."""
    limit = gateway.settings.gateway_max_body_bytes
    data = json.loads(fixture("forms_submission.json"))
    data["fields"]["message"] = "x" * (limit + 10)
    body = json.dumps(data).encode()
    metric = 'switchboard_source_rejected_total{reason="too_large",source="forms"}'
    before = rejected(gateway, metric)
    for unsigned in (False, True):
        url = gateway.url("forms")
        answer = (
            post(url, body, {"Content-Type": "application/json"})
            if unsigned
            else gateway.send("forms", body)
        )
        assert answer.status == 413
        assert answer.body == {
            "error": f"body of {len(body)} bytes exceeds the {limit}-byte limit",
            "limit_bytes": limit,
        }
    assert [d for d in gateway.dead_letters_now() if d["error_type"] == "too_large"] == []
    assert rejected(gateway, metric) == before + 2


def rejected(gateway: Gateway, series: str) -> float:
    body = get(f"http://127.0.0.1:{gateway.settings.gateway_port}/metrics")
    found = [line.rsplit(" ", 1)[1] for line in body.splitlines() if line.startswith(series)]
    return float(found[0]) if found else 0.0


def test_an_unknown_or_disabled_source_is_404(gateway: Gateway) -> None:
    answer = post(gateway.url("salesforce"), b"{}", {"Content-Type": "application/json"})
    assert answer.status == 404
    assert answer.body["error"].startswith("no source named 'salesforce'")


def test_kafka_unavailable_is_503_with_retry_after(
    infra: Infra, session_prefix: str, tmp_path: Path
) -> None:
    """A gateway whose broker does not answer never says 200: the provider must retry."""
    settings = Settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # nothing listens there
        schema_registry_url=infra.registry_url,
        topic_prefix=f"{session_prefix}gw-down.",
        gateway_port=free_port(),
        gateway_delivery_timeout_ms=1500,
    )
    register_catalog(registry_client(infra.registry_url), settings)
    with running_gateway(settings, tmp_path / "gateway.log", {"forms": SECRETS["forms"]}):
        url = f"http://127.0.0.1:{settings.gateway_port}/webhooks/forms"
        answer = post(url, *signed("forms", fixture("forms_submission.json"), url))
    assert answer.status == 503
    assert answer.headers["Retry-After"] == "30"
    assert answer.body["error"].startswith("events could not be written durably, retry later")


def test_per_source_metrics_are_exported(gateway: Gateway) -> None:
    gateway.send("stripe", fixture("stripe_invoice_paid.json"))
    post(gateway.url("forms"), b"{}", {"X-Switchboard-Signature": "t=1,v1=00"})
    body = get(f"http://127.0.0.1:{gateway.settings.gateway_port}/metrics")
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("switchboard_")
    }
    assert lines['switchboard_gateway_requests_total{source="stripe",status="200"}'] >= 1
    assert lines['switchboard_source_events_total{event_type="INVOICE_PAID",source="stripe"}'] >= 1
    assert lines['switchboard_source_rejected_total{reason="stale_timestamp",source="forms"}'] >= 1
    assert lines['switchboard_source_publish_seconds_count{source="stripe"}'] >= 1
    assert lines['switchboard_gateway_request_seconds_count{source="forms"}'] >= 1
