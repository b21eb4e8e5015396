"""The HubSpot writer against a local server that speaks HubSpot's CRM API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.sinks.crm.hubspot import HubSpotWriter, contact_property
from processors.records.contact import upsert_contact
from processors.state import ContactState
from tests.fakes import Scripted
from tests.fakes.hubspot import FakeHubSpot
from tests.records import crm_command

ISSUED = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
AUTH = "Bearer pat-na1-test"
# HubSpot's default call outcomes, as hs_call_disposition takes them.
CONNECTED = "f240bbac-87c9-4f6e-bf70-924b57d47db7"
LEFT_VOICEMAIL = "b2cf5968-551e-4856-9783-52b3da59a7d0"


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
    # Before writing, one read asks whether a merge retired any of the batch's contact ids.
    [alias_read] = bodies(hubspot, "/notes/batch/read")
    assert alias_read == {
        "idProperty": "switchboard_command_id",
        "inputs": [{"id": "merged-contact:c-1"}, {"id": "merged-contact:c-2"}],
        "properties": ["switchboard_command_id"],
    }
    first, second = [r for r in hubspot.requests if r.path.endswith("/batch/upsert")]
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
            "hs_call_body": "Wants a quote\nOutcome: connected",
            "hs_call_duration": "95000",
            "hs_call_status": "COMPLETED",
            "hs_call_disposition": CONNECTED,
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


# -- MERGE_CONTACTS ----------------------------------------------------------------------


def merge(survivor: str, retired: str, cid: str = "") -> dict[str, Any]:
    payload = {"retired_contact_id": retired, "identifier": "+441234567890"}
    return command("MERGE_CONTACTS", survivor, payload, cid)


def deal(contact_id: str, deal_id: str, **fields: Any) -> dict[str, Any]:
    payload = {
        "deal_id": deal_id,
        "name": f"Deal {deal_id}",
        "stage": "appointmentscheduled",
        "pipeline": None,
        "amount_minor": None,
        "currency": None,
        **fields,
    }
    return command("CREATE_DEAL", contact_id, payload, f"cmd-{deal_id}")


def activity(contact_id: str, activity_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    payload = {
        "activity_id": activity_id,
        "activity_type": kind,
        "occurred_at": datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
        "outcome": None,
        "duration_seconds": None,
        "summary": None,
        "direction": None,
        "status": None,
        "handled_by": None,
        "recording_url": None,
        "title": None,
        **fields,
    }
    return command("LOG_ACTIVITY", contact_id, payload, f"cmd-{activity_id}")


def history(contact_id: str) -> list[dict[str, Any]]:
    """A deal, a task, a call and a note for ``contact_id``."""
    task = {
        "task_id": f"t-{contact_id}",
        "title": "Call back",
        "due_at": datetime(2026, 3, 3, 14, 0, tzinfo=UTC),
        "owner_id": None,
        "priority": None,
        "notes": None,
    }
    return [
        deal(contact_id, f"d-{contact_id}"),
        command("CREATE_TASK", contact_id, task, f"cmd-t-{contact_id}"),
        activity(contact_id, f"a-{contact_id}", "call", summary="Asked for a quote"),
        command("ADD_NOTE", contact_id, {"note_id": "n", "body": "VIP"}, f"cmd-n-{contact_id}"),
    ]


def contact_of(fake: FakeHubSpot, contact_id: str) -> str:
    [stored] = fake.find("contacts", "switchboard_contact_id", contact_id)
    return stored["hs_object_id"]


@pytest.mark.parametrize("merged_values_resolve", [False, True])
def test_a_merge_moves_everything_to_the_survivor_and_later_commands_follow(
    merged_values_resolve: bool,
) -> None:
    with FakeHubSpot.running(merged_values_resolve=merged_values_resolve) as hubspot:
        deliver(
            hubspot,
            [contact("c-1", "ada@example.com"), contact("c-2", "ada@work.example")],
            history("c-1")[:1] + history("c-2")[:1],  # one record per contact and batch
            history("c-1")[1:2] + history("c-2")[1:2],
            history("c-1")[2:3] + history("c-2")[2:3],
            history("c-1")[3:] + history("c-2")[3:],
        )
        survivor, retired = contact_of(hubspot, "c-1"), contact_of(hubspot, "c-2")

        [[outcome]] = deliver(hubspot, [merge("c-1", "c-2")])

        assert outcome is None
        assert bodies(hubspot, "/contacts/merge") == [
            {"primaryObjectId": survivor, "objectIdToMerge": retired}
        ]
        [(merged_id, merged)] = hubspot.objects["contacts"].items()
        assert merged_id not in (survivor, retired)  # HubSpot makes a new record...
        assert hubspot.resolve(retired) == hubspot.resolve(survivor) == merged_id  # ...for both
        assert merged["switchboard_contact_id"] == "c-1"
        assert merged["email"] == "ada@example.com"
        assert merged["hs_additional_emails"] == "ada@work.example"
        for kind, count in (("deals", 2), ("tasks", 2), ("calls", 2), ("notes", 3)):
            tied = hubspot.associated(kind, merged_id)
            assert tied == set(hubspot.objects[kind]) and len(tied) == count, kind
        [alias] = hubspot.find("notes", "switchboard_command_id", "merged-contact:c-2")
        assert "merged contact c-2 into c-1" in alias["hs_note_body"]
        assert "+441234567890" in alias["hs_note_body"]

        # Commands issued for c-2 before the merge, arriving after it.
        late = [
            contact("c-2", "ada@work.example", phone="+447700900123"),
            activity("c-2", "a-late", "sms", summary="On my way"),
            deal("c-2", "d-late"),
        ]
        outcomes = deliver(hubspot, *([record] for record in late))

        assert outcomes == [[None], [None], [None]]
        [(still_merged, after)] = hubspot.objects["contacts"].items()
        assert still_merged == merged_id
        assert after["switchboard_contact_id"] == "c-1"
        assert after["phone"] == "+447700900123"
        [late_upsert] = bodies(hubspot, "/contacts/batch/upsert")[-1:]
        assert late_upsert["inputs"][0]["id"] == "c-1"
        assert late_upsert["inputs"][0]["idProperty"] == "switchboard_contact_id"
        [sms_id] = hubspot.objects["communications"]
        late_deal = hubspot.find("deals", "switchboard_deal_id", "d-late")[0]["hs_object_id"]
        assert sms_id in hubspot.associated("communications", merged_id)
        assert late_deal in hubspot.associated("deals", merged_id)


def test_a_replayed_merge_changes_nothing(hubspot: FakeHubSpot) -> None:
    deliver(hubspot, [contact("c-1"), contact("c-2")], history("c-2")[:1])
    outcomes = deliver(hubspot, [merge("c-1", "c-2")], [merge("c-1", "c-2")])

    assert outcomes == [[None], [None]]
    assert len(bodies(hubspot, "/contacts/merge")) == 1
    [merged_id] = hubspot.objects["contacts"]
    assert len(hubspot.find("notes", "switchboard_command_id", "merged-contact:c-2")) == 1
    assert len(hubspot.associated("notes", merged_id)) == 1
    assert hubspot.associated("deals", merged_id) == set(hubspot.objects["deals"])


def test_a_merge_into_another_survivor_after_the_first_is_a_no_op(hubspot: FakeHubSpot) -> None:
    deliver(hubspot, [contact("c-1"), contact("c-2"), contact("c-3")], [merge("c-1", "c-2")])
    [[outcome]] = deliver(hubspot, [merge("c-3", "c-2", "cmd-again")])

    assert outcome is None
    assert len(bodies(hubspot, "/contacts/merge")) == 1
    assert len(hubspot.objects["contacts"]) == 2
    [alias] = hubspot.find("notes", "switchboard_command_id", "merged-contact:c-2")
    assert hubspot.associated("notes", contact_of(hubspot, "c-1")) == {alias["hs_object_id"]}


# A payment's move of d-1 by the survivor c-1, after c-2 (which opened d-1) was merged in.
PAID = {
    "deal_id": "d-1",
    "stage": "closedwon",
    "previous_stage": "appointmentscheduled",
    "amount_minor": 480_000,
    "currency": "USD",
}


@pytest.mark.parametrize("together", [False, True])
def test_a_late_create_of_an_adopted_deal_leaves_the_survivors_move(
    hubspot: FakeHubSpot, together: bool
) -> None:
    """c-2 opened d-1 and was merged into c-1, whose merge made d-1 again (issue 19
    follow-up); c-2's own create, on another partition, comes after c-1 moved the deal:
    in a call of its own or in the move's. A create of a deal that exists sends nothing."""
    late = command("CREATE_DEAL", "c-2", deal("c-2", "d-1")["payload"], "cmd-c-2-create")
    moved = command("UPDATE_DEAL_STAGE", "c-1", PAID, "cmd-c-1-move")
    first = deliver(
        hubspot,
        [contact("c-1", "ada@example.com"), contact("c-2", "ada@work.example")],
        [merge("c-1", "c-2")],
        [deal("c-1", "d-1")],  # the merge's create, in c-1's order
    )
    assert first == [[None, None], [None], [None]]
    outcomes = deliver(hubspot, [moved, late]) if together else deliver(hubspot, [moved], [late])

    assert all(o is None for batch in outcomes for o in batch), outcomes
    [(deal_id, stored)] = hubspot.objects["deals"].items()
    assert (stored["dealname"], stored["dealstage"], stored["amount"]) == (
        "Deal d-1",
        "closedwon",
        "4800.00",
    )
    assert stored["deal_currency_code"] == "USD"
    upserted = [
        i["properties"] for b in bodies(hubspot, "/deals/batch/upsert") for i in b["inputs"]
    ]
    assert [p["dealstage"] for p in upserted] == ["appointmentscheduled", "closedwon"]
    [merged_id] = hubspot.objects["contacts"]
    assert hubspot.associated("deals", merged_id) == {deal_id}


def test_two_creates_of_one_deal_in_a_call_make_it_once(hubspot: FakeHubSpot) -> None:
    deliver(hubspot, [contact("c-1", "ada@example.com"), contact("c-2", "ada@work.example")])
    deliver(hubspot, [merge("c-1", "c-2")])
    late = command("CREATE_DEAL", "c-2", deal("c-2", "d-1")["payload"], "cmd-c-2-create")
    hubspot.requests.clear()

    [outcomes] = deliver(hubspot, [deal("c-1", "d-1"), late])

    assert outcomes == [None, None]
    [read] = bodies(hubspot, "/deals/batch/read")
    assert read == {
        "idProperty": "switchboard_deal_id",
        "inputs": [{"id": "d-1"}],
        "properties": ["switchboard_deal_id"],
    }
    [upsert] = bodies(hubspot, "/deals/batch/upsert")
    assert [i["objectWriteTraceId"] for i in upsert["inputs"]] == ["cmd-d-1"]
    assert len(hubspot.objects["deals"]) == 1


def test_merging_an_unknown_retired_contact_only_keeps_the_alias(hubspot: FakeHubSpot) -> None:
    deliver(hubspot, [contact("c-1", "ada@example.com")])
    survivor = contact_of(hubspot, "c-1")

    [[outcome]] = deliver(hubspot, [merge("c-1", "c-9")])

    assert outcome is None
    assert bodies(hubspot, "/contacts/merge") == []
    assert list(hubspot.objects["contacts"]) == [survivor]
    # c-9's own commands, still on their way, land on c-1 rather than make a contact.
    outcomes = deliver(hubspot, [contact("c-9", phone="+15550100")], history("c-9")[:1])
    assert outcomes == [[None], [None]]
    assert list(hubspot.objects["contacts"]) == [survivor]
    assert hubspot.objects["contacts"][survivor]["phone"] == "+15550100"
    assert hubspot.associated("deals", survivor) == set(hubspot.objects["deals"])


def test_when_only_the_retired_contact_exists_it_becomes_the_survivor(
    hubspot: FakeHubSpot,
) -> None:
    deliver(hubspot, [contact("c-2")], history("c-2")[:1])
    retired = contact_of(hubspot, "c-2")

    [[outcome]] = deliver(hubspot, [merge("c-1", "c-2")])

    assert outcome is None
    assert bodies(hubspot, "/contacts/merge") == []
    assert hubspot.objects["contacts"][retired]["switchboard_contact_id"] == "c-1"
    assert deliver(hubspot, history("c-1")[3:], history("c-2")[3:]) == [[None], [None]]
    assert len(hubspot.associated("notes", retired)) == 3  # two notes and the alias


def test_a_merge_of_two_contacts_hubspot_never_saw_is_rejected(hubspot: FakeHubSpot) -> None:
    [[outcome]] = deliver(hubspot, [merge("c-1", "c-2")])

    assert isinstance(outcome, Rejected)
    assert "neither is in HubSpot" in str(outcome)
    assert hubspot.objects["notes"] == {}


def test_a_refused_merge_is_rejected_with_hubspots_answer(hubspot: FakeHubSpot) -> None:
    deliver(hubspot, [contact("c-1"), contact("c-2")])
    hubspot.refuse_merges("Merging these contacts is not allowed")

    [[outcome]] = deliver(hubspot, [merge("c-1", "c-2")])

    assert isinstance(outcome, Rejected)
    assert "HTTP 400 VALIDATION_ERROR: Merging these contacts is not allowed" in str(outcome)
    assert len(hubspot.objects["contacts"]) == 2

    hubspot.refuse_merges(None)  # the portal was fixed: the redelivered command merges
    assert deliver(hubspot, [merge("c-1", "c-2")]) == [[None]]
    assert len(hubspot.objects["contacts"]) == 1


# -- LOG_ACTIVITY: calls, forms, payments --------------------------------------------------


def test_a_calls_direction_status_outcome_recording_and_handler_land(
    hubspot: FakeHubSpot,
) -> None:
    calls = [
        activity(
            "c-1",
            "a-1",
            "call",
            direction="inbound",
            status="completed",
            outcome="voicemail",
            duration_seconds=192,
            summary="Caller asked about boiler servicing.",
            handled_by="Aria (voice AI)",
            recording_url="https://recordings.example.com/a-1.mp3",
            title="Inbound call (completed, 3m 12s)",
        ),
        activity(
            "c-2",
            "a-2",
            "call",
            direction="outbound",
            status="no-answer",
            handled_by="rep-7",
        ),
        activity("c-3", "a-3", "call", status="dropped", outcome="interested"),
    ]
    outcomes = deliver(
        hubspot,
        [contact("c-1"), contact("c-2"), contact("c-3")],
        calls,
        owner_ids={"rep-7": "9001"},
    )

    assert outcomes == [[None] * 3, [None] * 3]
    stored = {p["switchboard_command_id"]: p for p in hubspot.objects["calls"].values()}
    first = stored["cmd-a-1"]
    assert {k: v for k, v in first.items() if k.startswith("hs_call")} == {
        "hs_call_title": "Inbound call (completed, 3m 12s)",
        "hs_call_body": "Caller asked about boiler servicing.\nOutcome: voicemail\n"
        "Handled by: Aria (voice AI)",
        "hs_call_direction": "INBOUND",
        "hs_call_duration": "192000",
        "hs_call_status": "COMPLETED",
        "hs_call_disposition": LEFT_VOICEMAIL,
        "hs_call_recording_url": "https://recordings.example.com/a-1.mp3",
    }
    assert "hubspot_owner_id" not in first  # the assistant is no HubSpot owner
    second = stored["cmd-a-2"]
    assert second["hs_call_direction"] == "OUTBOUND"
    assert second["hs_call_status"] == "NO_ANSWER"
    assert second["hs_call_disposition"] == "73a0d17f-1163-4015-bdd5-ec830791da20"
    assert second["hubspot_owner_id"] == "9001"
    assert second["hs_call_title"] == "Call"
    third = stored["cmd-a-3"]  # neither maps to HubSpot's words: both stay in the body
    assert third["hs_call_status"] == "COMPLETED"
    assert "hs_call_disposition" not in third
    assert third["hs_call_body"] == "Outcome: interested\nStatus: dropped"


def test_an_activity_with_an_unknown_direction_is_rejected_without_a_call(
    hubspot: FakeHubSpot,
) -> None:
    [[outcome]] = deliver(hubspot, [activity("c-1", "a-1", "call", direction="sideways")])

    assert isinstance(outcome, Rejected) and "sideways" in str(outcome)
    assert hubspot.requests == []


def test_forms_and_payments_become_notes_headed_by_their_title(hubspot: FakeHubSpot) -> None:
    records = [
        activity(
            "c-1",
            "a-form",
            "form",
            title="Request a quote (website)",
            summary="Service: boiler installation\nPostcode: 1000-001",
        ),
        activity("c-2", "a-pay", "payment", outcome="succeeded", summary="EUR 1,250.00 by card"),
    ]
    outcomes = deliver(hubspot, [contact("c-1"), contact("c-2")], records)

    assert outcomes == [[None, None], [None, None]]
    [form] = hubspot.find("notes", "switchboard_command_id", "cmd-a-form")
    [payment] = hubspot.find("notes", "switchboard_command_id", "cmd-a-pay")
    assert form["hs_note_body"] == (
        "Request a quote (website)\nService: boiler installation\nPostcode: 1000-001"
    )
    assert form["hs_timestamp"] == "2026-03-02T09:00:00.000Z"
    assert payment["hs_note_body"] == "Payment: succeeded\nEUR 1,250.00 by card"
    assert hubspot.associated("notes", contact_of(hubspot, "c-1")) == {form["hs_object_id"]}
    assert hubspot.associated("notes", contact_of(hubspot, "c-2")) == {payment["hs_object_id"]}


# -- UPDATE_DEAL_STAGE with an amount ----------------------------------------------------


def test_a_stage_update_with_an_amount_sets_it_and_one_without_leaves_it(
    hubspot: FakeHubSpot,
) -> None:
    def stage(stage: str, amount_minor: int | None, currency: str | None) -> dict[str, Any]:
        payload = {
            "deal_id": "d-1",
            "stage": stage,
            "previous_stage": None,
            "amount_minor": amount_minor,
            "currency": currency,
        }
        return command("UPDATE_DEAL_STAGE", "c-1", payload, f"cmd-{stage}")

    outcomes = deliver(
        hubspot,
        [contact("c-1")],
        [deal("c-1", "d-1", amount_minor=129_950, currency="EUR")],
        [stage("contractsent", 125_000, "EUR")],
        [stage("closedwon", None, None)],
        [stage("closedlost", 125_000, "eur")],
    )

    assert outcomes[:4] == [[None], [None], [None], [None]]
    [refused] = outcomes[4]
    assert isinstance(refused, Rejected) and "'eur'" in str(refused)
    with_amount, without = bodies(hubspot, "/deals/batch/upsert")[1:]
    assert with_amount["inputs"][0]["properties"] == {
        "dealstage": "contractsent",
        "amount": "1250.00",
        "deal_currency_code": "EUR",
        "switchboard_deal_id": "d-1",
    }
    assert without["inputs"][0]["properties"] == {
        "dealstage": "closedwon",
        "switchboard_deal_id": "d-1",
    }
    [stored] = hubspot.objects["deals"].values()
    assert (stored["dealstage"], stored["amount"]) == ("closedwon", "1250.00")


# -- contact properties: Switchboard's names -> HubSpot's --------------------------------

# What the processors put in an UPSERT_CONTACT's properties, under their own names.
PROCESSOR_PROPERTIES = {
    "lead_score": "42",
    "lead_band": "MQL",
    "service": "boiler replacement",
    "qualification": "qualified",
    "postcode": "94110",
    "timezone": "America/New_York",
    "workflow_tags": "a,b",
}


def processor_contact(contact_id: str = "c-1", **properties: str) -> dict[str, Any]:
    """An UPSERT_CONTACT the way the processors build it (processors.records), with every
    profile field the CRM shows, a band, an SLA flag and a workflow's exit update."""
    profile = {
        "first_name": "Dana",
        "last_name": "Whitfield",
        "company": "Whitfield Bakery",
        "title": "Owner",
        "address": "12 Elm St",
        "city": "San Francisco",
        "postcode": "94110",
        "region": "CA",
        "country": "US",
        "timezone": "America/Los_Angeles",
        "service": "boiler replacement",
        "qualification": "qualified",
        "industry": "Food & Beverage",
        "company_size": "11-50",
    }
    state = ContactState(
        contact_id=contact_id,
        identifiers=["email:dana@example.com", "phone:+14155550177"],
        profile=profile,
        score=42.5,
        band="SQL",
    )
    return upsert_contact(state, f"cmd-upsert-{contact_id}", "evt-1", ISSUED, **properties)


def test_a_processor_made_contact_lands_under_hubspot_names(
    hubspot: FakeHubSpot,
) -> None:
    # Sent verbatim (as the writer once did), these names are not HubSpot properties and
    # HubSpot refused every such upsert.
    record = contact("c-1", "dana@example.com", properties=PROCESSOR_PROPERTIES)
    [[outcome]] = deliver(hubspot, [record])

    assert outcome is None
    [sent] = bodies(hubspot, "/contacts/batch/upsert")
    assert sent["inputs"][0]["properties"] == {
        "switchboard_lead_score": "42",
        "switchboard_lead_band": "MQL",
        "switchboard_service": "boiler replacement",
        "switchboard_qualification": "qualified",
        "zip": "94110",
        "switchboard_timezone": "America/New_York",
        "switchboard_workflow_tags": "a,b",
        "email": "dana@example.com",
        "firstname": "Ada",
        "lastname": "Lovelace",
        "switchboard_contact_id": "c-1",
    }
    [stored] = hubspot.find("contacts", "switchboard_contact_id", "c-1")
    assert (stored["zip"], stored["switchboard_lead_band"]) == ("94110", "MQL")


def test_every_property_the_processors_send_has_a_hubspot_name(hubspot: FakeHubSpot) -> None:
    record = processor_contact(
        sla_breach="first-response",
        sla_breached_at="2026-03-02T09:45:00+00:00",
        workflow_tags="web-lead-booked",
        lifecyclestage="salesqualifiedlead",
        onboarding="started",
    )
    [[outcome]] = deliver(hubspot, [record])

    assert outcome is None
    [sent] = bodies(hubspot, "/contacts/batch/upsert")
    assert sent["inputs"][0]["properties"] == {
        # HubSpot's default contact properties
        "address": "12 Elm St",
        "city": "San Francisco",
        "zip": "94110",
        "state": "CA",
        "country": "US",
        "industry": "Food & Beverage",
        "lifecyclestage": "salesqualifiedlead",
        # custom properties, named switchboard_<key>
        "switchboard_lead_score": "42.5",
        "switchboard_lead_band": "SQL",
        "switchboard_timezone": "America/Los_Angeles",
        "switchboard_service": "boiler replacement",
        "switchboard_qualification": "qualified",
        "switchboard_company_size": "11-50",
        "switchboard_sla_breach": "first-response",
        "switchboard_sla_breached_at": "2026-03-02T09:45:00+00:00",
        "switchboard_workflow_tags": "web-lead-booked",
        "switchboard_onboarding": "started",
        # the command's own fields
        "email": "dana@example.com",
        "phone": "+14155550177",
        "firstname": "Dana",
        "lastname": "Whitfield",
        "company": "Whitfield Bakery",
        "jobtitle": "Owner",
        "switchboard_contact_id": "c-1",
    }
    [stored] = hubspot.find("contacts", "email", "dana@example.com")
    assert stored["state"] == "CA" and stored["switchboard_sla_breach"] == "first-response"


def test_an_unknown_property_key_becomes_a_switchboard_custom_property(
    hubspot: FakeHubSpot,
) -> None:
    # A workflow's update names a property no table knows: it follows the rule, and the
    # portal refuses it until an admin creates the property.
    record = contact("c-1", properties={"Favourite Colour": "teal", "hs_lead_status": "OPEN"})
    [[refused]] = deliver(hubspot, [record])

    assert isinstance(refused, Rejected)
    assert '"name":"switchboard_favourite_colour"' in str(refused)
    hubspot.define("contacts", "switchboard_favourite_colour")
    [[outcome]] = deliver(hubspot, [record])

    assert outcome is None
    [stored] = hubspot.find("contacts", "switchboard_contact_id", "c-1")
    # A key spelled as a HubSpot name already is written as it is.
    assert (stored["switchboard_favourite_colour"], stored["hs_lead_status"]) == ("teal", "OPEN")


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("region", "state"),
        ("postcode", "zip"),
        ("lead_score", "switchboard_lead_score"),
        ("SLA breached-at", "switchboard_sla_breached_at"),
        ("__odd__key__", "switchboard_odd_key"),
        ("hs_language", "hs_language"),
        ("switchboard_service", "switchboard_service"),
    ],
)
def test_contact_property_names(key: str, name: str) -> None:
    assert contact_property(key) == name


def test_a_property_key_with_nothing_to_name_is_rejected(hubspot: FakeHubSpot) -> None:
    [[refused, kept]] = deliver(hubspot, [contact("c-1", properties={"--": "x"}), contact("c-2")])

    assert isinstance(refused, Rejected) and "'--'" in str(refused)
    assert kept is None
    assert hubspot.find("contacts", "switchboard_contact_id", "c-1") == []


def test_pipeline_stages_go_under_the_portals_own_stage_ids(hubspot: FakeHubSpot) -> None:
    payload = {"deal_id": "d-1", "stage": "closedwon", "previous_stage": None}
    won = command("UPDATE_DEAL_STAGE", "c-1", payload, "cmd-won")
    outcomes = deliver(
        hubspot,
        [contact("c-1")],
        [deal("c-1", "d-1")],
        [won],
        stage_names={"closedwon": "1234567"},
    )
    assert outcomes == [[None], [None], [None]]
    [(_, stored)] = hubspot.objects["deals"].items()
    assert stored["dealstage"] == "1234567"


def job(contact_id: str, cid: str, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "job_id": "job-1",
        "job_type": "service",
        "status": "pending",
        "title": None,
        "service": None,
        "address": None,
        "amount_minor": None,
        "currency": None,
        "scheduled_for": None,
        "completed_at": None,
        "technician": None,
        "external_id": None,
        "related_job_id": None,
        **fields,
    }
    return command("UPSERT_JOB", contact_id, payload, cid)


def test_a_job_is_a_custom_object_upserted_by_job_id_and_tied_to_its_contact(
    hubspot: FakeHubSpot,
) -> None:
    paid = job(
        "c-1",
        "job-paid",
        title="Boiler service for Ada",
        service="Boiler service",
        address="1 Engine Row, London",
        amount_minor=45_050,
        currency="GBP",
    )
    done = datetime(2026, 3, 5, 16, 0, tzinfo=UTC)
    completed = job(
        "c-1",
        "job-done",
        job_type="boiler_installation",
        status="completed",
        completed_at=done,
        technician="tech-12",
        external_id="FS-881",
    )
    outcomes = deliver(hubspot, [contact("c-1")], [paid], [completed], [completed])
    assert outcomes == [[None], [None], [None], [None]]
    first, second, _ = bodies(hubspot, "/p_switchboard_jobs/batch/upsert")
    assert first == {
        "inputs": [
            {
                "id": "job-1",
                "idProperty": "switchboard_job_id",
                "objectWriteTraceId": "job-paid",
                "properties": {
                    "job_name": "Boiler service for Ada",
                    "job_type": "service",
                    "job_status": "pending",
                    "service": "Boiler service",
                    "address": "1 Engine Row, London",
                    "amount": "450.50",
                    "currency": "GBP",
                    "switchboard_job_id": "job-1",
                },
            }
        ]
    }
    # The update says what it knows; the rest is not sent, so HubSpot keeps it.
    assert second["inputs"][0]["properties"] == {
        "job_type": "boiler_installation",
        "job_status": "completed",
        "completed_at": "2026-03-05T16:00:00.000Z",
        "technician": "tech-12",
        "field_job_id": "FS-881",
        "switchboard_job_id": "job-1",
    }
    [(job_object, stored)] = hubspot.objects["p_switchboard_jobs"].items()
    assert stored == {
        "hs_object_id": job_object,
        "switchboard_job_id": "job-1",
        "job_name": "Boiler service for Ada",
        "job_type": "boiler_installation",
        "job_status": "completed",
        "service": "Boiler service",
        "address": "1 Engine Row, London",
        "amount": "450.50",
        "currency": "GBP",
        "completed_at": "2026-03-05T16:00:00.000Z",
        "technician": "tech-12",
        "field_job_id": "FS-881",
    }
    [contact_object] = hubspot.objects["contacts"]
    assert hubspot.associated("p_switchboard_jobs", contact_object) == {job_object}


def test_the_job_object_type_comes_from_settings(hubspot: FakeHubSpot) -> None:
    # A portal's custom object is also named by its objectTypeId; the fake knows only its
    # own name, so another name is refused the way HubSpot refuses an unknown type.
    inspection = job(
        "c-1",
        "job-insp",
        job_type="inspection",
        status="scheduled",
        scheduled_for=datetime(2026, 4, 4, 9, 0, tzinfo=UTC),
    )
    outcomes = deliver(hubspot, [contact("c-1")], [inspection], job_object="2-999")
    assert outcomes[0] == [None]
    assert isinstance(outcomes[1][0], Rejected)
    assert "Unable to infer object type from: 2-999" in str(outcomes[1][0])
    assert deliver(hubspot, [inspection]) == [[None]]
    [stored] = hubspot.objects["p_switchboard_jobs"].values()
    assert (stored["job_status"], stored["scheduled_for"]) == (
        "scheduled",
        "2026-04-04T09:00:00.000Z",
    )
