"""The Salesforce CRM writer: CRM commands become sObject Collections upserts by external id.

Every write is an upsert on an external-id field, so a redelivered command finds the record
it made the first time and changes nothing (invariant 2):

- Contact by ``Switchboard_Contact_Id__c`` (UPSERT_CONTACT, SET_OWNER);
- Opportunity by ``Switchboard_Deal_Id__c`` (CREATE_DEAL, UPDATE_DEAL_STAGE);
- Task by ``Switchboard_Id__c`` holding the command id (CREATE_TASK; LOG_ACTIVITY as a
  completed Task whose ``Type`` is Call/Email/Meeting/Other; ADD_NOTE as a completed Task
  "Note", because Note and ContentNote cannot carry an external-id field).

A Task reaches its contact through the polymorphic ``Who`` relationship by the contact's
external id, so no id lookup is needed. ``TaskSubtype`` is deliberately not sent: it is
create-only, so the update half of a redelivered upsert would be refused.

Docs followed (developer.salesforce.com/docs):

- sObject Collections upsert, ``PATCH /services/data/vXX.X/composite/sobjects/{SObject}/
  {ExternalIdField}`` with ``{allOrNone, records[{attributes: {type}, ...}]}``, at most 200
  records of the URI's type, answered with UpsertResults ``{id, success, errors[{statusCode,
  message, fields}], created}`` in input order:
  /platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html
- whole-call errors as ``[{message, errorCode, fields}]``, 401 ``INVALID_SESSION_ID``,
  403 ``REQUEST_LIMIT_EXCEEDED``, 503 with Retry-After: /atlas.en-us.api_rest.meta/api_rest/
  errorcodes.htm
- ``Sforce-Limit-Info: api-usage=N/M``: /atlas.en-us.api_rest.meta/api_rest/
  headers_api_usage.htm
- Contact, Opportunity (Name, StageName, CloseDate required) and Task fields:
  /platform/object-reference/references/standard-objects/object-task.html and siblings."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp

from connectors.sinks.crm.values import major_units, task_priority, utc
from connectors.sinks.delivery import Outcome, Rejected, Retryable
from connectors.sinks.http import Answer, raise_for_status, request, retry_after_seconds

BATCH_LIMIT = 200  # records per sObject Collections call
# Per-record status codes worth another try: the row was locked or the org was busy.
RETRYABLE_CODES = {"UNABLE_TO_LOCK_ROW", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE"}
# Opportunity.CloseDate is required and a command carries none: expect a close this far out.
CLOSE_AFTER = timedelta(days=30)
TASK_PRIORITIES = {"low": "Low", "normal": "Normal", "medium": "Normal", "high": "High"}
ACTIVITY_TYPES = {"call": "Call", "email": "Email", "meeting": "Meeting", "sms": "Other"}
_API_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


@dataclass(frozen=True)
class Write:
    """One record as one sObject in a collection upsert."""

    index: int
    sobject: str
    fields: dict[str, Any]


class SalesforceWriter:
    """Destination ``salesforce``: one collection upsert per sObject type in the batch."""

    name = "salesforce"
    max_batch = BATCH_LIMIT

    def __init__(
        self,
        instance_url: str,
        token: str,
        *,
        api_version: str = "v66.0",
        contact_id_field: str = "Switchboard_Contact_Id__c",
        deal_id_field: str = "Switchboard_Deal_Id__c",
        activity_id_field: str = "Switchboard_Id__c",
        owner_ids: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        """``owner_ids`` maps Switchboard rep ids to Salesforce User ids (005...); without
        it rep ids are taken to be User ids already. A ``session`` passed in stays open."""
        self.base_url = f"{instance_url.rstrip('/')}/services/data/{api_version}"
        self.external_ids = {
            "Contact": contact_id_field,
            "Opportunity": deal_id_field,
            "Task": activity_id_field,
        }
        self.owner_ids = owner_ids
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._own_session = session is None
        self.api_usage: tuple[int, int] | None = None  # (used, limit) from Sforce-Limit-Info

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(records)
        groups: dict[str, list[Write]] = {}
        for index, record in enumerate(records):
            try:
                write = self._write_for(index, record)
            except Rejected as exc:
                outcomes[index] = exc
                continue
            groups.setdefault(write.sobject, []).append(write)
        for sobject, group in groups.items():
            for start in range(0, len(group), BATCH_LIMIT):
                await self._upsert(sobject, group[start : start + BATCH_LIMIT], outcomes)
        return outcomes

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- commands -> sObjects --------------------------------------------------------------

    def _write_for(self, index: int, record: Mapping[str, Any]) -> Write:
        command = record["command_type"]
        payload: Mapping[str, Any] = record["payload"]
        contact_key = {self.external_ids["Contact"]: record["contact_id"]}
        who = {"Who": {"attributes": {"type": "Contact"}, **contact_key}}
        task_key = {self.external_ids["Task"]: record["command_id"]}

        def write(sobject: str, fields: dict[str, Any]) -> Write:
            kept = {k: v for k, v in fields.items() if v is not None}
            return Write(index, sobject, {"attributes": {"type": sobject}, **kept})

        if command == "UPSERT_CONTACT":
            return write(
                "Contact",
                {
                    **payload.get("properties", {}),
                    **contact_key,
                    "Email": payload.get("email"),
                    "Phone": payload.get("phone"),
                    "FirstName": payload.get("first_name"),
                    "LastName": payload.get("last_name"),
                    "Title": payload.get("title"),
                },
            )
        if command == "SET_OWNER":
            return write("Contact", {**contact_key, "OwnerId": self._owner(payload["owner_id"])})
        if command == "CREATE_DEAL":
            close = (utc(record["issued_at"]) + CLOSE_AFTER).date().isoformat()
            return write(
                "Opportunity",
                {
                    self.external_ids["Opportunity"]: payload["deal_id"],
                    "Name": payload["name"],
                    "StageName": payload["stage"],
                    "CloseDate": close,
                    "Amount": _amount(payload.get("amount_minor"), payload.get("currency")),
                },
            )
        if command == "UPDATE_DEAL_STAGE":
            return write(
                "Opportunity",
                {
                    self.external_ids["Opportunity"]: payload["deal_id"],
                    "StageName": payload["stage"],
                },
            )
        if command == "CREATE_TASK":
            priority = payload.get("priority")
            return write(
                "Task",
                {
                    **task_key,
                    **who,
                    "Subject": payload["title"],
                    "ActivityDate": utc(payload["due_at"]).date().isoformat(),
                    "Status": "Not Started",
                    "Priority": task_priority(priority, TASK_PRIORITIES, "salesforce")
                    if priority
                    else None,
                    "Description": payload.get("notes"),
                    "OwnerId": self._owner(payload["owner_id"])
                    if payload.get("owner_id")
                    else None,
                },
            )
        if command == "LOG_ACTIVITY":
            kind = str(payload["activity_type"]).lower()
            task_type = ACTIVITY_TYPES.get(kind)
            if task_type is None:
                raise Rejected(
                    f"salesforce: activity type {payload['activity_type']!r} unknown; "
                    f"use one of {sorted(ACTIVITY_TYPES)}"
                )
            outcome = payload.get("outcome")
            is_call = kind == "call"
            return write(
                "Task",
                {
                    **task_key,
                    **who,
                    "Subject": f"{kind.capitalize()}: {outcome}" if outcome else kind.capitalize(),
                    "Type": task_type,
                    "Status": "Completed",
                    "ActivityDate": utc(payload["occurred_at"]).date().isoformat(),
                    "Description": payload.get("summary"),
                    "CallDurationInSeconds": payload.get("duration_seconds") if is_call else None,
                    "CallDisposition": outcome if is_call else None,
                },
            )
        if command == "ADD_NOTE":
            return write(
                "Task",
                {
                    **task_key,
                    **who,
                    "Subject": "Note",
                    "Status": "Completed",
                    "ActivityDate": utc(record["issued_at"]).date().isoformat(),
                    "Description": payload["body"],
                },
            )
        raise Rejected(f"salesforce: no mapping for command type {command!r}")

    def _owner(self, rep_id: str) -> str:
        if self.owner_ids is None:
            return rep_id
        owner = self.owner_ids.get(rep_id)
        if owner is None:
            raise Rejected(
                f"salesforce: rep {rep_id!r} has no Salesforce user id; add it to the owner map"
            )
        return owner

    # -- calls ---------------------------------------------------------------------------

    async def _upsert(self, sobject: str, writes: list[Write], outcomes: list[Outcome]) -> None:
        external_id = self.external_ids[sobject]
        what = f"salesforce {sobject} upsert by {external_id}"
        if self._session is None:
            self._session = aiohttp.ClientSession()
        answer = await request(
            self._session,
            "PATCH",
            f"{self.base_url}/composite/sobjects/{sobject}/{external_id}",
            what=what,
            timeout_s=self.timeout_s,
            json={"allOrNone": False, "records": [w.fields for w in writes]},
            headers=self._headers,
        )
        usage = _API_USAGE.search(answer.headers.get("Sforce-Limit-Info", ""))
        if usage:
            self.api_usage = (int(usage[1]), int(usage[2]))
        if answer.status == 400:  # the request as a whole was refused: every record in it
            reason = f"{what}: HTTP 400 {_error_codes(answer)}".rstrip()
            for w in writes:
                outcomes[w.index] = Rejected(reason, answer.summary())
            return
        if answer.status == 403 and "REQUEST_LIMIT_EXCEEDED" in _error_codes(answer):
            wait = retry_after_seconds(answer.headers.get("Retry-After"))
            raise Retryable(f"{what}: REQUEST_LIMIT_EXCEEDED", answer.summary(), wait)
        raise_for_status(answer, what)
        results = answer.json()
        if not isinstance(results, list) or len(results) != len(writes):
            # The effect is unknown; the upsert is idempotent, so trying again is safe.
            raise Retryable(f"{what}: expected {len(writes)} results", answer.summary())
        for write, result in zip(writes, results, strict=True):
            outcomes[write.index] = _outcome(what, write, result)


def _outcome(what: str, write: Write, result: Any) -> Outcome:
    if isinstance(result, dict) and result.get("success") is True:
        return None
    errors = result.get("errors") if isinstance(result, dict) else None
    errors = [e for e in errors or [] if isinstance(e, dict)]
    codes = {str(e.get("statusCode")) for e in errors}
    detail = "; ".join(
        f"{e.get('statusCode')}: {e.get('message')}"
        + (f" (fields: {', '.join(e['fields'])})" if e.get("fields") else "")
        for e in errors
    )
    reason = f"{what}: {detail or 'not confirmed'}"
    if codes & RETRYABLE_CODES or not errors:
        return Retryable(reason, str(result))
    return Rejected(reason, str(result))


def _error_codes(answer: Answer) -> str:
    """The ``errorCode``s of a whole-call error list, e.g. ``INVALID_FIELD``."""
    body = answer.json()
    items = body if isinstance(body, list) else []
    return ", ".join(str(e.get("errorCode")) for e in items if isinstance(e, dict))


def _amount(amount_minor: int | None, currency: str | None) -> float | None:
    amount = major_units(amount_minor, currency)
    return None if amount is None else float(amount)
