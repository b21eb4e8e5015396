"""The Salesforce writer against a local server that speaks Salesforce's REST API."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.sinks.crm.salesforce import SalesforceWriter, contact_field
from processors.records.contact import upsert_contact
from processors.state import ContactState
from tests.fakes import Scripted
from tests.fakes.salesforce import FakeSalesforce
from tests.records import crm_command

ISSUED = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
TOKEN = "00Dxx0000000001!test"
PATH = "/services/data/v66.0/composite/sobjects"
USER = "005000000000001AAA"


@pytest.fixture
def salesforce() -> Iterator[FakeSalesforce]:
    with FakeSalesforce.running() as fake:
        yield fake


def command(kind: str, contact_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    return crm_command(kind, contact_id, payload, issued_at=ISSUED)


def contact(contact_id: str, last_name: str | None = "Lovelace", **fields: Any) -> dict[str, Any]:
    payload = {
        "email": None,
        "phone": None,
        "crm_id": None,
        "first_name": "Ada",
        "last_name": last_name,
        "company": None,
        "title": None,
        "properties": {},
        **fields,
    }
    return command("UPSERT_CONTACT", contact_id, payload)


def deliver(
    fake: FakeSalesforce, *batches: Sequence[dict[str, Any]], **options: Any
) -> tuple[list[list[Outcome]], SalesforceWriter]:
    async def run() -> tuple[list[list[Outcome]], SalesforceWriter]:
        writer = SalesforceWriter(fake.url, options.pop("token", TOKEN), **options)
        try:
            return [await writer.deliver(batch) for batch in batches], writer
        finally:
            await writer.close()

    return asyncio.run(run())


def test_contact_upsert_request(salesforce: FakeSalesforce) -> None:
    records = [
        contact("c-1", email="ada@example.com", phone="+441234567890", title="CTO"),
        contact("c-2", properties={"LeadSource": "Web"}),
    ]
    ([outcomes], writer) = deliver(salesforce, records)

    assert outcomes == [None, None]
    # Before writing, one query asks whether a merge retired any of the batch's contact ids.
    query, received = salesforce.requests
    assert (query.method, query.path) == ("GET", "/services/data/v66.0/query")
    assert (received.method, received.path) == (
        "PATCH",
        f"{PATH}/Contact/Switchboard_Contact_Id__c",
    )
    assert received.headers["Authorization"] == f"Bearer {TOKEN}"
    assert received.body == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Contact"},
                "Switchboard_Contact_Id__c": "c-1",
                "Email": "ada@example.com",
                "Phone": "+441234567890",
                "FirstName": "Ada",
                "LastName": "Lovelace",
                "Title": "CTO",
            },
            {
                "attributes": {"type": "Contact"},
                "LeadSource": "Web",
                "Switchboard_Contact_Id__c": "c-2",
                "FirstName": "Ada",
                "LastName": "Lovelace",
            },
        ],
    }
    assert salesforce.find("Contact", "Switchboard_Contact_Id__c", "c-1")[0]["Title"] == "CTO"
    assert writer.api_usage == (2, 15000)


def test_set_owner_maps_the_rep_and_an_unknown_rep_is_rejected(
    salesforce: FakeSalesforce,
) -> None:
    records = [
        command("SET_OWNER", "c-1", {"owner_id": "rep-7", "reason": "round robin"}),
        command("SET_OWNER", "c-2", {"owner_id": "rep-404", "reason": "round robin"}),
    ]
    ([_, outcomes], _) = deliver(
        salesforce, [contact("c-1"), contact("c-2")], records, owner_ids={"rep-7": USER}
    )

    assert outcomes[0] is None
    assert isinstance(outcomes[1], Rejected) and "rep-404" in str(outcomes[1])
    assert salesforce.requests[-1].body == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Contact"},
                "Switchboard_Contact_Id__c": "c-1",
                "OwnerId": USER,
            }
        ],
    }
    assert salesforce.find("Contact", "Switchboard_Contact_Id__c", "c-1")[0]["OwnerId"] == USER


def test_deals_upsert_by_deal_id(salesforce: FakeSalesforce) -> None:
    create = command(
        "CREATE_DEAL",
        "c-1",
        {
            "deal_id": "d-1",
            "name": "Boiler",
            "stage": "Prospecting",
            "pipeline": None,
            "amount_minor": 129_950,
            "currency": "EUR",
        },
    )
    stage = command("UPDATE_DEAL_STAGE", "c-1", {"deal_id": "d-1", "stage": "Closed Won"})
    unknown = command("UPDATE_DEAL_STAGE", "c-2", {"deal_id": "d-404", "stage": "Closed Won"})
    ([first, second], _) = deliver(salesforce, [create], [stage, unknown])

    assert first == [None]
    # Before a create, one query asks whether the deal exists (a create of one changes nothing).
    query, create_call, stage_call = salesforce.requests
    assert (query.method, query.path) == ("GET", "/services/data/v66.0/query")
    assert create_call.path == f"{PATH}/Opportunity/Switchboard_Deal_Id__c"
    assert create_call.body == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Opportunity"},
                "Switchboard_Deal_Id__c": "d-1",
                "Name": "Boiler",
                "StageName": "Prospecting",
                "CloseDate": "2026-04-01",
                "Amount": 1299.5,
            }
        ],
    }
    assert stage_call.body["records"][0] == {
        "attributes": {"type": "Opportunity"},
        "Switchboard_Deal_Id__c": "d-1",
        "StageName": "Closed Won",
    }
    assert second[0] is None
    assert isinstance(second[1], Rejected) and "REQUIRED_FIELD_MISSING" in str(second[1])
    [deal] = salesforce.records["Opportunity"].values()
    assert (deal["StageName"], deal["Name"]) == ("Closed Won", "Boiler")


ACTIVITIES: list[tuple[dict[str, Any], dict[str, Any]]] = [
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
                "notes": "Tuesday afternoon",
            },
        ),
        {
            "Subject": "Call back about the quote",
            "ActivityDate": "2026-03-03",
            "Status": "Not Started",
            "Priority": "High",
            "Description": "Tuesday afternoon",
            "OwnerId": USER,
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
        {
            "Subject": "Call: connected",
            "Type": "Call",
            "Status": "Completed",
            "ActivityDate": "2026-03-02",
            "Description": "Wants a quote",
            "CallDurationInSeconds": 95,
            "CallDisposition": "connected",
        },
    ),
    (
        command("ADD_NOTE", "c-3", {"note_id": "n-1", "body": "Prefers e-mail"}),
        {
            "Subject": "Note",
            "Status": "Completed",
            "ActivityDate": "2026-03-02",
            "Description": "Prefers e-mail",
        },
    ),
]


def activity_records() -> list[dict[str, Any]]:
    return [record for record, _ in ACTIVITIES]


def test_tasks_calls_and_notes_are_tasks_upserted_by_command_id(
    salesforce: FakeSalesforce,
) -> None:
    contacts = [contact(f"c-{n}") for n in range(1, 4)]
    ([_, outcomes], _) = deliver(
        salesforce, contacts, activity_records(), owner_ids={"rep-7": USER}
    )

    assert outcomes == [None, None, None]
    received = salesforce.requests[-1]
    assert received.path == f"{PATH}/Task/Switchboard_Id__c"
    assert received.body == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Task"},
                "Switchboard_Id__c": record["command_id"],
                "Who": {
                    "attributes": {"type": "Contact"},
                    "Switchboard_Contact_Id__c": record["contact_id"],
                },
                **fields,
            }
            for record, fields in ACTIVITIES
        ],
    }
    for record, _ in ACTIVITIES:
        [task] = salesforce.find("Task", "Switchboard_Id__c", record["command_id"])
        [who] = salesforce.find("Contact", "Switchboard_Contact_Id__c", record["contact_id"])
        assert task["WhoId"] == who["Id"]


def test_redelivery_leaves_one_record_each(salesforce: FakeSalesforce) -> None:
    contacts = [contact(f"c-{n}") for n in range(1, 4)]
    deal = command(
        "CREATE_DEAL",
        "c-1",
        {"deal_id": "d-1", "name": "Boiler", "stage": "Prospecting", "pipeline": None,
         "amount_minor": None, "currency": None},
    )  # fmt: skip
    batches = [contacts, activity_records(), [deal], [job("c-2")]]
    (outcomes, _) = deliver(salesforce, *batches, *batches, owner_ids={"rep-7": USER})

    assert all(o is None for batch in outcomes for o in batch)
    assert {s: len(r) for s, r in salesforce.records.items()} == {
        "Contact": 3,
        "Opportunity": 1,
        "Task": 3,
        "WorkOrder": 1,
    }


def test_per_record_errors_map_to_their_records(salesforce: FakeSalesforce) -> None:
    salesforce.reject("c-2", "UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access")
    salesforce.reject("c-3", "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Phone is required")
    records = [contact("c-1"), contact("c-2"), contact("c-3"), contact("c-4", last_name=None)]
    ([outcomes], _) = deliver(salesforce, records)

    assert outcomes[0] is None
    assert isinstance(outcomes[1], Retryable) and "UNABLE_TO_LOCK_ROW" in str(outcomes[1])
    assert isinstance(outcomes[2], Rejected) and "Phone is required" in str(outcomes[2])
    assert isinstance(outcomes[3], Rejected)
    assert "REQUIRED_FIELD_MISSING" in str(outcomes[3]) and "LastName" in str(outcomes[3])


def test_a_task_for_a_missing_contact_is_rejected(salesforce: FakeSalesforce) -> None:
    ([[outcome]], _) = deliver(salesforce, [ACTIVITIES[2][0]])

    assert isinstance(outcome, Rejected)
    assert "Foreign key external ID: c-3 not found" in str(outcome)


def test_request_limit_exceeded_is_retryable(salesforce: FakeSalesforce) -> None:
    salesforce.request_limit_exceeded()
    with pytest.raises(Retryable, match="REQUEST_LIMIT_EXCEEDED"):
        deliver(salesforce, [contact("c-1")])


def test_503_and_429_are_retryable_after_the_servers_wait(salesforce: FakeSalesforce) -> None:
    salesforce.unavailable(retry_after="2")
    with pytest.raises(Retryable, match="HTTP 503") as raised:
        deliver(salesforce, [contact("c-1")])
    assert raised.value.retry_after == 2.0

    salesforce.fail_next(Scripted(429, "[]", {"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}))
    with pytest.raises(Retryable, match="HTTP 429") as raised:
        deliver(salesforce, [contact("c-1")])
    assert raised.value.retry_after is not None and raised.value.retry_after > 3600


def test_a_burst_of_5xx_is_retryable_then_delivers(salesforce: FakeSalesforce) -> None:
    salesforce.server_errors(3, status=500)
    for _ in range(3):
        with pytest.raises(Retryable, match="HTTP 500"):
            deliver(salesforce, [contact("c-1")])
    assert deliver(salesforce, [contact("c-1")])[0] == [[None]]
    assert len(salesforce.records["Contact"]) == 1


def test_a_slow_answer_is_a_retryable_timeout(salesforce: FakeSalesforce) -> None:
    salesforce.slow(2.0)
    with pytest.raises(Retryable, match=r"no answer within 0\.2 s"):
        deliver(salesforce, [contact("c-1")], timeout_s=0.2)


def test_a_malformed_400_is_rejected_with_the_body(salesforce: FakeSalesforce) -> None:
    salesforce.malformed_400("<html>Bad Message 400: reason: Illegal character</html>")
    ([outcomes], _) = deliver(salesforce, [contact("c-1"), contact("c-2")])

    for outcome in outcomes:
        assert isinstance(outcome, Rejected)
        assert "Illegal character" in outcome.answer


def test_a_whole_call_400_names_the_error_code(salesforce: FakeSalesforce) -> None:
    ([[outcome]], _) = deliver(salesforce, [contact("c-1", properties={"Shoe_Size__c": "9"})])

    assert isinstance(outcome, Rejected)
    assert "INVALID_FIELD" in str(outcome) and "Shoe_Size__c" in outcome.answer


def test_an_invalid_session_is_rejected(salesforce: FakeSalesforce) -> None:
    with pytest.raises(Rejected, match="HTTP 401") as raised:
        deliver(salesforce, [contact("c-1")], token="expired")
    assert "INVALID_SESSION_ID" in raised.value.answer


def test_the_server_refuses_over_200_and_create_only_updates_so_the_writer_never_sends_them(
    salesforce: FakeSalesforce,
) -> None:
    async def patch(sobject: str, field: str, records: list[dict[str, Any]]) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            url = f"{salesforce.url}{PATH}/{sobject}/{field}"
            async with session.patch(url, json={"allOrNone": False, "records": records}) as r:
                return r.status, await r.json()

    too_many = [
        {"attributes": {"type": "Contact"}, "Switchboard_Contact_Id__c": f"c-{n}", "LastName": "X"}
        for n in range(201)
    ]
    status, body = asyncio.run(patch("Contact", "Switchboard_Contact_Id__c", too_many))
    assert status == 400 and body[0]["errorCode"] == "EXCEEDED_ID_LIMIT"

    task = {"attributes": {"type": "Task"}, "Switchboard_Id__c": "t-1", "TaskSubtype": "Call"}
    assert asyncio.run(patch("Task", "Switchboard_Id__c", [task]))[1][0]["success"] is True
    status, body = asyncio.run(patch("Task", "Switchboard_Id__c", [task]))
    assert body[0]["errors"][0]["statusCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"

    ([outcomes], _) = deliver(salesforce, [contact(f"c-{n}") for n in range(250)])
    assert outcomes == [None] * 250
    sizes = [
        len(r.body["records"])
        for r in salesforce.requests
        if r.path.endswith("/Contact/Switchboard_Contact_Id__c")
    ]
    assert sizes == [201, 200, 50]
    assert len(salesforce.records["Contact"]) == 250


# -- MERGE_CONTACTS ----------------------------------------------------------------------


def merge(survivor: str, retired: str) -> dict[str, Any]:
    payload = {"retired_contact_id": retired, "identifier": "ada@example.com"}
    return command("MERGE_CONTACTS", survivor, payload)


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
    return crm_command("LOG_ACTIVITY", contact_id, payload, f"cmd-{activity_id}", ISSUED)


def history(contact_id: str) -> list[dict[str, Any]]:
    """A task, a call and a note for ``contact_id``, each its own command."""
    task = {
        "task_id": "t",
        "title": "Call back",
        "due_at": datetime(2026, 3, 3, 14, 0, tzinfo=UTC),
        "owner_id": None,
        "priority": None,
        "notes": None,
    }
    return [
        crm_command("CREATE_TASK", contact_id, task, f"cmd-t-{contact_id}", ISSUED),
        activity(contact_id, f"a-{contact_id}", "call", outcome="connected"),
        crm_command("ADD_NOTE", contact_id, {"note_id": "n", "body": "VIP"}, f"cmd-n-{contact_id}"),
    ]


def contact_id(fake: FakeSalesforce, switchboard_id: str) -> str:
    [record] = fake.find("Contact", "Switchboard_Contact_Id__c", switchboard_id)
    return str(record["Id"])


def soap_merges(fake: FakeSalesforce) -> list[list[tuple[str, str]]]:
    """Each merge() call as its (master Id, Id to merge) pairs, checking its envelope."""
    calls = []
    for received in fake.requests:
        if not received.path.startswith("/services/Soap/"):
            continue
        assert received.path == "/services/Soap/u/66.0"
        assert received.headers["Content-Type"].startswith("text/xml")
        assert received.headers["SOAPAction"] == "merge"
        root = ET.fromstring(received.body)
        ns = {
            "soapenv": "http://schemas.xmlsoap.org/soap/envelope/",
            "p": "urn:partner.soap.sforce.com",
            "o": "urn:sobject.partner.soap.sforce.com",
        }
        assert root.findtext("soapenv:Header/p:SessionHeader/p:sessionId", namespaces=ns) == TOKEN
        merge_requests = list(root.iterfind("soapenv:Body/p:merge/p:request", ns))
        assert merge_requests
        for r in merge_requests:
            assert r.findtext("p:masterRecord/o:type", namespaces=ns) == "Contact"
        calls.append(
            [
                (
                    r.findtext("p:masterRecord/o:Id", namespaces=ns) or "",
                    r.findtext("p:recordToMergeIds", namespaces=ns) or "",
                )
                for r in merge_requests
            ]
        )
    return calls


def test_a_merge_moves_the_retired_contacts_tasks_and_later_commands_follow(
    salesforce: FakeSalesforce,
) -> None:
    deliver(salesforce, [contact("c-1"), contact("c-2")])
    deliver(salesforce, *([record] for record in history("c-1") + history("c-2")))
    survivor, retired = contact_id(salesforce, "c-1"), contact_id(salesforce, "c-2")
    retired_tasks = {t["Id"] for t in salesforce.find("Task", "WhoId", retired)}
    assert len(retired_tasks) == 3

    ([[outcome]], _) = deliver(salesforce, [merge("c-1", "c-2")])

    assert outcome is None
    assert soap_merges(salesforce) == [[(survivor, retired)]]
    assert list(salesforce.records["Contact"]) == [survivor]
    assert salesforce.deleted["Contact"][retired]["MasterRecordId"] == survivor
    assert {t["Id"] for t in salesforce.find("Task", "WhoId", survivor)} >= retired_tasks
    [alias] = salesforce.find("Task", "Switchboard_Id__c", "merged-contact:c-2")
    assert alias["WhoId"] == survivor
    assert (alias["Type"], alias["Status"]) == ("Other", "Completed")
    assert "ada@example.com" in alias["Description"]

    # Commands issued for c-2 before the merge, arriving after it.
    late = [contact("c-2", phone="+447700900123"), activity("c-2", "a-late", "sms")]
    (outcomes, _) = deliver(salesforce, *([record] for record in late))

    assert outcomes == [[None], [None]]
    assert list(salesforce.records["Contact"]) == [survivor]
    stored = salesforce.records["Contact"][survivor]
    assert (stored["Switchboard_Contact_Id__c"], stored["Phone"]) == ("c-1", "+447700900123")
    [sms] = salesforce.find("Task", "Switchboard_Id__c", "cmd-a-late")
    assert sms["WhoId"] == survivor
    upserts = [r for r in salesforce.requests if r.method == "PATCH"][-2:]
    assert upserts[0].body["records"][0]["Switchboard_Contact_Id__c"] == "c-1"
    assert upserts[1].body["records"][0]["Who"]["Switchboard_Contact_Id__c"] == "c-1"
    assert any("merged-contact:c-2" in q for q in salesforce.queries)


def test_a_replayed_merge_changes_nothing(salesforce: FakeSalesforce) -> None:
    deliver(salesforce, [contact("c-1"), contact("c-2")])
    (outcomes, _) = deliver(salesforce, [merge("c-1", "c-2")], [merge("c-1", "c-2")])

    assert outcomes == [[None], [None]]
    assert len(soap_merges(salesforce)) == 1
    assert len(salesforce.records["Contact"]) == 1
    assert len(salesforce.find("Task", "Switchboard_Id__c", "merged-contact:c-2")) == 1


def create_deal(contact_id: str, command_id: str) -> dict[str, Any]:
    payload = {
        "deal_id": "d-1",
        "name": "Boiler",
        "stage": "Prospecting",
        "pipeline": None,
        "amount_minor": None,
        "currency": None,
    }
    return crm_command("CREATE_DEAL", contact_id, payload, command_id, ISSUED)


@pytest.mark.parametrize("together", [False, True])
def test_a_late_create_of_an_adopted_deal_leaves_the_survivors_move(
    salesforce: FakeSalesforce, together: bool
) -> None:
    """c-2 opened d-1 and was merged into c-1, whose merge made d-1 again (issue 19
    follow-up); c-2's own create, on another partition, comes after c-1 moved the deal:
    in a call of its own or in the move's. A create of a deal that exists sends nothing."""
    paid = {"deal_id": "d-1", "stage": "Closed Won", "amount_minor": 480_000, "currency": "USD"}
    moved = crm_command("UPDATE_DEAL_STAGE", "c-1", paid, "cmd-c-1-move", ISSUED)
    late = create_deal("c-2", "cmd-c-2-create")
    (first, _) = deliver(
        salesforce,
        [contact("c-1"), contact("c-2")],
        [merge("c-1", "c-2")],
        [create_deal("c-1", "cmd-c-1-create")],  # the merge's create, in c-1's order
    )
    assert first == [[None, None], [None], [None]]
    batches = [[moved, late]] if together else [[moved], [late]]
    (outcomes, _) = deliver(salesforce, *batches)

    assert all(o is None for batch in outcomes for o in batch), outcomes
    [stored] = salesforce.records["Opportunity"].values()
    assert (stored["Name"], stored["StageName"], stored["Amount"]) == (
        "Boiler",
        "Closed Won",
        4800.0,
    )
    opportunities = [
        r.body["records"]
        for r in salesforce.requests
        if r.method == "PATCH" and r.path.endswith("/Opportunity/Switchboard_Deal_Id__c")
    ]
    assert [[o["StageName"] for o in records] for records in opportunities] == [
        ["Prospecting"],
        ["Closed Won"],
    ]


def test_two_creates_of_one_deal_in_a_call_make_it_once(salesforce: FakeSalesforce) -> None:
    creates = [create_deal("c-1", "cmd-c-1-create"), create_deal("c-2", "cmd-c-2-create")]
    ([outcomes], _) = deliver(salesforce, creates)

    assert outcomes == [None, None]
    assert salesforce.queries == [
        "SELECT Switchboard_Deal_Id__c FROM Opportunity WHERE Switchboard_Deal_Id__c IN ('d-1')"
    ]
    [upsert] = [r.body for r in salesforce.requests if r.method == "PATCH"]
    assert [o["Switchboard_Deal_Id__c"] for o in upsert["records"]] == ["d-1"]
    assert len(salesforce.records["Opportunity"]) == 1


def test_merging_an_unknown_retired_contact_only_keeps_the_alias(
    salesforce: FakeSalesforce,
) -> None:
    deliver(salesforce, [contact("c-1")])
    survivor = contact_id(salesforce, "c-1")

    ([[outcome]], _) = deliver(salesforce, [merge("c-1", "c-9")])

    assert outcome is None
    assert soap_merges(salesforce) == []
    assert list(salesforce.records["Contact"]) == [survivor]
    (outcomes, _) = deliver(salesforce, [contact("c-9", phone="+15550100")], history("c-9")[2:])
    assert outcomes == [[None], [None]]
    assert list(salesforce.records["Contact"]) == [survivor]
    assert salesforce.records["Contact"][survivor]["Phone"] == "+15550100"
    [note] = salesforce.find("Task", "Switchboard_Id__c", "cmd-n-c-9")
    assert note["WhoId"] == survivor


def test_when_only_the_retired_contact_exists_it_becomes_the_survivor(
    salesforce: FakeSalesforce,
) -> None:
    deliver(salesforce, [contact("c-2")])
    retired = contact_id(salesforce, "c-2")

    ([[outcome]], _) = deliver(salesforce, [merge("c-1", "c-2")])

    assert outcome is None
    assert soap_merges(salesforce) == []
    assert salesforce.records["Contact"][retired]["Switchboard_Contact_Id__c"] == "c-1"
    rename = next(r for r in salesforce.requests if r.path.endswith("/composite/sobjects"))
    assert rename.body == {
        "allOrNone": False,
        "records": [
            {"attributes": {"type": "Contact"}, "Id": retired, "Switchboard_Contact_Id__c": "c-1"}
        ],
    }
    (outcomes, _) = deliver(salesforce, history("c-2")[2:], history("c-1")[2:])
    assert outcomes == [[None], [None]]
    assert len(salesforce.find("Task", "WhoId", retired)) == 3  # two notes and the alias


def test_a_merge_of_two_contacts_salesforce_never_saw_is_rejected(
    salesforce: FakeSalesforce,
) -> None:
    ([[outcome]], _) = deliver(salesforce, [merge("c-1", "c-2")])

    assert isinstance(outcome, Rejected) and "neither is in Salesforce" in str(outcome)
    assert salesforce.records["Task"] == {}


def test_merge_faults_are_retryable_or_rejected_by_their_code(
    salesforce: FakeSalesforce,
) -> None:
    deliver(salesforce, [contact("c-1"), contact("c-2")])
    salesforce.fault_next_merge("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
    with pytest.raises(Retryable, match="REQUEST_LIMIT_EXCEEDED"):
        deliver(salesforce, [merge("c-1", "c-2")])

    salesforce.fault_next_merge("INVALID_OPERATION", "Contacts with portal users cannot merge")
    ([[outcome]], _) = deliver(salesforce, [merge("c-1", "c-2")])
    assert isinstance(outcome, Rejected) and "portal users" in str(outcome)
    assert "<faultcode>sf:INVALID_OPERATION</faultcode>" in outcome.answer

    # The alias was written before each try; the next delivery still merges.
    ([[outcome]], _) = deliver(salesforce, [merge("c-1", "c-2")])
    assert outcome is None
    assert len(salesforce.records["Contact"]) == 1
    assert len(salesforce.find("Task", "Switchboard_Id__c", "merged-contact:c-2")) == 1


# -- LOG_ACTIVITY: calls, forms, payments --------------------------------------------------


def test_a_calls_direction_duration_disposition_recording_and_handler_land(
    salesforce: FakeSalesforce,
) -> None:
    calls = [
        activity(
            "c-1",
            "a-1",
            "call",
            direction="inbound",
            status="completed",
            outcome="booked",
            duration_seconds=192,
            summary="Caller asked about boiler servicing.",
            handled_by="Aria (voice AI)",
            recording_url="https://recordings.example.com/a-1.mp3",
            title="Inbound call (completed, 3m 12s)",
        ),
        activity(
            "c-2", "a-2", "call", direction="outbound", status="no-answer", handled_by="rep-7"
        ),
    ]
    (outcomes, _) = deliver(
        salesforce, [contact("c-1"), contact("c-2")], calls, owner_ids={"rep-7": USER}
    )

    assert outcomes == [[None, None], [None, None]]
    first = salesforce.requests[-1].body["records"][0]
    assert {k: v for k, v in first.items() if k not in ("attributes", "Who")} == {
        "Switchboard_Id__c": "cmd-a-1",
        "Subject": "Inbound call (completed, 3m 12s)",
        "Type": "Call",
        "Status": "Completed",
        "ActivityDate": "2026-03-02",
        "Description": "Caller asked about boiler servicing.\nStatus: completed\n"
        "Recording: https://recordings.example.com/a-1.mp3\nHandled by: Aria (voice AI)",
        "CallType": "Inbound",
        "CallDurationInSeconds": 192,
        "CallDisposition": "booked",
    }
    [second] = salesforce.find("Task", "Switchboard_Id__c", "cmd-a-2")
    assert (second["Subject"], second["CallType"], second["CallDisposition"]) == (
        "Call",
        "Outbound",
        "no-answer",
    )
    assert second["OwnerId"] == USER
    assert second["Description"] == "Handled by: rep-7"


def test_an_activity_with_an_unknown_direction_is_rejected_without_a_call(
    salesforce: FakeSalesforce,
) -> None:
    ([[outcome]], _) = deliver(salesforce, [activity("c-1", "a-1", "sms", direction="up")])

    assert isinstance(outcome, Rejected) and "'up'" in str(outcome)
    assert salesforce.requests == []


def test_forms_and_payments_are_other_tasks_with_a_clear_subject(
    salesforce: FakeSalesforce,
) -> None:
    records = [
        activity(
            "c-1",
            "a-form",
            "form",
            title="Request a quote (website)",
            summary="Service: boiler installation",
        ),
        activity("c-2", "a-pay", "payment", outcome="succeeded", summary="EUR 1,250.00 by card"),
    ]
    (outcomes, _) = deliver(salesforce, [contact("c-1"), contact("c-2")], records)

    assert outcomes == [[None, None], [None, None]]
    [form] = salesforce.find("Task", "Switchboard_Id__c", "cmd-a-form")
    [payment] = salesforce.find("Task", "Switchboard_Id__c", "cmd-a-pay")
    assert (form["Type"], form["Status"], form["Subject"], form["Description"]) == (
        "Other",
        "Completed",
        "Request a quote (website)",
        "Service: boiler installation",
    )
    assert (payment["Type"], payment["Subject"], payment["Description"]) == (
        "Other",
        "Payment: succeeded",
        "EUR 1,250.00 by card",
    )
    assert "CallType" not in payment and "CallDisposition" not in payment
    assert form["WhoId"] == contact_id(salesforce, "c-1")


# -- UPDATE_DEAL_STAGE with an amount ----------------------------------------------------


def test_a_stage_update_with_an_amount_sets_it_and_one_without_leaves_it(
    salesforce: FakeSalesforce,
) -> None:
    def stage(name: str, amount_minor: int | None, currency: str | None) -> dict[str, Any]:
        payload = {
            "deal_id": "d-1",
            "stage": name,
            "previous_stage": None,
            "amount_minor": amount_minor,
            "currency": currency,
        }
        return command("UPDATE_DEAL_STAGE", "c-1", payload)

    create = command(
        "CREATE_DEAL",
        "c-1",
        {
            "deal_id": "d-1",
            "name": "Boiler",
            "stage": "Prospecting",
            "pipeline": None,
            "amount_minor": 129_950,
            "currency": "EUR",
        },
    )
    (outcomes, _) = deliver(
        salesforce,
        [create],
        [stage("Negotiation/Review", 125_000, "EUR")],
        [stage("Closed Won", None, None)],
        [stage("Closed Lost", 125_000, "euro")],
        [stage("Closed Won", 500, "JPY")],
    )

    assert outcomes[:3] == [[None], [None], [None]]
    [refused] = outcomes[3]
    assert isinstance(refused, Rejected) and "'euro'" in str(refused)
    patches = [r for r in salesforce.requests if r.method == "PATCH"]
    with_amount, without, yen = (r.body["records"][0] for r in patches[1:])
    assert with_amount["Amount"] == 1250.0
    assert "Amount" not in without
    assert yen["Amount"] == 500.0
    # The create's only; deals are not tied to contacts: no alias query.
    assert salesforce.queries == [
        "SELECT Switchboard_Deal_Id__c FROM Opportunity WHERE Switchboard_Deal_Id__c IN ('d-1')"
    ]
    [deal] = salesforce.records["Opportunity"].values()
    assert (deal["StageName"], deal["Amount"]) == ("Closed Won", 500.0)


# -- contact properties: Switchboard's names -> Contact fields ---------------------------

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


def test_a_processor_made_contact_lands_under_salesforce_names(
    salesforce: FakeSalesforce,
) -> None:
    # Sent verbatim (as the writer once did), these names are not Contact fields and
    # Salesforce refused every such upsert (INVALID_FIELD).
    ([[outcome]], _) = deliver(salesforce, [contact("c-1", properties=PROCESSOR_PROPERTIES)])

    assert outcome is None
    [sent] = [r.body["records"][0] for r in salesforce.requests if r.method == "PATCH"]
    assert sent == {
        "attributes": {"type": "Contact"},
        "Switchboard_Lead_Score__c": "42",
        "Switchboard_Lead_Band__c": "MQL",
        "Switchboard_Service__c": "boiler replacement",
        "Switchboard_Qualification__c": "qualified",
        "MailingPostalCode": "94110",
        "Switchboard_Timezone__c": "America/New_York",
        "Switchboard_Workflow_Tags__c": "a,b",
        "Switchboard_Contact_Id__c": "c-1",
        "FirstName": "Ada",
        "LastName": "Lovelace",
    }
    [stored] = salesforce.find("Contact", "Switchboard_Contact_Id__c", "c-1")
    assert (stored["MailingPostalCode"], stored["Switchboard_Lead_Band__c"]) == ("94110", "MQL")


def test_every_property_the_processors_send_has_a_contact_field(
    salesforce: FakeSalesforce,
) -> None:
    record = processor_contact(
        sla_breach="first-response",
        sla_breached_at="2026-03-02T09:45:00+00:00",
        workflow_tags="web-lead-booked",
        lifecyclestage="salesqualifiedlead",
        onboarding="started",
    )
    ([[outcome]], _) = deliver(salesforce, [record])

    assert outcome is None
    [sent] = [r.body["records"][0] for r in salesforce.requests if r.method == "PATCH"]
    assert sent == {
        "attributes": {"type": "Contact"},
        # the standard mailing address
        "MailingStreet": "12 Elm St",
        "MailingCity": "San Francisco",
        "MailingPostalCode": "94110",
        "MailingState": "CA",
        "MailingCountry": "US",
        # custom fields, named Switchboard_<Words>__c
        "Switchboard_Lead_Score__c": "42.5",
        "Switchboard_Lead_Band__c": "SQL",
        "Switchboard_Timezone__c": "America/Los_Angeles",
        "Switchboard_Service__c": "boiler replacement",
        "Switchboard_Qualification__c": "qualified",
        "Switchboard_Industry__c": "Food & Beverage",
        "Switchboard_Company_Size__c": "11-50",
        "Switchboard_Sla_Breach__c": "first-response",
        "Switchboard_Sla_Breached_At__c": "2026-03-02T09:45:00+00:00",
        "Switchboard_Workflow_Tags__c": "web-lead-booked",
        "Switchboard_Lifecycle_Stage__c": "salesqualifiedlead",
        "Switchboard_Onboarding__c": "started",
        # the command's own fields (company has no Contact field: not sent)
        "Switchboard_Contact_Id__c": "c-1",
        "Email": "dana@example.com",
        "Phone": "+14155550177",
        "FirstName": "Dana",
        "LastName": "Whitfield",
        "Title": "Owner",
    }
    [stored] = salesforce.find("Contact", "Email", "dana@example.com")
    assert (stored["MailingState"], stored["Switchboard_Sla_Breach__c"]) == ("CA", "first-response")


def test_an_unknown_property_key_becomes_a_switchboard_custom_field(
    salesforce: FakeSalesforce,
) -> None:
    # A workflow's update names a property no table knows: it follows the rule, and the
    # org refuses it until an admin creates the field.
    record = contact("c-1", properties={"favourite colour": "teal", "LeadSource": "Web"})
    ([[refused]], _) = deliver(salesforce, [record])

    assert isinstance(refused, Rejected)
    assert "Switchboard_Favourite_Colour__c" in refused.answer
    salesforce.add_field("Contact", "Switchboard_Favourite_Colour__c")
    ([[outcome]], _) = deliver(salesforce, [record])

    assert outcome is None
    [stored] = salesforce.find("Contact", "Switchboard_Contact_Id__c", "c-1")
    # A key spelled as a Salesforce field name already is written as it is.
    assert (stored["Switchboard_Favourite_Colour__c"], stored["LeadSource"]) == ("teal", "Web")


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("address", "MailingStreet"),
        ("region", "MailingState"),
        ("lifecyclestage", "Switchboard_Lifecycle_Stage__c"),
        ("lead_score", "Switchboard_Lead_Score__c"),
        ("sla_breached_at", "Switchboard_Sla_Breached_At__c"),
        ("__odd--key__", "Switchboard_Odd_Key__c"),
        ("2nd phone", "Switchboard_2nd_Phone__c"),
        ("leadScore", "Switchboard_LeadScore__c"),
        ("LeadSource", "LeadSource"),
        ("Shoe_Size__c", "Shoe_Size__c"),
        ("a" * 28, "Switchboard_" + "A" + "a" * 27 + "__c"),  # 40 characters before __c
    ],
)
def test_contact_field_names(key: str, name: str) -> None:
    assert contact_field(key) == name


def test_a_property_key_with_no_custom_field_name_is_rejected(
    salesforce: FakeSalesforce,
) -> None:
    records = [
        contact("c-1", properties={"--": "x"}),
        contact("c-2", properties={"a" * 29: "x"}),  # 41 characters before __c
        contact("c-3"),
    ]
    ([[nameless, too_long, kept]], _) = deliver(salesforce, records)

    assert isinstance(nameless, Rejected) and "'--'" in str(nameless)
    assert isinstance(too_long, Rejected) and "at most 40 characters" in str(too_long)
    assert kept is None
    assert salesforce.find("Contact", "Switchboard_Contact_Id__c", "c-1") == []


def test_pipeline_stages_go_under_the_orgs_own_stage_names(salesforce: FakeSalesforce) -> None:
    """The packaged pipeline's stages are HubSpot's ids; crm_stage_names maps them onto the
    org's StageName picklist, which refuses anything else."""
    deal = {
        "deal_id": "d-1",
        "name": "Boiler",
        "stage": "appointmentscheduled",
        "pipeline": None,
        "amount_minor": None,
        "currency": None,
    }
    won = {"deal_id": "d-1", "stage": "closedwon", "previous_stage": "appointmentscheduled"}
    names = {"appointmentscheduled": "Qualification", "closedwon": "Closed Won"}
    records = [command("CREATE_DEAL", "c-1", deal), command("UPDATE_DEAL_STAGE", "c-1", won)]
    (outcomes, _) = deliver(salesforce, [records[0]], [records[1]], stage_names=names)
    assert outcomes == [[None], [None]]
    [opportunity] = salesforce.records["Opportunity"].values()
    assert opportunity["StageName"] == "Closed Won"
    ([[refused]], _) = deliver(
        salesforce, [command("CREATE_DEAL", "c-2", deal | {"deal_id": "d-2"})]
    )
    assert isinstance(refused, Rejected)
    assert "appointmentscheduled" in str(refused)


def job(contact_id: str, **fields: Any) -> dict[str, Any]:
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
    return command("UPSERT_JOB", contact_id, payload)


def test_a_job_is_a_work_order_upserted_by_job_id_on_its_contact(
    salesforce: FakeSalesforce,
) -> None:
    paid = job(
        "c-1",
        title="Boiler service for Ada",
        service="Boiler service",
        address="1 Engine Row, London",
        amount_minor=45_050,
        currency="GBP",
    )
    completed = job(
        "c-1",
        job_type="boiler_installation",
        status="completed",
        scheduled_for=datetime(2026, 3, 5, 8, 0, tzinfo=UTC),
        completed_at=datetime(2026, 3, 5, 16, 0, tzinfo=UTC),
        technician="tech-12",
        external_id="FS-881",
    )
    (outcomes, _) = deliver(salesforce, [contact("c-1")], [paid], [completed], [completed])
    assert outcomes == [[None], [None], [None], [None]]
    sent = [
        r.body["records"][0]
        for r in salesforce.requests
        if r.path == f"{PATH}/WorkOrder/Switchboard_Job_Id__c"
    ]
    assert sent[0] == {
        "attributes": {"type": "WorkOrder"},
        "Switchboard_Job_Id__c": "job-1",
        "Contact": {"attributes": {"type": "Contact"}, "Switchboard_Contact_Id__c": "c-1"},
        "Subject": "Boiler service for Ada",
        "Status": "New",
        "Street": "1 Engine Row, London",
        "Switchboard_Job_Type__c": "service",
        "Switchboard_Service__c": "Boiler service",
        "Switchboard_Amount__c": 450.5,
        "Switchboard_Currency__c": "GBP",
    }
    assert sent[1] == {
        "attributes": {"type": "WorkOrder"},
        "Switchboard_Job_Id__c": "job-1",
        "Contact": {"attributes": {"type": "Contact"}, "Switchboard_Contact_Id__c": "c-1"},
        "Status": "Completed",
        "StartDate": "2026-03-05T08:00:00+00:00",
        "EndDate": "2026-03-05T16:00:00+00:00",
        "Switchboard_Job_Type__c": "boiler_installation",
        "Switchboard_Technician__c": "tech-12",
        "Switchboard_Field_Job_Id__c": "FS-881",
    }
    [order] = salesforce.records["WorkOrder"].values()
    assert order == {
        "Id": order["Id"],
        "Switchboard_Job_Id__c": "job-1",
        "ContactId": contact_id(salesforce, "c-1"),
        "Subject": "Boiler service for Ada",
        "Status": "Completed",
        "StartDate": "2026-03-05T08:00:00+00:00",
        "EndDate": "2026-03-05T16:00:00+00:00",
        "Street": "1 Engine Row, London",
        "Switchboard_Job_Type__c": "boiler_installation",
        "Switchboard_Service__c": "Boiler service",
        "Switchboard_Amount__c": 450.5,
        "Switchboard_Currency__c": "GBP",
        "Switchboard_Technician__c": "tech-12",
        "Switchboard_Field_Job_Id__c": "FS-881",
    }


def test_a_job_status_without_a_work_order_status_is_rejected_without_a_call(
    salesforce: FakeSalesforce,
) -> None:
    (outcomes, _) = deliver(salesforce, [job("c-1", status="awaiting_parts")])
    [[outcome]] = outcomes
    assert isinstance(outcome, Rejected)
    assert str(outcome).startswith(
        "salesforce: payload.status: 'awaiting_parts' has no WorkOrder Status; known: "
    )
    assert not [r for r in salesforce.requests if "WorkOrder" in r.path]


def test_a_merge_moves_the_retired_contacts_work_orders_and_later_jobs_follow(
    salesforce: FakeSalesforce,
) -> None:
    deliver(salesforce, [contact("c-1"), contact("c-2")], [job("c-2")])
    survivor = contact_id(salesforce, "c-1")
    ([[outcome]], _) = deliver(salesforce, [merge("c-1", "c-2")])
    assert outcome is None
    [order] = salesforce.records["WorkOrder"].values()
    assert order["ContactId"] == survivor
    # Issued for c-2 before the merge, arriving after it.
    (outcomes, _) = deliver(salesforce, [job("c-2", status="scheduled", job_id="job-2")])
    assert outcomes == [[None]]
    [later] = salesforce.find("WorkOrder", "Switchboard_Job_Id__c", "job-2")
    assert later["ContactId"] == survivor
