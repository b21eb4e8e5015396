"""Vapi's tool calls as the gateway maps them: each write tool one event, in either shape
Vapi sends a call; bad arguments refused naming their path."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.sources import vapi
from connectors.sources.base import Rejected, WebhookRequest

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


def request(*calls: dict[str, Any], number: str | None = "+1 415 555 0132") -> WebhookRequest:
    message = {
        "type": "tool-calls",
        "timestamp": int(NOW.timestamp() * 1000),
        "toolCallList": list(calls),
        "call": {"id": "call-9", "customer": {"number": number}},
    }
    body = json.dumps({"message": message}).encode()
    return WebhookRequest(body=body, headers={}, url="http://x/webhooks/vapi", method="POST")


def test_each_write_tool_is_one_event_with_the_callers_identity() -> None:
    events = vapi.parse(
        request(
            {"id": "a", "name": "log_note", "arguments": {"note": " gate code 4411 "}},
            {
                "id": "b",
                "function": {
                    "name": "request_callback",
                    "arguments": json.dumps({"at": "2026-12-08T09:30:00-05:00"}),
                },
            },
            {"id": "c", "name": "update_contact", "arguments": {"name": "Ana Silva"}},
            {"id": "d", "name": "lookup_caller", "arguments": {}},
        ),
        NOW,
    )
    assert [e["event_type"] for e in events] == [
        "NOTE_LOGGED",
        "CALLBACK_REQUESTED",
        "DETAILS_CORRECTED",
    ]
    assert [e["event_id"] for e in events] == [
        "vapi:call-9:tool:a",
        "vapi:call-9:tool:b",
        "vapi:call-9:tool:c",
    ]
    assert {e["identity"]["phone"] for e in events} == {"+14155550132"}
    note, callback, details = (e["payload"] for e in events)
    assert note["body"] == "gate code 4411"
    assert callback["due_at"] == datetime(2026, 12, 8, 14, 30, tzinfo=UTC)
    assert callback["phone"] == "+14155550132"
    assert details["fields"] == ["first_name", "last_name"]
    assert events[2]["profile"]["first_name"] == {"value": "Ana", "origin": "self"}


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            {"id": "a", "name": "log_note", "arguments": {}},
            "message.toolCallList[0].arguments.note",
        ),
        (
            {"id": "a", "name": "request_callback", "arguments": {"at": "tomorrow"}},
            "message.toolCallList[0].arguments.at",
        ),
        (
            {"id": "a", "name": "request_callback", "arguments": {"at": "2027-09-01T10:00:00Z"}},
            "message.toolCallList[0].arguments.at",
        ),
        (
            {"id": "a", "name": "update_contact", "arguments": {"email": "a@b.c,evil@x.io"}},
            "message.toolCallList[0].arguments.email",
        ),
        (
            {"id": "a", "name": "update_contact", "arguments": "{"},
            "message.toolCallList[0].arguments",
        ),
        (
            {"id": "a", "name": "drop_table", "arguments": {}},
            "message.toolCallList[0].function.name",
        ),
    ],
)
def test_a_bad_tool_call_is_refused_naming_its_field(call: dict[str, Any], field: str) -> None:
    with pytest.raises(Rejected) as refused:
        vapi.parse(request(call), NOW)
    assert refused.value.field == field


def test_a_lookup_answers_from_the_card_or_says_why_not() -> None:
    asked: list[tuple[str, str]] = []

    async def lookup(kind: str, value: str) -> dict[str, Any] | None:
        asked.append((kind, value))
        return {"name": "Ana Silva"} if kind == "phone" else None

    calls = (
        {"id": "x", "name": "lookup_caller", "arguments": {}},
        {"id": "y", "name": "lookup_caller", "arguments": {"email": "Who@Example.com"}},
        {"id": "z", "name": "log_note", "arguments": {"note": "hi"}},
    )
    answered = asyncio.run(vapi.answer(request(*calls), lookup))
    assert answered is not None
    results = answered["results"]
    assert [r["toolCallId"] for r in results] == ["x", "y", "z"]
    assert json.loads(results[0]["result"]) == {"name": "Ana Silva"}
    assert "No record" in results[1]["result"]
    assert asked == [("phone", "+14155550132"), ("email", "who@example.com")]
    withheld = asyncio.run(vapi.answer(request(calls[0], number=None), lookup))
    assert withheld is not None and "withheld" in withheld["results"][0]["result"]


def test_other_server_messages_keep_the_gateways_answer() -> None:
    body = json.dumps({"message": {"type": "status-update", "status": "in-progress"}}).encode()
    plain = WebhookRequest(body=body, headers={}, url="http://x", method="POST")

    async def lookup(kind: str, value: str) -> dict[str, Any] | None:
        raise AssertionError("not asked")

    assert vapi.parse(plain, NOW + timedelta(seconds=1)) == []
    assert asyncio.run(vapi.answer(plain, lookup)) is None
