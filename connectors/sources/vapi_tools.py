"""Vapi's ``tool-calls`` server message: the voice AI reads and writes the CRM during the
call, through Switchboard.

Vapi posts the tools the model called (``message.toolCallList``: an ``id``, the function
name and its arguments, which arrive as an object or as a JSON string) to the server URL,
authenticated like its other server messages, and speaks what the answer says:
``{"results": [{"toolCallId": ..., "result": ...}]}``, one per call, in order.

- ``lookup_caller`` (``phone`` or ``email``; the calling number when neither) answers
  from the caller lookup (processors.lookup, over HTTP with its token);
- ``log_note`` (``note``), ``request_callback`` (``at``, ISO 8601 with an offset;
  ``reason``, ``phone``) and ``update_contact`` (``first_name``, ``last_name``, ``name``,
  ``email``, ``address``, ``city``, ``postcode``, ``service``) are events on Kafka like
  any source event: NOTE_LOGGED, CALLBACK_REQUESTED and DETAILS_CORRECTED, ordered,
  audited and deduplicated by the tool call's id (Vapi's retry is the same event).

Arguments are checked before anything is written: one bad argument refuses the request
(400 naming ``message.toolCallList[i].arguments.<name>``, kept as a dead letter)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field, field_validator

from connectors.sources import canonical, identity
from connectors.sources.base import Event, Rejected, Time, WebhookRequest, validated

SYSTEM = "vapi"
WRITES = {
    "log_note": "NOTE_LOGGED",
    "request_callback": "CALLBACK_REQUESTED",
    "update_contact": "DETAILS_CORRECTED",
}
READS = {"lookup_caller"}
# A callback further out than this is a misheard date, not a wish.
CALLBACK_HORIZON = timedelta(days=90)
NOTE_CHARS = 4000

# (kind, value) -> the caller's card, or None when nobody is known by it; LookupFailed
# when the lookup cannot answer.
Lookup = Callable[[str, str], Awaitable[dict[str, Any] | None]]


class LookupFailed(Exception):
    pass


class _Customer(BaseModel):
    number: str | None = None


class _Call(BaseModel):
    id: str = Field(min_length=1, max_length=200)
    customer: _Customer = Field(default_factory=_Customer)


class _Function(BaseModel):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class _ToolCall(BaseModel):
    """Either shape Vapi sends: ``{id, name, arguments}`` or ``{id, function: {name,
    arguments}}``."""

    id: str = Field(min_length=1, max_length=200)
    name: str | None = None
    arguments: dict[str, Any] | str | None = None
    function: _Function | None = None

    def tool(self) -> str:
        return self.name or (self.function.name if self.function else "")

    def args(self) -> dict[str, Any] | str:
        if self.arguments is not None:
            return self.arguments
        return self.function.arguments if self.function else {}


class _ToolCalls(BaseModel):
    type: str
    timestamp: float | None = None
    call: _Call
    customer: _Customer | None = None
    toolCallList: list[_ToolCall] = Field(min_length=1, max_length=20)


class _Envelope(BaseModel):
    message: _ToolCalls


class _Text(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _stripped(cls, value: Any) -> Any:
        return value.strip() or None if isinstance(value, str) else value


class _Note(_Text):
    note: str = Field(min_length=1, max_length=NOTE_CHARS)


class _Callback(_Text):
    at: Time
    reason: str | None = Field(None, max_length=500)
    phone: str | None = Field(None, max_length=40)


class _Details(_Text):
    name: str | None = Field(None, max_length=200)
    first_name: str | None = Field(None, max_length=100)
    last_name: str | None = Field(None, max_length=100)
    email: str | None = Field(None, max_length=254)
    address: str | None = Field(None, max_length=300)
    city: str | None = Field(None, max_length=100)
    postcode: str | None = Field(None, max_length=20)
    service: str | None = Field(None, max_length=200)


class _Lookup(_Text):
    phone: str | None = Field(None, max_length=40)
    email: str | None = Field(None, max_length=254)


def is_tool_calls(request: WebhookRequest) -> bool:
    message = request.json().get("message")
    return isinstance(message, dict) and message.get("type") == "tool-calls"


def _envelope(request: WebhookRequest) -> _ToolCalls:
    return validated(_Envelope, request.json()).message


def _arguments(call: _ToolCall, index: int, model: type[_Text]) -> Any:
    """The call's arguments validated by ``model``; errors name them by their path."""
    raw = call.args()
    where = f"message.toolCallList[{index}].arguments"
    if isinstance(raw, str):
        try:
            raw = json.loads(raw or "{}")
        except ValueError:
            raise Rejected(f"field {where}: not a JSON object", field=where) from None
    try:
        return validated(model, raw)
    except Rejected as exc:
        field = f"{where}.{exc.field}" if exc.field and exc.field != "(body)" else where
        message = str(exc).replace(f"field {exc.field}", f"field {field}", 1)
        raise Rejected(message, field=field) from None


def _caller(message: _ToolCalls) -> str | None:
    customer = message.customer or message.call.customer
    return customer.number or message.call.customer.number


def parse(request: WebhookRequest, received: datetime) -> list[Event]:
    """The write tools' events (lookups write nothing); Rejected for a bad argument or an
    unknown tool."""
    message = _envelope(request)
    at = (
        datetime.fromtimestamp(message.timestamp / 1000, UTC)
        if message.timestamp is not None
        else received
    )
    caller = identity.phone(_caller(message), field="message.call.customer.number")
    events = []
    for index, call in enumerate(message.toolCallList):
        tool = call.tool()
        if tool in READS:
            _asked(call, index, message)
            continue
        if tool not in WRITES:
            where = f"message.toolCallList[{index}].function.name"
            known = ", ".join(sorted([*READS, *WRITES]))
            raise Rejected(f"field {where}: no tool named {tool!r}; have: {known}", field=where)
        events.append(_write(tool, call, index, message, caller, at, received))
    return events


def _write(
    tool: str,
    call: _ToolCall,
    index: int,
    message: _ToolCalls,
    caller: str | None,
    at: datetime,
    received: datetime,
) -> Event:
    where = f"message.toolCallList[{index}].arguments"
    email = None
    profile: dict[str, Any] = {}
    if tool == "log_note":
        note = _arguments(call, index, _Note)
        payload: dict[str, Any] = {
            "note_id": call.id,
            "body": note.note,
            "author": "voice AI",
            "call_id": message.call.id,
        }
    elif tool == "request_callback":
        callback = _arguments(call, index, _Callback)
        if not received - timedelta(minutes=5) <= callback.at <= received + CALLBACK_HORIZON:
            raise Rejected(
                f"field {where}.at: {callback.at.isoformat()} is not between now and "
                f"{CALLBACK_HORIZON.days} days from now",
                field=f"{where}.at",
            )
        payload = {
            "request_id": call.id,
            "due_at": callback.at,
            "reason": callback.reason,
            "phone": identity.phone(callback.phone, field=f"{where}.phone") or caller,
            "call_id": message.call.id,
        }
    else:
        details = _arguments(call, index, _Details)
        email = identity.email(details.email, field=f"{where}.email")
        # The caller's own words about themselves: as good as a form they filled in.
        profile = canonical.profile_of(
            "self",
            name=details.name,
            first_name=details.first_name,
            last_name=details.last_name,
            address=details.address,
            city=details.city,
            postcode=details.postcode,
            service=details.service,
        )
        given = sorted(set(profile) | ({"email"} if email else set()))
        if not given:
            raise Rejected(f"field {where}: no detail given", field=where)
        payload = {"fields": given, "call_id": message.call.id}
    if caller is None and email is None:
        raise Rejected(
            "field message.call.customer.number: the caller's number is unknown, so the "
            "write has nobody to go to",
            field="message.call.customer.number",
        )
    return canonical.event(
        system=SYSTEM,
        provider_event_id=f"{message.call.id}:tool:{call.id}",
        event_type=WRITES[tool],
        event_time=at,
        received=received,
        identity=identity.identity(
            phone_number=caller, email_address=email, external_ids={SYSTEM: message.call.id}
        ),
        payload=payload,
        profile=profile,
    )


async def answer(request: WebhookRequest, lookup: Lookup) -> dict[str, Any]:
    """What Vapi speaks from: a result per tool call, in order. Called once the writes
    are on Kafka."""
    message = _envelope(request)
    results = []
    for index, call in enumerate(message.toolCallList):
        tool = call.tool()
        if tool in READS:
            result = await _looked_up(_asked(call, index, message), lookup)
            results.append({"toolCallId": call.id, "result": result})
        else:
            results.append({"toolCallId": call.id, "result": _DONE[tool]})
    return {"results": results}


def _asked(call: _ToolCall, index: int, message: _ToolCalls) -> tuple[str, str] | None:
    """Who a lookup asks for, normalised as the sources store it: the e-mail given, else
    the number given, else the calling number; None when there is none."""
    where = f"message.toolCallList[{index}].arguments"
    asked = _arguments(call, index, _Lookup)
    email = identity.email(asked.email, field=f"{where}.email")
    if email:
        return "email", email
    number = identity.phone(asked.phone, field=f"{where}.phone") or identity.phone(
        _caller(message), field="message.call.customer.number"
    )
    return ("phone", number) if number else None


async def _looked_up(asked: tuple[str, str] | None, lookup: Lookup) -> str:
    if asked is None:
        return "The caller's number is withheld: ask for their e-mail address."
    try:
        card = await lookup(*asked)
    except LookupFailed:
        return "The caller's record cannot be read right now: take their details."
    if card is None:
        return "No record of this caller: a new contact."
    return json.dumps(card, separators=(",", ":"), default=str)


_DONE = {
    "log_note": "Noted.",
    "request_callback": "Callback requested; the owner has a task for that time.",
    "update_contact": "Updated.",
}
