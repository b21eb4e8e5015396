"""The CRM record is whole and right (issue 18), told as a user sees it: provider webhooks
shaped as each provider documents them go through the real gateway, worker and sinks,
and the CRM store is checked field by field.

Dana Whitfield rings from her mobile (Twilio: a contact known by phone), books a visit
on Calendly with her e-mail (a second contact), then talks to the voice AI, which learns
both her number and her e-mail: the two contacts merge. She pays the invoice in Stripe.
The CRM must show one contact with her name, company, service and qualification; one
activity per call, the meeting and the payment; the voice AI's next step as the owner's
task; the closed-won deal with its amount; and the onboarding e-mail greets "Dana"."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.sinks.crm.sql import SqlCrmStore, open_store
from streams.clock import FileClock
from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import REP_ROSTER, ensure_topics
from tests.conftest import free_port
from tests.fakes.hubspot import FakeHubSpot
from tests.fakes.salesforce import FakeSalesforce
from tests.kafka_helpers import producer, running_gateway, running_sink, running_worker, wait_for
from tests.webhooks import SECRETS, post, signed

pytestmark = pytest.mark.integration

# A Wednesday, 10:00 in New York: inside the workflows' sending hours.
T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
PHONE, EMAIL = "+14155550177", "dana.whitfield@example.com"
REP: dict[str, Any] = {
    "rep_id": "rep-jordan",
    "name": "Jordan Lee",
    "email": "jordan@northside.example",
    "teams": ["inbound"],
    "timezone": "America/New_York",
    "work_start": "00:00",
    "work_end": "23:59",
    "work_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
}


def _iso(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def twilio_call() -> bytes:
    """A voice status callback for a finished inbound call, with caller-name lookup on."""
    at = T0 + timedelta(minutes=1)
    return urllib.parse.urlencode(
        {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": "CA" + "7" * 32,
            "CallStatus": "completed",
            "CallDuration": "95",
            "Direction": "inbound",
            "From": PHONE,
            "Caller": PHONE,
            "CallerName": "WHITFIELD D",
            "To": "+14155550100",
            "Called": "+14155550100",
            "Timestamp": at.strftime("%a, %d %b %Y %H:%M:%S +0000"),
            "RecordingUrl": "https://api.twilio.com/2010-04-01/Accounts/AC0/Recordings/RE1",
        }
    ).encode()


def calendly_booking() -> bytes:
    uri = "https://api.calendly.com/scheduled_events/EV-DANA"
    return json.dumps(
        {
            "event": "invitee.created",
            "created_at": _iso(3),
            "payload": {
                "uri": f"{uri}/invitees/INV-DANA",
                "email": EMAIL,
                "name": "Dana Whitfield",
                "first_name": None,
                "last_name": None,
                "timezone": "America/New_York",
                "scheduled_event": {
                    "uri": uri,
                    "name": "Site visit",
                    "start_time": _iso(60 * 24 * 2),
                    "end_time": _iso(60 * 24 * 2 + 45),
                    "location": {"type": "physical", "location": "12 Elm St"},
                    "event_memberships": [{"user_email": REP["email"]}],
                },
            },
        }
    ).encode()


def vapi_report() -> bytes:
    return json.dumps(
        {
            "message": {
                "type": "end-of-call-report",
                "endedReason": "customer-ended-call",
                "startedAt": _iso(5),
                "endedAt": _iso(9),
                "durationSeconds": 247,
                "artifact": {"recordingUrl": "https://storage.vapi.ai/recordings/dana.wav"},
                "analysis": {
                    "summary": "Dana's boiler failed; she wants a replacement before winter "
                    "and asked for a quote at the site visit.",
                    "structuredData": {
                        "name": "Dana Whitfield",
                        "company": "Whitfield Bakery",
                        "email": EMAIL,
                        "requested_service": "boiler replacement",
                        "outcome": "qualified",
                        "next_step": "Bring a written quote to the site visit",
                        "postcode": "94110",
                    },
                    "successEvaluation": "true",
                },
                "call": {
                    "id": "call-dana-1",
                    "type": "inboundPhoneCall",
                    "customer": {"number": PHONE},
                },
                "customer": {"number": PHONE},
                "assistant": {"name": "Riley (front desk)"},
            }
        }
    ).encode()


def stripe_invoice_paid() -> bytes:
    return json.dumps(
        {
            "id": "evt_dana_paid",
            "object": "event",
            "api_version": "2023-10-16",
            "created": int((T0 + timedelta(minutes=12)).timestamp()),
            "type": "invoice.paid",
            "data": {
                "object": {
                    "id": "in_dana",
                    "object": "invoice",
                    "amount_paid": 480000,
                    "currency": "usd",
                    "customer": "cus_dana",
                    "customer_email": EMAIL,
                    "customer_name": "Dana Whitfield",
                    "customer_address": {"line1": "12 Elm St", "postal_code": "94110"},
                    "status": "paid",
                }
            },
        }
    ).encode()


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    store: SqlCrmStore
    hubspot: FakeHubSpot
    salesforce: FakeSalesforce


# The rep's user in each SaaS CRM (a HubSpot owner id, a Salesforce User Id).
HUBSPOT_OWNER, SALESFORCE_USER = "9001", "005000000000001AAA"
# The packaged pipeline's stages are HubSpot's; a Salesforce org names its own.
SALESFORCE_STAGES = {"appointmentscheduled": "Qualification", "closedwon": "Closed Won"}


@pytest.fixture
def pipeline(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> Iterator[Pipeline]:
    """Gateway, worker, the notification sink (outbox) and three CRM sinks on the same
    commands, each its own consumer group: the SQL store, and HubSpot's and Salesforce's
    fakes. The clock stands at T0."""
    clock = tmp_path / "clock"
    FileClock.write(clock, T0)
    settings = settings.model_copy(
        update={
            "clock": f"file:{clock}",
            "gateway_port": free_port(),
            "crm_database_url": f"sqlite:///{tmp_path / 'crm.db'}",
            "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "notify_outbox": tmp_path / "outbox.jsonl",
        }
    )
    ensure_topics(settings)
    register_catalog(registry, settings)
    roster = AvroSerde(registry, "rep", REP_ROSTER.full_name(settings))
    out = producer(settings)
    out.produce(roster.topic, key=REP["rep_id"].encode(), value=roster.encode(REP))
    out.flush(10)
    store = open_store(settings.crm_database_url)
    with ExitStack() as stack:
        hubspot = stack.enter_context(FakeHubSpot.running())
        salesforce = stack.enter_context(FakeSalesforce.running())
        stack.enter_context(running_worker(settings, tmp_path / "worker.log"))
        stack.enter_context(running_gateway(settings, tmp_path / "gateway.log", SECRETS))
        sinks: list[tuple[str, str, dict[str, Any], dict[str, str]]] = [
            ("crm", "sql", {}, {}),
            ("notify", "sql", {}, {}),
            (
                "crm",
                "hubspot",
                {"hubspot_url": hubspot.url, "crm_owner_ids": {REP["rep_id"]: HUBSPOT_OWNER}},
                {"hubspot_token": hubspot.token},
            ),
            (
                "crm",
                "salesforce",
                {
                    "salesforce_url": salesforce.url,
                    "crm_owner_ids": {REP["rep_id"]: SALESFORCE_USER},
                    "crm_stage_names": SALESFORCE_STAGES,
                },
                {"salesforce_token": salesforce.token},
            ),
        ]
        for which, backend, options, secrets in sinks:
            each = settings.model_copy(
                update={
                    "metrics_port": free_port(),
                    "crm_backend": backend,
                    # The consumer group is the app id's: one group per CRM.
                    "app_id": f"{settings.app_id}-{backend}",
                    **options,
                }
            )
            log = tmp_path / f"{which}-{backend}.log"
            stack.enter_context(running_sink(each, which, log, secrets))
        yield Pipeline(settings, store, hubspot, salesforce)


def deliver(settings: Settings, source: str, body: bytes) -> None:
    url = f"http://127.0.0.1:{settings.gateway_port}/webhooks/{source}"
    answer = post(url, *signed(source, body, url))
    assert answer.status == 200 and answer.body["accepted"] == 1, (source, answer)


def outbox(settings: Settings) -> list[dict[str, Any]]:
    path = settings.notify_outbox
    assert path is not None
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_calls_a_booking_and_a_payment_make_one_whole_crm_record(pipeline: Pipeline) -> None:
    settings, store = pipeline.settings, pipeline.store
    for source, body in (
        ("twilio", twilio_call()),
        ("calendly", calendly_booking()),
        ("vapi", vapi_report()),
    ):
        deliver(settings, source, body)
        time.sleep(1.5)  # one after the other, as the person did them
    wait_for(lambda: len(store.rows("contacts")) == 1, "the two contacts to merge", 90)
    deliver(settings, "stripe", stripe_invoice_paid())

    def complete() -> bool:
        kinds = sorted(a["activity_type"] for a in store.rows("activities"))
        deals = store.rows("deals")
        tasks = [t for t in store.rows("tasks") if t["owner_id"] is not None]
        return (
            kinds == ["call", "call", "meeting", "payment"]
            and bool(deals)
            and deals[0]["stage"] == "closedwon"
            and any("written quote" in t["title"] for t in tasks)
        )

    wait_for(complete, "the calls, booking and payment in the CRM", 120)

    [contact] = store.rows("contacts")
    survivor = contact["contact_id"]
    assert (contact["first_name"], contact["last_name"]) == ("Dana", "Whitfield")
    assert (contact["email"], contact["phone"]) == (EMAIL, PHONE)
    assert contact["company"] == "Whitfield Bakery"
    assert contact["owner_id"] == "rep-jordan"
    properties = contact["properties"]
    assert properties["service"] == "boiler replacement"
    assert properties["qualification"] == "qualified"
    assert properties["postcode"] == "94110"
    assert properties["timezone"] == "America/New_York"

    [alias] = store.rows("contact_aliases")
    assert alias["survivor_id"] == survivor

    by_title = {a["title"]: a for a in store.rows("activities")}
    for activity in by_title.values():
        assert activity["contact_id"] == survivor
    plain = by_title["Inbound call (completed, 1m 35s)"]
    assert (plain["direction"], plain["status"], plain["duration_seconds"]) == (
        "inbound",
        "completed",
        95,
    )
    assert plain["recording_url"].endswith("/Recordings/RE1")
    ai = by_title["Inbound call (completed, 4m 07s)"]
    assert (ai["outcome"], ai["handled_by"]) == ("qualified", "Riley (front desk)")
    assert ai["recording_url"] == "https://storage.vapi.ai/recordings/dana.wav"
    assert "boiler failed" in ai["summary"]
    assert "Service requested: boiler replacement" in ai["summary"]
    meeting = by_title["Meeting booked: Site visit"]
    assert "12 Elm St" in meeting["summary"]
    payment = by_title["Payment received: 4,800.00 USD"]
    assert "in_dana" in payment["summary"]

    [task] = [t for t in store.rows("tasks") if "written quote" in t["title"]]
    assert task["contact_id"] == survivor
    assert task["owner_id"] == "rep-jordan"
    assert task["priority"] == "HIGH"
    assert "Dana Whitfield" in task["title"]
    assert "boiler failed" in task["notes"]
    assert "Outcome: qualified" in task["notes"]

    [deal] = store.rows("deals")
    assert deal["contact_id"] == survivor
    assert (deal["stage"], deal["amount_minor"], deal["currency"]) == ("closedwon", 480000, "USD")

    # Nothing the merge left behind was refused by the store.
    wait_for(
        lambda: any(m["template"] == "onboarding_welcome" for m in outbox(settings)),
        "the onboarding e-mail",
        60,
    )
    [welcome] = [m for m in outbox(settings) if m["template"] == "onboarding_welcome"]
    assert welcome["recipient"] == EMAIL
    assert welcome["rendered"]["text"].startswith("Hi Dana,")

    # The same record in HubSpot: one contact with everything associated to it.
    hubspot = pipeline.hubspot

    def hubspot_complete() -> bool:
        deals = hubspot.find("deals", "dealstage", "closedwon")
        return len(hubspot.objects["calls"]) == 2 and bool(deals) and "amount" in deals[0]

    wait_for(hubspot_complete, "the record in HubSpot", 60)
    [(hubspot_id, person)] = hubspot.objects["contacts"].items()
    assert (person["firstname"], person["lastname"], person["company"]) == (
        "Dana",
        "Whitfield",
        "Whitfield Bakery",
    )
    assert (person["email"], person["phone"], person["zip"]) == (EMAIL, PHONE, "94110")
    assert person["switchboard_service"] == "boiler replacement"
    assert person["switchboard_qualification"] == "qualified"
    assert person["hubspot_owner_id"] == HUBSPOT_OWNER
    calls = {c["hs_call_title"]: c for c in hubspot.objects["calls"].values()}
    ai_call = calls["Inbound call (completed, 4m 07s)"]
    assert ai_call["hs_call_direction"] == "INBOUND"
    assert ai_call["hs_call_recording_url"] == "https://storage.vapi.ai/recordings/dana.wav"
    assert "boiler failed" in ai_call["hs_call_body"]
    assert set(hubspot.objects["calls"]) <= hubspot.associated("calls", hubspot_id)
    [hubspot_task] = [
        t for t in hubspot.objects["tasks"].values() if "written quote" in t["hs_task_subject"]
    ]
    assert hubspot_task["hs_task_priority"] == "HIGH"
    assert hubspot_task["hubspot_owner_id"] == HUBSPOT_OWNER
    [hubspot_deal] = hubspot.find("deals", "dealstage", "closedwon")
    assert (hubspot_deal["amount"], hubspot_deal["deal_currency_code"]) == ("4800.00", "USD")
    assert hubspot_deal["hs_object_id"] in hubspot.associated("deals", hubspot_id)

    # And in Salesforce (whose Opportunities this writer does not tie to a contact).
    salesforce = pipeline.salesforce

    def salesforce_complete() -> bool:
        won = salesforce.find("Opportunity", "StageName", "Closed Won")
        calls = salesforce.find("Task", "Type", "Call")
        return len(calls) == 2 and bool(won) and won[0].get("Amount") == 4800

    wait_for(salesforce_complete, "the record in Salesforce", 60)
    [(salesforce_id, sf_person)] = salesforce.records["Contact"].items()
    assert (sf_person["FirstName"], sf_person["LastName"]) == ("Dana", "Whitfield")
    assert (sf_person["Email"], sf_person["Phone"]) == (EMAIL, PHONE)
    assert sf_person["MailingPostalCode"] == "94110"
    assert sf_person["Switchboard_Service__c"] == "boiler replacement"
    assert sf_person["Switchboard_Qualification__c"] == "qualified"
    assert sf_person["OwnerId"] == SALESFORCE_USER
    sf_calls = salesforce.find("Task", "Type", "Call")
    assert {t["WhoId"] for t in sf_calls} == {salesforce_id}
    assert {t["CallType"] for t in sf_calls} == {"Inbound"}
    [sf_task] = [t for t in salesforce.records["Task"].values() if "written quote" in t["Subject"]]
    assert (sf_task["WhoId"], sf_task["OwnerId"]) == (salesforce_id, SALESFORCE_USER)
