"""The HubSpot CRM writer: CRM commands become HubSpot CRM v3 batch upserts.

Every write is an upsert by a unique property, so a redelivered command finds the record it
made the first time and changes nothing (invariant 2):

- contacts by ``email``, or by ``switchboard_contact_id`` when the command has no e-mail;
  every contact carries ``switchboard_contact_id`` so the other commands can find it;
- deals by ``switchboard_deal_id`` (CREATE_DEAL and UPDATE_DEAL_STAGE reach the same deal);
- tasks, calls, meetings, e-mails, SMS (communications) and notes by
  ``switchboard_command_id``, the command's idempotency key.

Batch upsert takes no associations, so a deal or activity is tied to its contact afterwards
with the v4 "associate default" batch call, which is idempotent too. The portal needs the
custom unique-value properties above (``hasUniqueValue: true``) on each object it writes.

Docs followed (developers.hubspot.com):

- batch upsert, input ``{id, idProperty, objectWriteTraceId, properties}`` and output
  ``{status, results[{id, properties, new, objectWriteTraceId, ...}], errors[], numErrors}``:
  /docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts
- batch read by ``idProperty``: /docs/api-reference/legacy/crm/objects/objects/batch/read
- v4 default associations ``POST /crm/v4/associations/{from}/{to}/batch/associate/default``
  with ``inputs[{from: {id}, to: {id}}]``:
  /docs/api-reference/legacy/crm/associations/associate-records/batch/create-associations
- errors: /docs/api-reference/error-handling -- the body ``{status: "error", message,
  correlationId, category, errors[]}`` (every field optional); 207 multi-status when the
  inputs carry an ``objectWriteTraceId``, each error naming its inputs in
  ``context.objectWriteTraceId`` (a list); 429 bodies add ``errorType: "RATE_LIMIT"`` and
  ``policyName`` (``TEN_SECONDLY_ROLLING`` or ``DAILY``), and answers carry
  ``X-HubSpot-RateLimit-Max``/``-Remaining``/``-Interval-Milliseconds``
  (/docs/developer-tooling/platform/usage-guidelines).
- engagement properties: tasks (``hs_task_subject``, ``hs_task_body``, ``hs_timestamp`` is
  the due date, ``hs_task_priority``, ``hs_task_status``), calls (``hs_call_*``), notes
  (``hs_note_body``, ``hs_timestamp``): /docs/api-reference/latest/crm/activities/*/guide."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from connectors.sinks.crm.values import major_units, task_priority, utc
from connectors.sinks.delivery import DeliveryError, Outcome, Rejected, Retryable
from connectors.sinks.http import Answer, raise_for_status, request, retry_after_seconds

BATCH_LIMIT = 100  # inputs per batch call (upsert, read, associate)
CONTACT_KEY = "switchboard_contact_id"
DEAL_KEY = "switchboard_deal_id"
COMMAND_KEY = "switchboard_command_id"

# LOG_ACTIVITY's activity_type -> the HubSpot engagement object that records it.
ACTIVITY_OBJECTS = {
    "call": "calls",
    "meeting": "meetings",
    "email": "emails",
    "sms": "communications",
}
TASK_PRIORITIES = {"low": "LOW", "medium": "MEDIUM", "normal": "MEDIUM", "high": "HIGH"}


@dataclass(frozen=True)
class Write:
    """One record as one upsert input."""

    index: int  # the record's position in the deliver() call
    object_type: str
    id_property: str
    id_value: str
    properties: dict[str, str]
    associate: bool  # tie the object to the record's contact afterwards
    trace_id: str  # objectWriteTraceId: the command id, so errors map back exactly


class HubSpotWriter:
    """Destination ``hubspot``: one record, one upsert, in batches of at most 100."""

    name = "hubspot"
    max_batch = BATCH_LIMIT

    def __init__(
        self,
        token: str,
        *,
        base_url: str = "https://api.hubapi.com",
        owner_ids: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        """``owner_ids`` maps Switchboard rep ids to HubSpot owner ids; without it rep ids
        are taken to be HubSpot owner ids already. A ``session`` passed in stays open."""
        self.base_url = base_url.rstrip("/")
        self.owner_ids = owner_ids
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._own_session = session is None
        self.rate_limit_remaining: int | None = None  # X-HubSpot-RateLimit-Remaining, last seen

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(records)
        writes: list[Write] = []
        for index, record in enumerate(records):
            try:
                writes.append(self._write_for(index, record))
            except Rejected as exc:
                outcomes[index] = exc
        contacts = await self._contact_ids(
            {records[w.index]["contact_id"] for w in writes if w.associate}
        )
        groups: dict[tuple[str, str], list[Write]] = {}
        for write in writes:
            contact_id = records[write.index]["contact_id"]
            if write.associate and contact_id not in contacts:
                outcomes[write.index] = Rejected(
                    f"hubspot: contact {contact_id} not found (no contact with "
                    f"{CONTACT_KEY}={contact_id}); upsert the contact first"
                )
                continue
            groups.setdefault((write.object_type, write.id_property), []).append(write)
        for (object_type, _), group in groups.items():
            for start in range(0, len(group), BATCH_LIMIT):
                chunk = group[start : start + BATCH_LIMIT]
                made = await self._upsert(object_type, chunk, outcomes)
                links = [
                    (w.index, made[w.index], contacts[records[w.index]["contact_id"]])
                    for w in chunk
                    if w.associate and w.index in made
                ]
                if links:
                    await self._associate(object_type, links, outcomes)
        return outcomes

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- commands -> upsert inputs ---------------------------------------------------------

    def _write_for(self, index: int, record: Mapping[str, Any]) -> Write:
        command = record["command_type"]
        payload: Mapping[str, Any] = record["payload"]
        contact_id: str = record["contact_id"]
        command_id: str = record["command_id"]

        def write(object_type: str, key: str, value: str, props: dict[str, Any]) -> Write:
            properties = {k: _text(v) for k, v in props.items() if v is not None}
            properties[key] = value
            associate = object_type != "contacts"
            return Write(index, object_type, key, value, properties, associate, command_id)

        if command == "UPSERT_CONTACT":
            props = {
                **payload.get("properties", {}),
                "email": payload.get("email"),
                "phone": payload.get("phone"),
                "firstname": payload.get("first_name"),
                "lastname": payload.get("last_name"),
                "company": payload.get("company"),
                "jobtitle": payload.get("title"),
                CONTACT_KEY: contact_id,
            }
            email = payload.get("email")
            if email:
                return write("contacts", "email", email, props)
            return write("contacts", CONTACT_KEY, contact_id, props)
        if command == "SET_OWNER":
            owner = self._owner(payload["owner_id"])
            return write("contacts", CONTACT_KEY, contact_id, {"hubspot_owner_id": owner})
        if command == "CREATE_DEAL":
            props = {
                "dealname": payload["name"],
                "dealstage": payload["stage"],
                "pipeline": payload.get("pipeline"),
                "amount": _amount(payload.get("amount_minor"), payload.get("currency")),
                "deal_currency_code": payload.get("currency"),
            }
            return write("deals", DEAL_KEY, payload["deal_id"], props)
        if command == "UPDATE_DEAL_STAGE":
            return write("deals", DEAL_KEY, payload["deal_id"], {"dealstage": payload["stage"]})
        if command == "CREATE_TASK":
            priority = payload.get("priority")
            props = {
                "hs_task_subject": payload["title"],
                "hs_task_body": payload.get("notes"),
                "hs_timestamp": _instant(payload["due_at"]),
                "hs_task_status": "NOT_STARTED",
                "hs_task_priority": task_priority(priority, TASK_PRIORITIES, "hubspot")
                if priority
                else None,
                "hubspot_owner_id": self._owner(payload["owner_id"])
                if payload.get("owner_id")
                else None,
            }
            return write("tasks", COMMAND_KEY, command_id, props)
        if command == "LOG_ACTIVITY":
            object_type, props = _activity(payload)
            return write(object_type, COMMAND_KEY, command_id, props)
        if command == "ADD_NOTE":
            props = {"hs_note_body": payload["body"], "hs_timestamp": _instant(record["issued_at"])}
            return write("notes", COMMAND_KEY, command_id, props)
        raise Rejected(f"hubspot: no mapping for command type {command!r}")

    def _owner(self, rep_id: str) -> str:
        if self.owner_ids is None:
            return rep_id
        owner = self.owner_ids.get(rep_id)
        if owner is None:
            raise Rejected(
                f"hubspot: rep {rep_id!r} has no HubSpot owner id; add it to the owner map"
            )
        return owner

    # -- calls ---------------------------------------------------------------------------

    async def _call(self, path: str, body: dict[str, Any], what: str) -> Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        answer = await request(
            self._session,
            "POST",
            self.base_url + path,
            what=what,
            timeout_s=self.timeout_s,
            json=body,
            headers=self._headers,
        )
        remaining = answer.headers.get("X-HubSpot-RateLimit-Remaining")
        if remaining is not None and remaining.isdigit():
            self.rate_limit_remaining = int(remaining)
        return answer

    async def _contact_ids(self, contact_ids: set[str]) -> dict[str, str]:
        """Switchboard contact id -> HubSpot object id, for the contacts that exist."""
        found: dict[str, str] = {}
        ordered = sorted(contact_ids)
        for start in range(0, len(ordered), BATCH_LIMIT):
            chunk = ordered[start : start + BATCH_LIMIT]
            body = {
                "idProperty": CONTACT_KEY,
                "inputs": [{"id": c} for c in chunk],
                "properties": [CONTACT_KEY],
            }
            what = "hubspot contacts batch/read"
            answer = await self._call("/crm/v3/objects/contacts/batch/read", body, what)
            _raise_for_call(answer, what)
            for result in _json_object(answer).get("results", []):
                key = (result.get("properties") or {}).get(CONTACT_KEY)
                if key in contact_ids:
                    found[key] = str(result["id"])
        return found

    async def _upsert(
        self, object_type: str, writes: list[Write], outcomes: list[Outcome]
    ) -> dict[int, str]:
        """Upsert ``writes``, set the outcome of each, and return index -> HubSpot id for
        the ones HubSpot confirmed."""
        what = f"hubspot {object_type} batch/upsert"
        body = {
            "inputs": [
                {
                    "id": w.id_value,
                    "idProperty": w.id_property,
                    "objectWriteTraceId": w.trace_id,
                    "properties": w.properties,
                }
                for w in writes
            ]
        }
        answer = await self._call(f"/crm/v3/objects/{object_type}/batch/upsert", body, what)
        if answer.status == 400:
            _refused(answer, what, [(w.index, w.trace_id, w.id_value) for w in writes], outcomes)
            return {}
        _raise_for_call(answer, what)
        parsed = _json_object(answer)
        made: dict[int, str] = {}
        by_trace = {w.trace_id: w for w in writes}
        by_value = {w.id_value.lower(): w for w in writes}
        for result in parsed.get("results", []):
            props = result.get("properties") or {}
            write = by_trace.get(result.get("objectWriteTraceId", "")) or by_value.get(
                str(props.get(writes[0].id_property, "")).lower()
            )
            if write is not None:
                made[write.index] = str(result["id"])
        errors = _errors_by_trace(parsed.get("errors", []))
        for write in writes:
            if write.index in made:
                continue
            error = errors.get(write.trace_id) or errors.get(write.id_value)
            if error is not None:
                outcomes[write.index] = Rejected(f"{what}: {error}", answer.summary())
            elif errors.get(""):
                outcomes[write.index] = Rejected(f"{what}: {errors['']}", answer.summary())
            else:
                outcomes[write.index] = Retryable(
                    f"{what}: HubSpot did not confirm {write.id_property}={write.id_value}",
                    answer.summary(),
                )
        return made

    async def _associate(
        self, object_type: str, links: list[tuple[int, str, str]], outcomes: list[Outcome]
    ) -> None:
        """Tie each new or updated object to its contact (default association type)."""
        what = f"hubspot {object_type}->contacts batch/associate/default"
        body = {
            "inputs": [{"from": {"id": obj}, "to": {"id": contact}} for _, obj, contact in links]
        }
        path = f"/crm/v4/associations/{object_type}/contacts/batch/associate/default"
        answer = await self._call(path, body, what)
        if answer.status == 400:
            _refused(answer, what, [(i, obj, obj) for i, obj, _ in links], outcomes)
            return
        _raise_for_call(answer, what)
        errors = _errors_by_trace(_json_object(answer).get("errors", []))
        for index, obj, _ in links:
            if obj in errors:
                outcomes[index] = Rejected(f"{what}: {errors[obj]}", answer.summary())
            elif errors:
                message = next(iter(errors.values()))
                outcomes[index] = Retryable(f"{what}: {message}", answer.summary())


# -- answers -----------------------------------------------------------------------------


def _raise_for_call(answer: Answer, what: str) -> None:
    """``raise_for_status``, plus HubSpot's own wait when a 429 has no Retry-After: the
    rolling window (``X-HubSpot-RateLimit-Interval-Milliseconds``) unless the daily limit
    is spent, which only resets at midnight in the portal's time zone."""
    if answer.status == 429 and retry_after_seconds(answer.headers.get("Retry-After")) is None:
        body = answer.json()
        policy = body.get("policyName") if isinstance(body, dict) else None
        interval = answer.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds", "")
        wait = int(interval) / 1000 if interval.isdigit() and policy != "DAILY" else None
        raise Retryable(f"{what}: HTTP 429 ({policy or 'rate limited'})", answer.summary(), wait)
    raise_for_status(answer, what)


def _json_object(answer: Answer) -> dict[str, Any]:
    """A 2xx body that is not a JSON object means the call's effect is unknown: retry (every
    write here is an upsert, so trying again is harmless)."""
    body = answer.json()
    if not isinstance(body, dict):
        raise Retryable("hubspot: answer is not a JSON object", answer.summary())
    return body


def _errors_by_trace(errors: Any) -> dict[str, str]:
    """Error message by the input it names: ``context.objectWriteTraceId`` (upsert), or any
    other ``context`` list (``ids``, ``fromObjectId``...). Errors naming no input go under ""."""
    named: dict[str, str] = {}
    for error in errors if isinstance(errors, list) else []:
        if not isinstance(error, dict):
            continue
        message = f"{error.get('category', 'ERROR')}: {error.get('message', '')}".strip()
        context = error.get("context") or {}
        keys = [
            str(v)
            for values in (context.values() if isinstance(context, dict) else [])
            if isinstance(values, list)
            for v in values
        ]
        for key in keys or [""]:
            named.setdefault(key, message)
    return named


def _refused(
    answer: Answer, what: str, inputs: list[tuple[int, str, str]], outcomes: list[Outcome]
) -> None:
    """A 400 refuses the whole batch. The inputs the body names are Rejected; the others
    were refused only because they shared the call, so they are Retryable. If it names
    none (or is not JSON), every input is Rejected with HubSpot's answer."""
    body = answer.json()
    named = _errors_by_trace([body]) if isinstance(body, dict) else {}
    message = named.pop("", None) or (next(iter(named.values())) if named else answer.text[:200])
    blamed = {index for index, *keys in inputs if any(k in named for k in keys)}
    for index, *_ in inputs:
        error: DeliveryError
        if blamed and index not in blamed:
            error = Retryable(f"{what}: batch refused for another record", answer.summary())
        else:
            error = Rejected(f"{what}: HTTP 400 {message}".strip(), answer.summary())
        outcomes[index] = error


# -- values ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    """HubSpot property values are strings; datetimes as ISO 8601 UTC."""
    if isinstance(value, datetime):
        return _instant(value)
    return str(value)


def _instant(value: datetime | int) -> str:
    """An Avro timestamp-millis as ISO 8601 UTC with millis."""
    return utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _amount(amount_minor: int | None, currency: str | None) -> str | None:
    amount = major_units(amount_minor, currency)
    return None if amount is None else str(amount)


def _activity(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """LOG_ACTIVITY -> (engagement object, properties)."""
    kind = str(payload["activity_type"]).lower()
    object_type = ACTIVITY_OBJECTS.get(kind)
    if object_type is None:
        raise Rejected(
            f"hubspot: activity type {payload['activity_type']!r} has no HubSpot engagement; "
            f"use one of {sorted(ACTIVITY_OBJECTS)}"
        )
    when = _instant(payload["occurred_at"])
    summary, outcome = payload.get("summary"), payload.get("outcome")
    duration = payload.get("duration_seconds")
    if object_type == "calls":
        return object_type, {
            "hs_timestamp": when,
            "hs_call_title": f"Call: {outcome}" if outcome else "Call",
            "hs_call_body": summary,
            "hs_call_duration": duration * 1000 if duration is not None else None,
            "hs_call_status": "COMPLETED",
        }
    if object_type == "meetings":
        return object_type, {
            "hs_timestamp": when,
            "hs_meeting_title": f"Meeting: {outcome}" if outcome else "Meeting",
            "hs_meeting_body": summary,
            "hs_meeting_start_time": when,
        }
    if object_type == "emails":
        return object_type, {"hs_timestamp": when, "hs_email_text": summary}
    return object_type, {
        "hs_timestamp": when,
        "hs_communication_channel_type": "SMS",
        "hs_communication_logged_from": "CRM",
        "hs_communication_body": summary,
    }
