"""A local Salesforce REST API (sObject Collections upsert) for the Salesforce writer's tests.

It speaks the documented shapes (see connectors/sinks/crm/salesforce.py for the pages):
bearer auth answered by ``INVALID_SESSION_ID``, ``PATCH /services/data/vXX.X/composite/
sobjects/{SObject}/{ExternalIdField}`` with ``{allOrNone, records}``, UpsertResults in input
order, whole-call errors as ``[{message, errorCode, fields}]`` and ``Sforce-Limit-Info`` on
every answer. Records are stored by external id, so a repeat upsert updates. It refuses
what Salesforce refuses: more than 200 records, records of another type, unknown fields,
a missing required field on create, a create-only field on update (``TaskSubtype``,
``Opportunity.ContactId``), a bad restricted-picklist value, an unknown owner, a ``Who``
reference to a contact that does not exist, a date that is not ``YYYY-MM-DD``."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from aiohttp import web

from tests.fakes import FakeServer, Scripted, json_response

BATCH_LIMIT = 200
FIELDS: dict[str, set[str]] = {
    "Contact": {
        "Switchboard_Contact_Id__c", "Email", "Phone", "MobilePhone", "FirstName", "LastName",
        "Title", "Department", "LeadSource", "Description", "OwnerId",
    },
    "Opportunity": {
        "Switchboard_Deal_Id__c", "Name", "StageName", "CloseDate", "Amount", "Description",
        "OwnerId", "ContactId",
    },
    "Task": {
        "Switchboard_Id__c", "Subject", "ActivityDate", "Status", "Priority", "Description",
        "OwnerId", "Type", "TaskSubtype", "CallDurationInSeconds", "CallDisposition", "Who",
        "WhoId",
    },
}  # fmt: skip
EXTERNAL_IDS = {
    "Contact": "Switchboard_Contact_Id__c",
    "Opportunity": "Switchboard_Deal_Id__c",
    "Task": "Switchboard_Id__c",
}
REQUIRED_ON_CREATE = {
    "Contact": ["LastName"],
    "Opportunity": ["Name", "StageName", "CloseDate"],
    "Task": [],
}
CREATE_ONLY = {"Contact": set(), "Opportunity": {"ContactId"}, "Task": {"TaskSubtype"}}
PICKLISTS = {
    ("Task", "Status"): {"Not Started", "In Progress", "Completed", "Waiting on someone else",
                         "Deferred"},
    ("Task", "Priority"): {"High", "Normal", "Low"},
    ("Task", "Type"): {"Call", "Email", "Meeting", "Other"},
    ("Task", "TaskSubtype"): {"Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"},
    ("Opportunity", "StageName"): {
        "Prospecting", "Qualification", "Needs Analysis", "Value Proposition",
        "Id. Decision Makers", "Perception Analysis", "Proposal/Price Quote",
        "Negotiation/Review", "Closed Won", "Closed Lost",
    },
}  # fmt: skip
DATES = {"ActivityDate", "CloseDate"}
NUMBERS = {"Amount", "CallDurationInSeconds"}
KEY_PREFIXES = {"Contact": "003", "Opportunity": "006", "Task": "00T"}
_PATH_VERSION = re.compile(r"v(\d+)\.0")


def sf_errors(error_code: str, message: str, fields: list[str] | None = None) -> str:
    return json.dumps([{"message": message, "errorCode": error_code, "fields": fields or []}])


def _error(status_code: str, message: str, fields: list[str] | None = None) -> dict[str, Any]:
    return {"statusCode": status_code, "message": message, "fields": fields or []}


class FakeSalesforce(FakeServer):
    """Salesforce on loopback. ``records[sobject][id]`` holds each record's fields."""

    def __init__(
        self,
        token: str = "00Dxx0000000001!test",
        users: set[str] | None = None,
        api_limit: int = 15000,
    ) -> None:
        super().__init__()
        self.token = token
        self.users = users if users is not None else {"005000000000001AAA", "005000000000002AAA"}
        self.records: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in FIELDS}
        self.api_used = 0
        self.api_limit = api_limit
        self._ids = itertools.count(1)
        self._rejects: dict[str, dict[str, Any]] = {}

    # -- what tests look at -------------------------------------------------------------

    def find(self, sobject: str, field: str, value: Any) -> list[dict[str, Any]]:
        return [r for r in self.records[sobject].values() if r.get(field) == value]

    def reject(self, external_id: str, status_code: str, message: str) -> None:
        """Make every record with this external id fail with this per-record error."""
        self._rejects[external_id] = _error(status_code, message)

    def request_limit_exceeded(self) -> None:
        self.fail_next(
            Scripted(403, sf_errors("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."))
        )

    def unavailable(self, retry_after: str | None = "2") -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = sf_errors("SERVER_UNAVAILABLE", "Server unavailable, please retry later")
        self.fail_next(Scripted(503, body, headers))

    # -- protocol -----------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_patch(
            "/services/data/{version}/composite/sobjects/{sobject}/{field}", self._upsert
        )

    def authorized(self, request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("Authorization") == f"Bearer {self.token}":
            self.api_used += 1
            return None
        return web.Response(
            status=401,
            text=sf_errors("INVALID_SESSION_ID", "Session expired or invalid"),
            content_type="application/json",
        )

    def decorate(self, response: web.StreamResponse) -> None:
        response.headers.setdefault(
            "Sforce-Limit-Info", f"api-usage={self.api_used}/{self.api_limit}"
        )

    async def _upsert(self, request: web.Request) -> web.Response:
        version, sobject, field = (request.match_info[k] for k in ("version", "sobject", "field"))
        match = _PATH_VERSION.fullmatch(version)
        if match is None or int(match[1]) < 46 or sobject not in FIELDS:
            return _refuse(404, "NOT_FOUND", "The requested resource does not exist")
        if EXTERNAL_IDS[sobject] != field:
            return _refuse(
                404,
                "NOT_FOUND",
                f"Provided external ID field does not exist or is not accessible: {field}",
            )
        try:
            body = await request.json()
        except ValueError:
            return _refuse(400, "JSON_PARSER_ERROR", "Unexpected character in request body")
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records:
            return _refuse(400, "INVALID_INPUT", "records is required and must not be empty")
        if len(records) > BATCH_LIMIT:
            return _refuse(
                400,
                "EXCEEDED_ID_LIMIT",
                f"Record limit reached. Cannot submit more than {BATCH_LIMIT} records "
                "into this call",
            )
        for record in records:
            refused = _malformed(sobject, record)
            if refused is not None:
                return refused
        values = [str(r.get(field)) for r in records]
        planned: list[dict[str, Any] | tuple[str | None, dict[str, Any]]] = []
        for record, value in zip(records, values, strict=True):
            if values.count(value) > 1:
                planned.append(
                    _error("DUPLICATE_VALUE", f"Duplicate external id specified: {value}", [field])
                )
            else:
                planned.append(self._plan(sobject, field, record))
        failed = any(isinstance(p, dict) for p in planned)
        results = []
        for plan in planned:
            if isinstance(plan, dict):
                results.append({"success": False, "errors": [plan]})
            elif failed and body.get("allOrNone") is True:
                rolled = _error(
                    "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                    "Record rolled back because not all records were valid and the request "
                    "was using AllOrNone header",
                )
                results.append({"success": False, "errors": [rolled]})
            else:
                existing, fields = plan
                record_id = existing or self._new_id(sobject)
                self.records[sobject].setdefault(record_id, {"Id": record_id}).update(fields)
                results.append(
                    {"id": record_id, "success": True, "errors": [], "created": existing is None}
                )
        return json_response(results)

    def _plan(
        self, sobject: str, field: str, record: dict[str, Any]
    ) -> dict[str, Any] | tuple[str | None, dict[str, Any]]:
        """(existing id or None, fields to store), or the per-record error."""
        value = record.get(field)
        if value in (None, ""):
            return _error("MISSING_ARGUMENT", f"{field} not specified", [field])
        if str(value) in self._rejects:
            return self._rejects[str(value)]
        fields = {k: v for k, v in record.items() if k != "attributes"}
        existing = next(iter(self.find(sobject, field, value)), {}).get("Id")
        if existing is None:
            missing = [f for f in REQUIRED_ON_CREATE[sobject] if fields.get(f) in (None, "")]
            if missing:
                return _error(
                    "REQUIRED_FIELD_MISSING", f"Required fields are missing: {missing}", missing
                )
        else:
            create_only = sorted(CREATE_ONLY[sobject] & set(fields))
            if create_only:
                return _error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {', '.join(create_only)}. Please check "
                    "the security settings of this field and verify that it is read/write "
                    "for your profile or permission set.",
                    create_only,
                )
        for name, item in fields.items():
            allowed = PICKLISTS.get((sobject, name))
            if allowed is not None and item not in allowed:
                return _error(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{name}: bad value for restricted picklist field: {item}",
                    [name],
                )
        owner = fields.get("OwnerId")
        if owner is not None and owner not in self.users:
            return _error("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", ["OwnerId"])
        who = fields.pop("Who", None)
        if who is not None:
            contact_field = EXTERNAL_IDS["Contact"]
            key = who.get(contact_field) if isinstance(who, dict) else None
            contacts = self.find("Contact", contact_field, key)
            if not contacts:
                return _error(
                    "INVALID_FIELD",
                    f"Foreign key external ID: {key} not found for field {contact_field} "
                    "in entity Contact",
                    ["Who"],
                )
            fields["WhoId"] = contacts[0]["Id"]
        return existing, fields

    def _new_id(self, sobject: str) -> str:
        return f"{KEY_PREFIXES[sobject]}{next(self._ids):012d}AAA"


def _malformed(sobject: str, record: Any) -> web.Response | None:
    """A whole-call refusal for a record Salesforce cannot deserialize."""
    if not isinstance(record, dict):
        return _refuse(400, "JSON_PARSER_ERROR", "Each record must be a JSON object")
    record_type = (record.get("attributes") or {}).get("type")
    if record_type is None:
        return _refuse(400, "INVALID_TYPE", "Must send a concrete entity type.")
    if record_type != sobject:
        return _refuse(
            400,
            "INVALID_TYPE",
            f"The list can contain objects only of the type indicated in the request URI "
            f"({sobject}), not {record_type}",
        )
    for name, value in record.items():
        if name == "attributes":
            continue
        if name not in FIELDS[sobject]:
            return _refuse(
                400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}"
            )
        if name in DATES and not _is_date(value):
            return _refuse(
                400,
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of date from VALUE_STRING value {value}",
            )
        if name in NUMBERS and not isinstance(value, int | float):
            return _refuse(
                400,
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of double from VALUE_STRING value {value}",
            )
    return None


def _is_date(value: Any) -> bool:
    try:
        date.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return len(value) == 10


def _refuse(status: int, error_code: str, message: str) -> web.Response:
    return web.Response(
        status=status, text=sf_errors(error_code, message), content_type="application/json"
    )


@pytest.fixture
def fake_salesforce() -> Iterator[FakeSalesforce]:
    """A running FakeSalesforce; list ``tests.fakes.salesforce`` in ``pytest_plugins``."""
    with FakeSalesforce.running() as fake:
        yield fake
