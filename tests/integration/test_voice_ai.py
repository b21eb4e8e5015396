"""A voice AI that reads and writes the CRM during the call (issue 21), told as a user
sees it: Vapi's own server messages go through the real gateway, worker, caller lookup
and CRM sink, and the answers Vapi speaks from and the CRM store are checked field by
field.

Ana Silva asked for a quote on a Typeform form and booked a site visit on Calendly. She
rings the voice AI: it looks her up by her number (her name, company, owner, service and
the visit come back), notes what she says, takes a callback for the time she chose and
her corrected address, and the call ends. The CRM must show the note, the callback as
the owner's task at that time, the corrected address and the call; the lookup then shows
the callback and the call's summary."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
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
from streams.web import LOOKUP_TOKEN_SECRET
from tests.conftest import free_port
from tests.kafka_helpers import (
    LOOKUP_TOKEN,
    producer,
    running_gateway,
    running_lookup,
    running_sink,
    running_worker,
    wait_for,
)
from tests.webhooks import SECRETS, Answer, fixture, post, signed

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=2)
PHONE, EMAIL = "+14155550132", "ana.silva@example.com"
VISIT = NOW + timedelta(days=2)
CALLBACK = (NOW + timedelta(days=1)).replace(minute=30, second=0)
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


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def typeform_lead() -> bytes:
    body = json.loads(fixture("typeform_form_response.json"))
    body["form_response"]["submitted_at"] = _iso(T0)
    body["form_response"]["landed_at"] = _iso(T0 - timedelta(minutes=1))
    return json.dumps(body).encode()


def calendly_booking() -> bytes:
    uri = "https://api.calendly.com/scheduled_events/EV-ANA"
    return json.dumps(
        {
            "event": "invitee.created",
            "created_at": _iso(T0 + timedelta(minutes=5)),
            "payload": {
                "uri": f"{uri}/invitees/INV-ANA",
                "email": EMAIL,
                "name": "Ana Silva",
                "timezone": "America/New_York",
                "scheduled_event": {
                    "uri": uri,
                    "name": "Site visit",
                    "start_time": _iso(VISIT),
                    "end_time": _iso(VISIT + timedelta(minutes=45)),
                    "location": {"type": "physical", "location": "4 Mill Lane"},
                    "event_memberships": [{"user_email": REP["email"]}],
                },
            },
        }
    ).encode()


CALL: dict[str, Any] = {
    "id": "call-ana-7",
    "orgId": "org-northside",
    "type": "inboundPhoneCall",
    "customer": {"number": PHONE},
}


def tool_calls(*calls: dict[str, Any]) -> bytes:
    """Vapi's ``tool-calls`` server message, in the shape its documentation shows: the
    calls with their arguments, and each tool with its call."""
    return json.dumps(
        {
            "message": {
                "timestamp": int(NOW.timestamp() * 1000),
                "type": "tool-calls",
                "toolCallList": list(calls),
                "toolWithToolCallList": [
                    {
                        "type": "function",
                        "function": {"name": call["function"]["name"]},
                        "server": {"url": "https://switchboard.example/webhooks/vapi"},
                        "messages": [],
                        "toolCall": call,
                    }
                    for call in calls
                ],
                "artifact": {"messages": []},
                "assistant": {"name": "Riley (front desk)"},
                "call": CALL,
                "customer": {"number": PHONE},
            }
        }
    ).encode()


def call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    # The model's arguments arrive as an object in some payloads, as JSON text in others.
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def end_of_call_report() -> bytes:
    return json.dumps(
        {
            "message": {
                "type": "end-of-call-report",
                "endedReason": "customer-ended-call",
                "startedAt": _iso(NOW - timedelta(minutes=4)),
                "endedAt": _iso(NOW),
                "durationSeconds": 231,
                "analysis": {
                    "summary": "Ana confirmed the site visit and wants a call back about "
                    "financing.",
                    "structuredData": {"outcome": "qualified"},
                },
                "call": CALL,
                "customer": {"number": PHONE},
                "assistant": {"name": "Riley (front desk)"},
            }
        }
    ).encode()


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    store: SqlCrmStore

    def send(self, source: str, body: bytes) -> Answer:
        url = f"http://127.0.0.1:{self.settings.gateway_port}/webhooks/{source}"
        return post(url, *signed(source, body, url))

    def lookup(self, query: str, token: str | None = LOOKUP_TOKEN) -> tuple[int, Any]:
        url = f"http://127.0.0.1:{self.settings.lookup_port}/v1/contacts/lookup?{query}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def pipeline(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> Iterator[Pipeline]:
    """Gateway, worker, caller lookup and the SQL CRM sink; the worker's clock at NOW."""
    clock = tmp_path / "clock"
    FileClock.write(clock, NOW)
    lookup_port = free_port()
    settings = settings.model_copy(
        update={
            "clock": f"file:{clock}",
            "gateway_port": free_port(),
            "lookup_port": lookup_port,
            "lookup_url": f"http://127.0.0.1:{lookup_port}",
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
    with ExitStack() as stack:
        stack.enter_context(running_worker(settings, tmp_path / "worker.log"))
        stack.enter_context(running_lookup(settings, tmp_path / "lookup.log"))
        secrets = SECRETS | {LOOKUP_TOKEN_SECRET: LOOKUP_TOKEN}
        stack.enter_context(running_gateway(settings, tmp_path / "gateway.log", secrets))
        stack.enter_context(running_sink(settings, "crm", tmp_path / "crm.log"))
        yield Pipeline(settings, open_store(settings.crm_database_url))


def test_the_voice_ai_looks_the_caller_up_and_writes_during_the_call(pipeline: Pipeline) -> None:
    store = pipeline.store
    assert pipeline.send("typeform", typeform_lead()).status == 200
    assert pipeline.send("calendly", calendly_booking()).status == 200
    wait_for(
        lambda: [c["owner_id"] for c in store.rows("contacts")] == ["rep-jordan"],
        "the lead in the CRM with its owner",
        90,
    )

    # The lookup reads the workers' changelogs, the CRM sink their commands: each at its
    # own pace, within a moment of the other.
    wait_for(
        lambda: (
            (pipeline.lookup(f"phone=%2B{PHONE[1:]}")[1].get("contact") or {}).get("owner")
            is not None
        ),
        "the lookup to see the owner the CRM shows",
        5,
    )

    # During the call: who is this?
    answer = pipeline.send("vapi", tool_calls(call("tc-look-1", "lookup_caller", {})))
    assert answer.status == 200, answer
    [result] = answer.body["results"]
    assert result["toolCallId"] == "tc-look-1"
    card = json.loads(result["result"])
    assert (card["name"], card["first_name"]) == ("Ana Silva", "Ana")
    assert (card["email"], card["phone"]) == (EMAIL, PHONE)
    assert card["service"] == "Boiler replacement"
    assert card["owner"]["rep_id"] == "rep-jordan"
    assert card["owner"]["name"] == "Jordan Lee"
    assert card["owner"]["available_now"] is True
    assert card["score_band"] is not None
    visit = card["next_booking"]
    assert (visit["kind"], visit["title"], visit["status"]) == (
        "meeting",
        "Site visit",
        "scheduled",
    )
    assert datetime.fromisoformat(visit["starts_at"]) == VISIT
    assert visit["location"] == "4 Mill Lane"
    assert card["last_touch"]["web"]["inbound"] is not None

    # The caller asks for things; the assistant writes them in one message.
    writes = tool_calls(
        call("tc-note-1", "log_note", {"note": "Prefers mornings; gate code 4411."}),
        call(
            "tc-cb-1",
            "request_callback",
            {"at": CALLBACK.isoformat(), "reason": "financing options"},
        ),
        call(
            "tc-upd-1",
            "update_contact",
            {"address": "4 Mill Lane", "city": "Springfield", "postcode": "94110"},
        ),
    )
    answer = pipeline.send("vapi", writes)
    assert answer.status == 200, answer
    assert [r["toolCallId"] for r in answer.body["results"]] == ["tc-note-1", "tc-cb-1", "tc-upd-1"]
    assert all(isinstance(r["result"], str) and r["result"] for r in answer.body["results"])
    # Vapi retries a tool call it heard no answer to: the same call changes nothing twice.
    assert pipeline.send("vapi", writes).status == 200
    assert pipeline.send("vapi", end_of_call_report()).status == 200

    def written() -> bool:
        kinds = sorted(a["activity_type"] for a in store.rows("activities"))
        contact = store.rows("contacts")[0]
        return (
            bool(store.rows("notes"))
            and any(t["title"].startswith("Call back") for t in store.rows("tasks"))
            and contact["properties"].get("postcode") == "94110"
            and "call" in kinds
        )

    wait_for(written, "the note, the callback, the address and the call in the CRM", 90)
    [contact] = store.rows("contacts")
    assert contact["properties"]["address"] == "4 Mill Lane"
    assert contact["properties"]["city"] == "Springfield"
    [note] = store.rows("notes")
    assert note["contact_id"] == contact["contact_id"]
    assert "Prefers mornings; gate code 4411." in note["body"]
    assert "call-ana-7" in note["body"]
    [callback] = [t for t in store.rows("tasks") if t["title"].startswith("Call back")]
    assert callback["title"] == "Call back Ana Silva"
    assert callback["owner_id"] == "rep-jordan"
    assert callback["priority"] == "HIGH"
    assert _as_utc(callback["due_at"]) == CALLBACK
    assert "Reason: financing options" in callback["notes"]
    assert f"Number: {PHONE}" in callback["notes"]
    [ai_call] = [a for a in store.rows("activities") if a["activity_type"] == "call"]
    assert (ai_call["outcome"], ai_call["handled_by"]) == ("qualified", "Riley (front desk)")

    # The next caller-facing lookup shows what the call left, a checkpoint later.
    def looked_up() -> dict[str, Any]:
        status, found = pipeline.lookup(f"phone=%2B{PHONE[1:]}")
        assert status == 200, found
        return dict(found["contact"])

    wait_for(lambda: looked_up()["last_call"] is not None, "the call in the lookup", 30)
    card = looked_up()
    assert [t["title"] for t in card["open_tasks"]] == ["Call back Ana Silva"]
    assert "financing" in card["last_call"]["summary"]
    assert card["address"] == "4 Mill Lane, Springfield, 94110"
    status, by_email = pipeline.lookup(f"email={EMAIL.upper()}")
    assert status == 200 and by_email["contact"]["contact_id"] == card["contact_id"]


def test_the_lookup_answers_only_to_its_token_and_says_what_is_wrong(
    pipeline: Pipeline,
) -> None:
    assert pipeline.lookup(f"phone=%2B{PHONE[1:]}", token=None)[0] == 401
    assert pipeline.lookup(f"phone=%2B{PHONE[1:]}", token="guess")[0] == 401
    status, found = pipeline.lookup("phone=12345")
    assert status == 400 and "phone" in found["error"]
    status, found = pipeline.lookup(f"phone=%2B{PHONE[1:]}&email={EMAIL}")
    assert status == 400 and "exactly one" in found["error"]
    assert pipeline.lookup("phone=%2B14155550199") == (404, {"found": False})

    # A tool call with a bad argument is refused whole (a dead letter), naming it.
    bad = tool_calls(
        call("tc-note-2", "log_note", {"note": "fine"}),
        call("tc-cb-2", "request_callback", {"at": "next tuesday"}),
    )
    answer = pipeline.send("vapi", bad)
    assert answer.status == 400
    assert answer.body["field"] == "message.toolCallList[1].arguments.at"
    unknown = pipeline.send("vapi", tool_calls(call("tc-x", "delete_everything", {})))
    assert unknown.status == 400 and "delete_everything" in unknown.body["error"]


def _as_utc(value: Any) -> datetime:
    at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return at if at.tzinfo else at.replace(tzinfo=UTC)
