"""The HubSpot writer against a local server that speaks HubSpot's CRM API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from connectors.sinks.crm.hubspot import HubSpotWriter
from connectors.sinks.delivery import Outcome, Rejected, Retryable
from tests.fakes import Scripted
from tests.fakes.hubspot import FakeHubSpot
from tests.records import crm_command

ISSUED = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
AUTH = "Bearer pat-na1-test"


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    with FakeHubSpot.running() as fake:
        yield fake


def command(kind: str, contact_id: str, payload: dict[str, Any], cid: str = "") -> dict[str, Any]:
    return crm_command(kind, contact_id, payload, command_id=cid, issued_at=ISSUED)


def contact(contact_id: str, email: str | None = None, **fields: Any) -> dict[str, Any]:
    payload = {
        "email": email,
        "phone": None,
        "crm_id": None,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "company": None,
        "title": None,
        "properties": {},
        **fields,
    }
    return command("UPSERT_CONTACT", contact_id, payload)


def deliver(
    fake: FakeHubSpot, *batches: Sequence[dict[str, Any]], **options: Any
) -> list[list[Outcome]]:
    """Deliver each batch in turn with one writer; the outcomes of each."""

    async def run() -> list[list[Outcome]]:
        writer = HubSpotWriter("pat-na1-test", base_url=fake.url, **options)
        try:
            return [await writer.deliver(batch) for batch in batches]
        finally:
            await writer.close()

    return asyncio.run(run())


def bodies(fake: FakeHubSpot, path_end: str) -> list[Any]:
    return [r.body for r in fake.requests if r.path.endswith(path_end)]


def test_contacts_upsert_by_email_or_by_switchboard_id(hubspot: FakeHubSpot) -> None:
    records = [
        contact("c-1", "ada@example.com", phone="+441234567890", company="Engines", title="CTO"),
        contact("c-2", properties={"lifecyclestage": "lead"}),
    ]
    [outcomes] = deliver(hubspot, records)

    assert outcomes == [None, None]
    first, second = hubspot.requests
    assert (first.method, first.path) == ("POST", "/crm/v3/objects/contacts/batch/upsert")
    assert first.headers["Authorization"] == AUTH
    assert first.body == {
        "inputs": [
            {
                "id": "ada@example.com",
                "idProperty": "email",
                "objectWriteTraceId": "cmd-upsert_contact-c-1",
                "properties": {
                    "email": "ada@example.com",
                    "phone": "+441234567890",
                    "firstname": "Ada",
                    "lastname": "Lovelace",
                    "company": "Engines",
                    "jobtitle": "CTO",
                    "switchboard_contact_id": "c-1",
                },
            }
        ]
    }
    assert second.body == {
        "inputs": [
            {
                "id": "c-2",
                "idProperty": "switchboard_contact_id",
                "objectWriteTraceId": "cmd-upsert_contact-c-2",
                "properties": {
                    "lifecyclestage": "lead",
                    "firstname": "Ada",
                    "lastname": "Lovelace",
                    "switchboard_contact_id": "c-2",
                },
            }
        ]
    }
    assert hubspot.find("contacts", "switchboard_contact_id", "c-1")[0]["jobtitle"] == "CTO"


def test_set_owner_maps_the_rep_to_a_hubspot_owner(hubspot: FakeHubSpot) -> None:
    owner = command("SET_OWNER", "c-1", {"owner_id": "rep-7", "reason": "round robin"})
    deliver(hubspot, [contact("c-1")], [owner], owner_ids={"rep-7": "9001"})

    assert hubspot.requests[-1].body == {
        "inputs": [
            {
                "id": "c-1",
                "idProperty": "switchboard_contact_id",
                "objectWriteTraceId": "cmd-set_owner-c-1",
                "properties": {"hubspot_owner_id": "9001", "switchboard_contact_id": "c-1"},
            }
        ]
    }
    [stored] = hubspot.find("contacts", "switchboard_contact_id", "c-1")
    assert stored["hubspot_owner_id"] == "9001"


def test_an_unknown_rep_is_rejected_by_name_without_a_call(hubspot: FakeHubSpot) -> None:
    owner = command("SET_OWNER", "c-1", {"owner_id": "rep-404", "reason": "x"})
    [[outcome]] = deliver(hubspot, [owner], owner_ids={"rep-7": "9001"})

    assert isinstance(outcome, Rejected)
    assert "rep-404" in str(outcome)
    assert hubspot.requests == []


def test_deal_is_upserted_by_deal_id_and_tied_to_its_contact(hubspot: FakeHubSpot) -> None:
    create = command(
        "CREATE_DEAL",
        "c-1",
        {
            "deal_id": "d-1",
            "name": "Boiler",
            "stage": "appointmentscheduled",
            "pipeline": "default",
            "amount_minor": 129_950,
            "currency": "EUR",
        },
    )
    stage = command(
        "UPDATE_DEAL_STAGE",
        "c-1",
        {"deal_id": "d-1", "stage": "closedwon", "previous_stage": "appointmentscheduled"},
    )
    outcomes = deliver(hubspot, [contact("c-1")], [create], [stage])

    assert outcomes == [[None], [None], [None]]
    [contact_id] = hubspot.objects["contacts"]
    assert bodies(hubspot, "/contacts/batch/read")[0] == {
        "idProperty": "switchboard_contact_id",
        "inputs": [{"id": "c-1"}],
        "properties": ["switchboard_contact_id"],
    }
    create_body, stage_body = bodies(hubspot, "/deals/batch/upsert")
    assert create_body == {
        "inputs": [
            {
                "id": "d-1",
                "idProperty": "switchboard_deal_id",
                "objectWriteTraceId": "cmd-create_deal-c-1",
                "properties": {
                    "dealname": "Boiler",
                    "dealstage": "appointmentscheduled",
                    "pipeline": "default",
                    "amount": "1299.50",
                    "deal_currency_code": "EUR",
                    "switchboard_deal_id": "d-1",
                },
            }
        ]
    }
    assert stage_body["inputs"][0]["properties"] == {
        "dealstage": "closedwon",
        "switchboard_deal_id": "d-1",
    }
    [deal_id] = hubspot.objects["deals"]
    assert bodies(hubspot, "/deals/contacts/batch/associate/default")[0] == {
        "inputs": [{"from": {"id": deal_id}, "to": {"id": contact_id}}]
    }
    assert hubspot.objects["deals"][deal_id]["dealstage"] == "closedwon"
    assert hubspot.associations == {("deals", deal_id, "contacts", contact_id)}


ENGAGEMENTS = [
    (
        command(
            "CREATE_TASK",
            "c-1",
            {
                "task_id": "t-1",
                "title": "Call back about the quote",
                "due_at": datetime(2026, 3, 3, 14, 0, tzinfo=UTC),
                "owner_id": "rep-7",
                "priority": "high",
                "notes": "Asked for Tuesday afternoon",
            },
        ),
        "tasks",
        {
            "hs_task_subject": "Call back about the quote",
            "hs_task_body": "Asked for Tuesday afternoon",
            "hs_timestamp": "2026-03-03T14:00:00.000Z",
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "HIGH",
            "hubspot_owner_id": "9001",
        },
    ),
    (
        command(
            "LOG_ACTIVITY",
            "c-2",
            {
                "activity_id": "a-1",
                "activity_type": "call",
                "occurred_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
                "outcome": "connected",
                "duration_seconds": 95,
                "summary": "Wants a quote",
            },
        ),
        "calls",
        {
            "hs_timestamp": "2026-03-02T09:00:00.000Z",
            "hs_call_title": "Call: connected",
            "hs_call_body": "Wants a quote",
            "hs_call_duration": "95000",
            "hs_call_status": "COMPLETED",
        },
    ),
    (
        command(
            "LOG_ACTIVITY",
            "c-3",
            {
                "activity_id": "a-2",
                "activity_type": "sms",
                "occurred_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
                "outcome": None,
                "duration_seconds": None,
                "summary": "On my way",
            },
        ),
        "communications",
        {
            "hs_timestamp": "2026-03-02T09:00:00.000Z",
            "hs_communication_channel_type": "SMS",
            "hs_communication_logged_from": "CRM",
            "hs_communication_body": "On my way",
        },
    ),
    (
        command("ADD_NOTE", "c-4", {"note_id": "n-1", "body": "Prefers e-mail"}),
        "notes",
        {"hs_note_body": "Prefers e-mail", "hs_timestamp": "2026-03-02T09:30:00.000Z"},
    ),
]


def test_engagements_are_upserted_by_command_id_and_associated(hubspot: FakeHubSpot) -> None:
    contacts = [contact(f"c-{n}") for n in range(1, 5)]
    records = [record for record, _, _ in ENGAGEMENTS]
    outcomes = deliver(hubspot, contacts, records, owner_ids={"rep-7": "9001"})

    assert outcomes == [[None] * 4, [None] * 4]
    for record, object_type, properties in ENGAGEMENTS:
        [body] = bodies(hubspot, f"/{object_type}/batch/upsert")
        assert body == {
            "inputs": [
                {
                    "id": record["command_id"],
                    "idProperty": "switchboard_command_id",
                    "objectWriteTraceId": record["command_id"],
                    "properties": {**properties, "switchboard_command_id": record["command_id"]},
                }
            ]
        }
        [(object_id, _)] = hubspot.objects[object_type].items()
        contact_id = hubspot.find("contacts", "switchboard_contact_id", record["contact_id"])[0]
        assert (object_type, object_id, "contacts", contact_id["hs_object_id"]) in (
            hubspot.associations
        )


def test_redelivery_leaves_one_record_each(hubspot: FakeHubSpot) -> None:
    contacts = [contact(f"c-{n}", f"p{n}@example.com") for n in range(1, 5)]
    records = [record for record, _, _ in ENGAGEMENTS]
    deliver(hubspot, contacts, records, contacts, records, owner_ids={"rep-7": "9001"})

    assert {kind: len(stored) for kind, stored in hubspot.objects.items() if stored} == {
        "contacts": 4,
        "tasks": 1,
        "calls": 1,
        "communications": 1,
        "notes": 1,
    }
    assert len(hubspot.associations) == 4
    second_round = bodies(hubspot, "/contacts/batch/upsert")[-1]
    assert len(second_round["inputs"]) == 4


def test_a_207_maps_each_error_to_its_record(hubspot: FakeHubSpot) -> None:
    hubspot.reject("p2@example.com", "Email address p2@example.com is invalid")
    records = [contact(f"c-{n}", f"p{n}@example.com") for n in range(1, 4)]
    [outcomes] = deliver(hubspot, records)

    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], Rejected)
    assert "p2@example.com is invalid" in str(outcomes[1])
    assert "HTTP 207" in outcomes[1].answer
    assert len(hubspot.objects["contacts"]) == 2


def test_unknown_property_and_bad_owner_come_back_per_record(hubspot: FakeHubSpot) -> None:
    deliver(hubspot, [contact("c-2"), contact("c-3")])
    records = [
        contact("c-1", properties={"favourite_colour": "teal"}),
        contact("c-4"),
        command("SET_OWNER", "c-2", {"owner_id": "777", "reason": "x"}),  # not a HubSpot owner
        command("SET_OWNER", "c-3", {"owner_id": "9002", "reason": "x"}),
    ]
    [outcomes] = deliver(hubspot, records)

    assert isinstance(outcomes[0], Rejected)
    assert "PROPERTY_DOESNT_EXIST" in str(outcomes[0])
    assert isinstance(outcomes[2], Rejected)
    assert "777 is not a valid owner id" in str(outcomes[2])
    assert outcomes[1] is None and outcomes[3] is None


def test_a_400_naming_one_input_rejects_it_and_retries_the_rest(hubspot: FakeHubSpot) -> None:
    body = {
        "status": "error",
        "message": "Property values were not valid",
        "correlationId": "a43683b0-5717-4ceb-80b4-104d02915d8c",
        "category": "VALIDATION_ERROR",
        "context": {"objectWriteTraceId": ["cmd-upsert_contact-c-2"]},
    }
    hubspot.fail_next(Scripted(400, json.dumps(body)))
    records = [contact(f"c-{n}", f"p{n}@example.com") for n in range(1, 4)]
    [outcomes] = deliver(hubspot, records)

    assert isinstance(outcomes[0], Retryable) and isinstance(outcomes[2], Retryable)
    assert isinstance(outcomes[1], Rejected)
    assert "Property values were not valid" in str(outcomes[1])


def test_a_task_for_a_contact_hubspot_does_not_have_is_rejected(hubspot: FakeHubSpot) -> None:
    [[outcome]] = deliver(hubspot, [ENGAGEMENTS[3][0]])

    assert isinstance(outcome, Rejected)
    assert "c-4" in str(outcome)
    assert hubspot.objects["notes"] == {}


def test_429_is_retryable_after_the_servers_wait(hubspot: FakeHubSpot) -> None:
    hubspot.rate_limit(retry_after="7")
    with pytest.raises(Retryable) as raised:
        deliver(hubspot, [contact("c-1")])
    assert raised.value.retry_after == 7.0
    assert "RATE_LIMIT" in raised.value.answer

    hubspot.rate_limit(retry_after=None)  # no Retry-After: wait out the rolling window
    with pytest.raises(Retryable) as raised:
        deliver(hubspot, [contact("c-1")])
    assert raised.value.retry_after == 10.0
    assert "TEN_SECONDLY_ROLLING" in str(raised.value)

    hubspot.rate_limit(retry_after=None, policy="DAILY")
    with pytest.raises(Retryable) as raised:
        deliver(hubspot, [contact("c-1")])
    assert raised.value.retry_after is None


def test_a_burst_of_5xx_is_retryable_then_delivers(hubspot: FakeHubSpot) -> None:
    hubspot.server_errors(2, status=502)
    for _ in range(2):
        with pytest.raises(Retryable, match="HTTP 502"):
            deliver(hubspot, [contact("c-1")])
    assert deliver(hubspot, [contact("c-1")]) == [[None]]
    assert len(hubspot.objects["contacts"]) == 1


def test_a_slow_answer_is_a_retryable_timeout(hubspot: FakeHubSpot) -> None:
    hubspot.slow(2.0)
    with pytest.raises(Retryable, match=r"no answer within 0\.2 s"):
        deliver(hubspot, [contact("c-1")], timeout_s=0.2)


def test_a_malformed_400_is_rejected_with_the_body(hubspot: FakeHubSpot) -> None:
    hubspot.malformed_400("<html><body>Bad Request: upstream said no</body></html>")
    [outcomes] = deliver(hubspot, [contact("c-1", "a@example.com"), contact("c-2", "b@x.org")])

    for outcome in outcomes:
        assert isinstance(outcome, Rejected)
        assert "HTTP 400" in str(outcome)
        assert "upstream said no" in outcome.answer


def test_bad_credentials_are_rejected(hubspot: FakeHubSpot) -> None:
    async def run() -> None:
        writer = HubSpotWriter("wrong", base_url=hubspot.url)
        try:
            await writer.deliver([contact("c-1")])
        finally:
            await writer.close()

    with pytest.raises(Rejected, match="HTTP 401") as raised:
        asyncio.run(run())
    assert "INVALID_AUTHENTICATION" in raised.value.answer


def test_the_server_refuses_more_than_100_inputs_and_the_writer_never_sends_them(
    hubspot: FakeHubSpot,
) -> None:
    async def oversized() -> tuple[int, Any]:
        inputs = [
            {"id": f"c-{n}", "idProperty": "switchboard_contact_id", "properties": {}}
            for n in range(101)
        ]
        async with aiohttp.ClientSession(headers={"Authorization": AUTH}) as session:
            url = f"{hubspot.url}/crm/v3/objects/contacts/batch/upsert"
            async with session.post(url, json={"inputs": inputs}) as response:
                return response.status, await response.json()

    status, body = asyncio.run(oversized())
    assert status == 400
    assert body["status"] == "error" and body["category"] == "VALIDATION_ERROR"
    assert "limit is 100" in body["message"]
    assert hubspot.objects["contacts"] == {}

    records = [contact(f"c-{n}") for n in range(150)]
    [outcomes] = deliver(hubspot, records)
    assert outcomes == [None] * 150
    sizes = [len(body["inputs"]) for body in bodies(hubspot, "/contacts/batch/upsert")]
    assert sizes == [101, 100, 50]  # the oversized probe above, then the writer's chunks
    assert len(hubspot.objects["contacts"]) == 150
