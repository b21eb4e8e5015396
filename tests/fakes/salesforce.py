"""A local Salesforce REST API (sObject Collections upsert) for the Salesforce writer's tests.

It speaks the documented shapes (see connectors/sinks/crm/salesforce.py for the pages):
bearer auth answered by ``INVALID_SESSION_ID``, ``PATCH /services/data/vXX.X/composite/
sobjects/{SObject}/{ExternalIdField}`` with ``{allOrNone, records}``, UpsertResults in input
order, whole-call errors as ``[{message, errorCode, fields}]`` and ``Sforce-Limit-Info`` on
every answer. Records are stored by external id, so a repeat upsert updates. It refuses
what Salesforce refuses: more than 200 records, records of another type, unknown fields,
a missing required field on create, a create-only field on update (``TaskSubtype``,
``Opportunity.ContactId``), a bad restricted-picklist value, an unknown owner, a ``Who``
reference to a contact that does not exist, a date that is not ``YYYY-MM-DD``. Its org is
set up as the writer's docstring says: Contact has the standard fields the writer uses and
the ``Switchboard_..__c`` custom fields listed there, and no other (``add_field`` creates
one more); WorkOrder has its standard fields, its ``Status`` picklist and the job fields
listed there, and references its contact through ``Contact`` by external id.

It also answers the SOQL the writer sends (``GET .../query?q=SELECT f, ... FROM Object
WHERE Field IN ('a', ...)``), updates by Id (``PATCH .../composite/sobjects``) and the SOAP
API's ``merge()`` (``POST /services/Soap/u/XX.X``, partner WSDL, ``SessionHeader``): each
MergeRequest is its own transaction; the records merged in are deleted (kept in
``deleted`` with ``IsDeleted`` and ``MasterRecordId``, the way ``queryAll`` shows them);
every record that looked up to one (``Task.WhoId``, ``Opportunity.ContactId``) now looks up
to the master; the master keeps its own field values (the call sets none); a deleted record
is out of reach of upserts by external id, ``Who`` references and queries. Call-wide
refusals are SOAP faults with HTTP 500."""

from __future__ import annotations

import itertools
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any
from xml.sax.saxutils import escape

import pytest
from aiohttp import web

from tests.fakes import FakeServer, Scripted, json_response

BATCH_LIMIT = 200
FIELDS: dict[str, set[str]] = {
    "Contact": {
        "Switchboard_Contact_Id__c", "Email", "Phone", "MobilePhone", "FirstName", "LastName",
        "Title", "Department", "LeadSource", "Description", "OwnerId",
        "MailingStreet", "MailingCity", "MailingState", "MailingPostalCode", "MailingCountry",
        # the custom fields connectors/sinks/crm/salesforce.py tells an org to create
        "Switchboard_Lead_Score__c", "Switchboard_Lead_Band__c", "Switchboard_Service__c",
        "Switchboard_Qualification__c", "Switchboard_Timezone__c", "Switchboard_Industry__c",
        "Switchboard_Company_Size__c", "Switchboard_Workflow_Tags__c",
        "Switchboard_Sla_Breach__c", "Switchboard_Sla_Breached_At__c",
        "Switchboard_Lifecycle_Stage__c", "Switchboard_Onboarding__c",
        "Switchboard_Annual_Revenue__c", "Switchboard_Seniority__c",
        "Switchboard_Service_Area__c", "Switchboard_Service_Branch__c",
        "Switchboard_Distance_Km__c",
    },
    "Opportunity": {
        "Switchboard_Deal_Id__c", "Name", "StageName", "CloseDate", "Amount", "Description",
        "OwnerId", "ContactId",
    },
    "Task": {
        "Switchboard_Id__c", "Subject", "ActivityDate", "Status", "Priority", "Description",
        "OwnerId", "Type", "TaskSubtype", "CallDurationInSeconds", "CallDisposition",
        "CallType", "Who", "WhoId",
    },
    # Field Service's WorkOrder, with the custom fields the writer tells an org to create.
    "WorkOrder": {
        "Switchboard_Job_Id__c", "Subject", "Description", "Status", "Priority", "StartDate",
        "EndDate", "Street", "City", "PostalCode", "OwnerId", "Contact", "ContactId",
        "Switchboard_Job_Type__c", "Switchboard_Service__c", "Switchboard_Amount__c",
        "Switchboard_Currency__c", "Switchboard_Technician__c", "Switchboard_Field_Job_Id__c",
        "Switchboard_Related_Job_Id__c",
    },
}  # fmt: skip
EXTERNAL_IDS = {
    "Contact": "Switchboard_Contact_Id__c",
    "Opportunity": "Switchboard_Deal_Id__c",
    "Task": "Switchboard_Id__c",
    "WorkOrder": "Switchboard_Job_Id__c",
}
REQUIRED_ON_CREATE = {
    "Contact": ["LastName"],
    "Opportunity": ["Name", "StageName", "CloseDate"],
    "Task": [],
    "WorkOrder": [],
}
CREATE_ONLY = {
    "Contact": set(),
    "Opportunity": {"ContactId"},
    "Task": {"TaskSubtype"},
    "WorkOrder": set(),
}
PICKLISTS = {
    ("Task", "Status"): {"Not Started", "In Progress", "Completed", "Waiting on someone else",
                         "Deferred"},
    ("Task", "Priority"): {"High", "Normal", "Low"},
    ("Task", "Type"): {"Call", "Email", "Meeting", "Other"},
    ("Task", "CallType"): {"Internal", "Inbound", "Outbound"},
    ("Task", "TaskSubtype"): {"Task", "Email", "ListEmail", "Cadence", "Call", "LinkedIn"},
    ("WorkOrder", "Status"): {"New", "In Progress", "On Hold", "Completed", "Closed",
                              "Cannot Complete", "Canceled"},
    ("Opportunity", "StageName"): {
        "Prospecting", "Qualification", "Needs Analysis", "Value Proposition",
        "Id. Decision Makers", "Perception Analysis", "Proposal/Price Quote",
        "Negotiation/Review", "Closed Won", "Closed Lost",
    },
}  # fmt: skip
DATES = {"ActivityDate", "CloseDate"}
DATETIMES = {"StartDate", "EndDate"}  # WorkOrder's: ISO 8601 date-times
NUMBERS = {"Amount", "CallDurationInSeconds", "Switchboard_Amount__c"}
KEY_PREFIXES = {"Contact": "003", "Opportunity": "006", "Task": "00T", "WorkOrder": "0WO"}
# Lookups to a Contact that merge() moves to the master record.
CONTACT_LOOKUPS = {"Task": "WhoId", "Opportunity": "ContactId", "WorkOrder": "ContactId"}
# Relationship fields that reference a Contact by its external id, and their lookup field.
CONTACT_RELATIONSHIPS = {"Task": ("Who", "WhoId"), "WorkOrder": ("Contact", "ContactId")}
MERGE_LIMIT = 200  # MergeRequests per merge() call
_PATH_VERSION = re.compile(r"v(\d+)\.0")
_SOQL = re.compile(
    r"SELECT\s+(?P<fields>[\w\s,]+?)\s+FROM\s+(?P<sobject>\w+)\s+"
    r"WHERE\s+(?P<field>\w+)\s+IN\s*\((?P<values>.*)\)\s*",
    re.IGNORECASE | re.DOTALL,
)
_SOQL_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")
_SOQL_ESCAPE = re.compile(r"\\(.)")
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


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
        self.deleted: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in FIELDS}
        self.fields = {sobject: set(names) for sobject, names in FIELDS.items()}
        self.api_used = 0
        self.api_limit = api_limit
        self._ids = itertools.count(1)
        self._rejects: dict[str, dict[str, Any]] = {}
        self._merge_faults: list[tuple[str, str]] = []
        self.queries: list[str] = []  # every SOQL query received, as sent

    # -- what tests look at -------------------------------------------------------------

    def find(self, sobject: str, field: str, value: Any) -> list[dict[str, Any]]:
        return [r for r in self.records[sobject].values() if r.get(field) == value]

    def add_field(self, sobject: str, name: str) -> None:
        """Create a custom field, as an org admin does in Setup."""
        self.fields[sobject].add(name)

    def reject(self, external_id: str, status_code: str, message: str) -> None:
        """Make every record with this external id fail with this per-record error."""
        self._rejects[external_id] = _error(status_code, message)

    def fault_next_merge(self, code: str, message: str) -> None:
        """Answer the next ``merge()`` call with this SOAP fault."""
        self._merge_faults.append((code, message))

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
        app.router.add_patch("/services/data/{version}/composite/sobjects", self._update)
        app.router.add_get("/services/data/{version}/query", self._query)
        app.router.add_post("/services/Soap/u/{version}", self._soap)

    def authorized(self, request: web.Request) -> web.StreamResponse | None:
        if request.path.startswith("/services/Soap/"):
            return None  # SOAP carries its session in the envelope: see _soap
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
            refused = _malformed(sobject, record, self.fields[sobject])
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
        relationship, lookup = CONTACT_RELATIONSHIPS.get(sobject, ("", ""))
        who = fields.pop(relationship, None) if relationship else None
        if who is not None:
            contact_field = EXTERNAL_IDS["Contact"]
            key = who.get(contact_field) if isinstance(who, dict) else None
            contacts = self.find("Contact", contact_field, key)
            if not contacts:
                return _error(
                    "INVALID_FIELD",
                    f"Foreign key external ID: {key} not found for field {contact_field} "
                    "in entity Contact",
                    [relationship],
                )
            fields[lookup] = contacts[0]["Id"]
        return existing, fields

    def _new_id(self, sobject: str) -> str:
        return f"{KEY_PREFIXES[sobject]}{next(self._ids):012d}AAA"

    async def _update(self, request: web.Request) -> web.Response:
        """sObject Collections update: records by Id, SaveResults in input order."""
        try:
            body = await request.json()
        except ValueError:
            return _refuse(400, "JSON_PARSER_ERROR", "Unexpected character in request body")
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records or len(records) > BATCH_LIMIT:
            return _refuse(400, "INVALID_INPUT", f"records must hold 1 to {BATCH_LIMIT} records")
        results: list[dict[str, Any]] = []
        for record in records:
            sobject = (
                (record.get("attributes") or {}).get("type") if isinstance(record, dict) else None
            )
            if sobject not in FIELDS:
                return _refuse(400, "INVALID_TYPE", "Must send a concrete entity type.")
            record_id = str(record.get("Id", ""))
            fields = {k: v for k, v in record.items() if k not in ("attributes", "Id")}
            refused = _malformed(
                sobject, {"attributes": record["attributes"], **fields}, self.fields[sobject]
            )
            if refused is not None:
                return refused
            if record_id not in self.records[sobject]:
                code = (
                    "ENTITY_IS_DELETED"
                    if record_id in self.deleted[sobject]
                    else ("INVALID_CROSS_REFERENCE_KEY")
                )
                results.append({"success": False, "errors": [_error(code, "invalid id")]})
                continue
            key = EXTERNAL_IDS[sobject]
            holders = self.find(sobject, key, fields.get(key)) if key in fields else []
            if any(h["Id"] != record_id for h in holders):
                duplicate = _error("DUPLICATE_VALUE", f"duplicate value found: {key}", [key])
                results.append({"success": False, "errors": [duplicate]})
                continue
            self.records[sobject][record_id].update(fields)
            results.append({"id": record_id, "success": True, "errors": []})
        return json_response(results)

    async def _query(self, request: web.Request) -> web.Response:
        """The SOQL the writer sends: ``SELECT f, ... FROM O WHERE F IN ('a', ...)``."""
        soql = request.query.get("q", "")
        self.queries.append(soql)
        match = _SOQL.fullmatch(soql)
        if match is None:
            return _refuse(400, "MALFORMED_QUERY", f"unexpected token in: {soql[:80]}")
        sobject, field = match["sobject"], match["field"]
        fields = [f.strip() for f in match["fields"].split(",")]
        if sobject not in FIELDS:
            return _refuse(400, "INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
        for name in [*fields, field]:
            if name != "Id" and name not in self.fields[sobject]:
                return _refuse(
                    400, "INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'."
                )
        values = {_SOQL_ESCAPE.sub(r"\1", v) for v in _SOQL_STRING.findall(match["values"])}
        version = request.match_info["version"]
        rows = [
            {
                "attributes": {
                    "type": sobject,
                    "url": f"/services/data/{version}/sobjects/{sobject}/{r['Id']}",
                },
                **{name: r.get(name) for name in fields},
            }
            for r in self.records[sobject].values()
            if str(r.get(field)) in values
        ]
        return json_response({"totalSize": len(rows), "done": True, "records": rows})

    async def _soap(self, request: web.Request) -> web.Response:
        """The SOAP API, as far as ``merge()`` of Contacts goes."""
        try:
            root = ET.fromstring(await request.text())
        except ET.ParseError:
            return _fault("INVALID_XML", "The request is not well-formed XML", "soapenv:Client")
        if "SOAPAction" not in request.headers:
            return _fault("INVALID_SOAP_HEADER", "Missing SOAPAction header", "soapenv:Client")
        session = next((e.text for e in root.iter() if _local(e.tag) == "sessionId"), None)
        if session != self.token:
            return _fault(
                "INVALID_SESSION_ID", "Invalid Session ID found in SessionHeader: Illegal Session"
            )
        self.api_used += 1
        if self._merge_faults:
            return _fault(*self._merge_faults.pop(0))
        call = next((e for e in root.iter() if _local(e.tag) == "merge"), None)
        if call is None:
            return _fault("UNKNOWN_EXCEPTION", "only merge() is implemented here")
        requests = [e for e in call if _local(e.tag) == "request"]
        if not requests or len(requests) > MERGE_LIMIT:
            return _fault(
                "LIMIT_EXCEEDED", f"merge() takes 1 to {MERGE_LIMIT} MergeRequests a call"
            )
        results = [self._merge_one(r) for r in requests]
        return web.Response(
            status=200,
            text=_envelope("<mergeResponse>" + "".join(results) + "</mergeResponse>"),
            content_type="text/xml",
        )

    def _merge_one(self, merge_request: ET.Element) -> str:
        """One MergeRequest, in its own transaction: its MergeResult as XML."""
        master = next((e for e in merge_request if _local(e.tag) == "masterRecord"), None)
        parts = (
            {_local(e.tag): (e.text or "").strip() for e in master} if master is not None else {}
        )
        others = [
            (e.text or "").strip() for e in merge_request if _local(e.tag) == "recordToMergeIds"
        ]
        sobject, master_id = parts.get("type", ""), parts.get("Id", "")
        if sobject != "Contact":
            return _merge_failure("INVALID_TYPE", f"Cannot merge records of type {sobject!r}")
        if not 1 <= len(others) <= 2:
            return _merge_failure("INVALID_OPERATION", "Merge 1 or 2 records into the master")
        for record_id in [master_id, *others]:
            if record_id in self.deleted[sobject]:
                return _merge_failure("ENTITY_IS_DELETED", f"entity is deleted: {record_id}")
            if record_id not in self.records[sobject]:
                return _merge_failure("INVALID_CROSS_REFERENCE_KEY", f"invalid id: {record_id}")
        if master_id in others:
            return _merge_failure("INVALID_ID_FIELD", "The master record cannot be merged")
        updated = []
        for other in others:
            gone = self.records[sobject].pop(other)
            self.deleted[sobject][other] = {**gone, "IsDeleted": True, "MasterRecordId": master_id}
            for child_type, lookup in CONTACT_LOOKUPS.items():
                for child in self.records[child_type].values():
                    if child.get(lookup) == other:
                        child[lookup] = master_id
                        updated.append(child["Id"])
        return (
            f"<result><id>{master_id}</id>"
            + "".join(f"<mergedRecordIds>{o}</mergedRecordIds>" for o in others)
            + "<success>true</success>"
            + "".join(f"<updatedRelatedIds>{u}</updatedRelatedIds>" for u in updated)
            + "</result>"
        )


def _malformed(sobject: str, record: Any, fields: set[str]) -> web.Response | None:
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
        if name not in fields:
            return _refuse(
                400, "INVALID_FIELD", f"No such column '{name}' on sobject of type {sobject}"
            )
        if name in DATES and not _is_date(value):
            return _refuse(
                400,
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of date from VALUE_STRING value {value}",
            )
        if name in DATETIMES and not _is_datetime(value):
            return _refuse(
                400,
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of datetime from VALUE_STRING value {value}",
            )
        if name in NUMBERS and not isinstance(value, int | float):
            return _refuse(
                400,
                "JSON_PARSER_ERROR",
                f"Cannot deserialize instance of double from VALUE_STRING value {value}",
            )
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _envelope(body: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_ENV}" xmlns="urn:partner.soap.sforce.com" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f"<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )


def _fault(code: str, message: str, faultcode: str = "") -> web.Response:
    """A call-wide SOAP refusal: HTTP 500 with a Fault naming the exception code."""
    text = escape(f"{code}: {message}")
    detail = (
        f'<detail><sf:UnexpectedErrorFault xsi:type="sf:UnexpectedErrorFault" '
        f'xmlns:sf="urn:fault.partner.soap.sforce.com"><sf:exceptionCode>{code}'
        f"</sf:exceptionCode><sf:exceptionMessage>{escape(message)}</sf:exceptionMessage>"
        "</sf:UnexpectedErrorFault></detail>"
    )
    fault = (
        f'<soapenv:Fault xmlns:sf="urn:fault.partner.soap.sforce.com">'
        f"<faultcode>{faultcode or 'sf:' + code}</faultcode>"
        f"<faultstring>{text}</faultstring>{detail}</soapenv:Fault>"
    )
    return web.Response(status=500, text=_envelope(fault), content_type="text/xml")


def _merge_failure(code: str, message: str) -> str:
    return (
        f"<result><errors><message>{escape(message)}</message><statusCode>{code}</statusCode>"
        '</errors><id xsi:nil="true"/><success>false</success></result>'
    )


def _is_date(value: Any) -> bool:
    try:
        date.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return len(value) == 10


def _is_datetime(value: Any) -> bool:
    """Salesforce's date-time: ISO 8601 with a time and an offset (or Z)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (AttributeError, TypeError, ValueError):
        return False
    return "T" in value and parsed.tzinfo is not None


def _refuse(status: int, error_code: str, message: str) -> web.Response:
    return web.Response(
        status=status, text=sf_errors(error_code, message), content_type="application/json"
    )


@pytest.fixture
def fake_salesforce() -> Iterator[FakeSalesforce]:
    """A running FakeSalesforce; list ``tests.fakes.salesforce`` in ``pytest_plugins``."""
    with FakeSalesforce.running() as fake:
        yield fake
