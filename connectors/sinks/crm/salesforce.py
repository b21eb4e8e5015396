"""The Salesforce CRM writer: CRM commands become sObject Collections upserts by external id.

Every write is an upsert on an external-id field, so a redelivered command finds the record
it made the first time and changes nothing (invariant 2):

- Contact by ``Switchboard_Contact_Id__c`` (UPSERT_CONTACT, SET_OWNER);
- Opportunity by ``Switchboard_Deal_Id__c`` (CREATE_DEAL, UPDATE_DEAL_STAGE; the stage
  update sets ``Amount`` too when it carries one). Opportunities are not tied to a contact
  (``Opportunity.ContactId`` is create-only, so the update half of a redelivered upsert
  would be refused): a deal is found by its own id, whichever contact a command names.
  A CREATE_DEAL of an Opportunity that exists changes nothing, as in the SQL store (a
  merge makes its adopted deals again, so a create from before it may come after a stage
  change): the call's creates are looked up first (one SOQL query), and one deal's
  second create in a call shares the first's outcome;
- WorkOrder by ``Switchboard_Job_Id__c`` (UPSERT_JOB: a payment's job, the field system's
  status changes, a scheduled follow-up inspection), tied to its contact through the
  ``Contact`` relationship by the contact's external id. ``Status`` takes the default
  picklist's values (``WORK_ORDER_STATUSES``); ``Subject``, ``StartDate`` (scheduled),
  ``EndDate`` (completed) and ``Street`` are standard fields, and the org creates
  ``Switchboard_Job_Type__c``, ``Switchboard_Service__c``, ``Switchboard_Technician__c``,
  ``Switchboard_Field_Job_Id__c``, ``Switchboard_Related_Job_Id__c``,
  ``Switchboard_Currency__c`` (Text) and ``Switchboard_Amount__c`` (Number, 2 decimals:
  WorkOrder's own totals come from line items);
- Task by ``Switchboard_Id__c`` holding the command id (CREATE_TASK; LOG_ACTIVITY as a
  completed Task whose ``Type`` is Call/Email/Meeting/Other -- SMS, forms and payments are
  Other, with a Subject that says what they were; ADD_NOTE as a completed Task "Note",
  because Note and ContentNote cannot carry an external-id field).

UPSERT_CONTACT's ``properties`` use Switchboard's own names; each is written to a Contact
field (``CONTACT_FIELDS`` and ``contact_field``). The address goes to the standard mailing
address fields:

    address -> MailingStreet        postcode -> MailingPostalCode
    city -> MailingCity             country -> MailingCountry
    region -> MailingState          lifecyclestage -> Switchboard_Lifecycle_Stage__c

Every other key becomes the custom field ``Switchboard_<Words>__c``: the key's runs of
letters and digits, each with its first letter upper-cased, joined by single underscores
(``lead_score`` -> ``Switchboard_Lead_Score__c``). So the name starts with a letter, has no
double underscore and does not end with one, as Salesforce requires; a key whose name would
be longer than Salesforce's 40 characters (before ``__c``) is refused. The org must create
the fields (Text, 255) like ``Switchboard_Contact_Id__c``: today
``Switchboard_Lead_Score__c``, ``Switchboard_Lead_Band__c``, ``Switchboard_Service__c``,
``Switchboard_Qualification__c``, ``Switchboard_Timezone__c``, ``Switchboard_Industry__c``,
``Switchboard_Company_Size__c``, ``Switchboard_Workflow_Tags__c``,
``Switchboard_Sla_Breach__c``, ``Switchboard_Sla_Breached_At__c``,
``Switchboard_Lifecycle_Stage__c``, from enrichment and the service area
``Switchboard_Annual_Revenue__c``, ``Switchboard_Seniority__c``,
``Switchboard_Service_Area__c``, ``Switchboard_Service_Branch__c``,
``Switchboard_Distance_Km__c`` and, from the bundled payment-onboarding workflow,
``Switchboard_Onboarding__c``; a key a workflow adds tomorrow follows the same rule.
Contact has no industry, size or time zone field (Industry and NumberOfEmployees belong to
Account and Lead). A key already spelled as a Salesforce field name (``LeadSource``,
``Shoe_Size__c``: a capital first, or ``__c`` last) is passed as it is. The command's
``company`` is not sent: Contact has no company field (a contact's company is its Account,
which the writer does not manage). With State and Country/Territory Picklists on,
MailingState and MailingCountry take only the names the org's picklists hold.

A Task reaches its contact through the polymorphic ``Who`` relationship by the contact's
external id, so no id lookup is needed. ``TaskSubtype`` is deliberately not sent: it is
create-only, so the update half of a redelivered upsert would be refused.

MERGE_CONTACTS uses Salesforce's own merge, the SOAP API's ``merge()`` call (the REST API
has none for Contact): it deletes the retired contact and makes the survivor the parent of
everything that was the retired contact's -- Tasks and Events, and whatever else an org
relates to contacts (cases, opportunity contact roles, campaign members, files), which
re-parenting a few objects over REST would leave behind. The deleted record keeps
``MasterRecordId`` only while it sits in the recycle bin, so the writer keeps the alias
itself: a completed Task keyed ``Switchboard_Id__c = merged-contact:{retired id}`` whose
``Who`` is the survivor, upserted *before* the merge call; every later merge re-parents it
with the rest. Before writing a contact or a task, the writer queries those Tasks for the
batch's contact ids (one SOQL query; one more only when one is found) and sends a retired
id's commands to the survivor instead, so a command issued before the merge neither
recreates the retired contact nor is refused. A merge is idempotent: replayed, the retired
contact is no longer found and only the alias Task is upserted again. A retired id unknown
to Salesforce gets the alias Task alone; when only the retired contact exists, it takes the
survivor's id (an sObject Collections update) and becomes the survivor.

Docs followed (developer.salesforce.com/docs):

- sObject Collections upsert, ``PATCH /services/data/vXX.X/composite/sobjects/{SObject}/
  {ExternalIdField}`` with ``{allOrNone, records[{attributes: {type}, ...}]}``, at most 200
  records of the URI's type, answered with UpsertResults ``{id, success, errors[{statusCode,
  message, fields}], created}`` in input order; update by Id ``PATCH /composite/sobjects``
  answered with SaveResults: /platform/api-rest/guide/resources-composite-sobjects-
  collections-upsert.html and -update.html
- SOQL ``GET /services/data/vXX.X/query?q=`` answered ``{totalSize, done, nextRecordsUrl,
  records[{attributes, ...}]}``: /atlas.en-us.api_rest.meta/api_rest/resources_query.htm
- ``merge()`` at ``POST /services/Soap/u/XX.X`` (partner WSDL) with a ``SessionHeader``:
  up to 200 MergeRequests ``{masterRecord, recordToMergeIds}`` a call, each its own
  transaction, answered with MergeResults ``{id, mergedRecordIds, updatedRelatedIds,
  success, errors[{statusCode, message, fields}]}``; external ids cannot be used with it:
  /atlas.en-us.api.meta/api/sforce_api_calls_merge.htm; call-wide errors are SOAP faults
  (HTTP 500, ``faultcode`` ``sf:INVALID_SESSION_ID``, ``sf:REQUEST_LIMIT_EXCEEDED``...)
- whole-call errors as ``[{message, errorCode, fields}]``, 401 ``INVALID_SESSION_ID``,
  403 ``REQUEST_LIMIT_EXCEEDED``, 503 with Retry-After: /atlas.en-us.api_rest.meta/api_rest/
  errorcodes.htm
- ``Sforce-Limit-Info: api-usage=N/M``: /atlas.en-us.api_rest.meta/api_rest/
  headers_api_usage.htm
- Contact, Opportunity (Name, StageName, CloseDate required; Amount) and Task fields
  (``Type``, ``CallType`` Inbound/Outbound/Internal, ``CallDurationInSeconds``,
  ``CallDisposition``): /platform/object-reference/references/standard-objects/
  object-task.html and siblings."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.http import Answer, raise_for_status, request, retry_after_seconds
from connectors.sinks.crm.values import (
    Merge,
    iso_currency,
    major_units,
    merge_action,
    merge_of,
    merge_rounds,
    task_priority,
    utc,
    without_existing_deals,
)

BATCH_LIMIT = 200  # records per sObject Collections call, merge requests per merge() call
QUERY_CHUNK = 100  # ids per SOQL IN list (the query travels in the URL)
# Per-record status codes worth another try: the row was locked or the org was busy.
RETRYABLE_CODES = {"UNABLE_TO_LOCK_ROW", "REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE"}
# merge() faults worth another try; any other fault refuses the merges it carried.
RETRYABLE_FAULTS = {"REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "UNABLE_TO_LOCK_ROW"}
# Opportunity.CloseDate is required and a command carries none: expect a close this far out.
CLOSE_AFTER = timedelta(days=30)
TASK_PRIORITIES = {"low": "Low", "normal": "Normal", "medium": "Normal", "high": "High"}
ACTIVITY_TYPES = {
    "call": "Call",
    "email": "Email",
    "meeting": "Meeting",
    "sms": "Other",
    "form": "Other",
    "payment": "Other",
}
# A logged activity's Subject when the command has no title (then ": outcome" follows).
ACTIVITY_SUBJECTS = {
    "call": "Call",
    "email": "Email",
    "meeting": "Meeting",
    "sms": "SMS",
    "form": "Form submission",
    "payment": "Payment",
}
CALL_TYPES = {"inbound": "Inbound", "outbound": "Outbound"}
# A job's status -> WorkOrder.Status (the default picklist). A job paid for and not yet
# booked, and one booked, are both New to the field team.
WORK_ORDER_STATUSES = {
    "pending": "New",
    "scheduled": "New",
    "dispatched": "New",
    "in_progress": "In Progress",
    "on_hold": "On Hold",
    "completed": "Completed",
    "closed": "Closed",
    "cannot_complete": "Cannot Complete",
    "cancelled": "Canceled",
    "canceled": "Canceled",
}
# The sObjects whose record reaches a contact (merges send them to the survivor).
REACHES_CONTACT = ("Contact", "Task", "WorkOrder")
# UPSERT_CONTACT's Switchboard property names -> Contact fields. Any other key is written to
# the custom field CUSTOM_PREFIX + Words + "__c" (contact_field).
CONTACT_FIELDS = {
    "address": "MailingStreet",
    "city": "MailingCity",
    "region": "MailingState",
    "postcode": "MailingPostalCode",
    "country": "MailingCountry",
    "lifecyclestage": "Switchboard_Lifecycle_Stage__c",
}
CUSTOM_PREFIX = "Switchboard_"
CUSTOM_NAME_LIMIT = 40  # characters in a custom field's name, before "__c"
SUBJECT_LENGTH = 255  # Task.Subject
# The Task that keeps a merged-away Switchboard contact id pointing at its survivor.
ALIAS_PREFIX = "merged-contact:"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "urn:partner.soap.sforce.com"
SOBJECT = "urn:sobject.partner.soap.sforce.com"
_API_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")
_WORD = re.compile(r"[A-Za-z0-9]+")
# A key spelled as a Salesforce field name already: LeadSource, Shoe_Size__c.
_FIELD_NAME = re.compile(
    r"[A-Z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*|[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*__c"
)


@dataclass(frozen=True)
class Write:
    """One record as one sObject in a collection upsert."""

    index: int
    sobject: str
    fields: dict[str, Any]
    contact_id: str | None = None  # the Switchboard contact it reaches, if any


class _Refused(Rejected):
    """A query Salesforce refused as a whole (HTTP 400): the records that needed it fail."""


class SalesforceWriter:
    """Destination ``salesforce``: one collection upsert per sObject type in the batch."""

    name = "salesforce"
    max_batch = BATCH_LIMIT
    in_order = False

    def __init__(
        self,
        instance_url: str,
        token: str,
        *,
        api_version: str = "v66.0",
        contact_id_field: str = "Switchboard_Contact_Id__c",
        deal_id_field: str = "Switchboard_Deal_Id__c",
        activity_id_field: str = "Switchboard_Id__c",
        job_id_field: str = "Switchboard_Job_Id__c",
        owner_ids: Mapping[str, str] | None = None,
        stage_names: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        """``owner_ids`` maps Switchboard rep ids to Salesforce User ids (005...); without
        it rep ids are taken to be User ids already. ``stage_names`` maps pipeline stages to
        the org's StageName picklist values; an unmapped stage goes as it is. A ``session``
        passed in stays open."""
        self.instance_url = instance_url.rstrip("/")
        self.base_url = f"{self.instance_url}/services/data/{api_version}"
        self.soap_url = f"{self.instance_url}/services/Soap/u/{api_version.lstrip('v')}"
        self.external_ids = {
            "Contact": contact_id_field,
            "Opportunity": deal_id_field,
            "Task": activity_id_field,
            "WorkOrder": job_id_field,
        }
        self.owner_ids = owner_ids
        self.stage_names = dict(stage_names or {})
        self.timeout_s = timeout_s
        self._token = token
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._own_session = session is None
        self.api_usage: tuple[int, int] | None = None  # (used, limit) from Sforce-Limit-Info

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(records)
        writes: list[Write] = []
        merges: list[Merge] = []
        for index, record in enumerate(records):
            try:
                if record["command_type"] == "MERGE_CONTACTS":
                    merges.append(merge_of(index, record, "salesforce"))
                else:
                    writes.append(self._write_for(index, record))
            except Rejected as exc:
                outcomes[index] = exc
        if merges:  # first: a command for a contact they retire then lands on the survivor
            await self._merge(merges, outcomes)
        if any(w.contact_id is not None for w in writes):
            writes = await self._redirect(records, writes, outcomes)
        writes, repeats = await without_existing_deals(
            records, writes, outcomes, lambda creates: self._deals_found(creates, outcomes)
        )
        groups: dict[str, list[Write]] = {}
        for write in writes:
            groups.setdefault(write.sobject, []).append(write)
        for sobject, group in groups.items():
            for start in range(0, len(group), BATCH_LIMIT):
                await self._upsert(sobject, group[start : start + BATCH_LIMIT], outcomes)
        for index, first in repeats.items():  # one create made the deal for both
            outcomes[index] = outcomes[first]
        return outcomes

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- commands -> sObjects --------------------------------------------------------------

    def _write_for(
        self, index: int, record: Mapping[str, Any], survivor: str | None = None
    ) -> Write:
        """The record as an sObject; ``survivor`` is the contact it goes to instead of its
        own, when a merge retired its contact."""
        command = record["command_type"]
        payload: Mapping[str, Any] = record["payload"]
        contact_id: str = record["contact_id"]
        contact_key = {self.external_ids["Contact"]: survivor or contact_id}
        who = {"Who": {"attributes": {"type": "Contact"}, **contact_key}}
        task_key = {self.external_ids["Task"]: record["command_id"]}

        def write(sobject: str, fields: dict[str, Any]) -> Write:
            kept = {k: v for k, v in fields.items() if v is not None}
            reaches = contact_id if sobject in REACHES_CONTACT else None
            return Write(index, sobject, {"attributes": {"type": sobject}, **kept}, reaches)

        if command == "UPSERT_CONTACT":
            return write(
                "Contact",
                {
                    **contact_fields(payload.get("properties") or {}),
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
                    "StageName": self.stage_names.get(payload["stage"], payload["stage"]),
                    "CloseDate": close,
                    "Amount": _amount(payload.get("amount_minor"), payload.get("currency")),
                },
            )
        if command == "UPDATE_DEAL_STAGE":
            amount_minor = payload.get("amount_minor")
            amount = None  # without one, the deal keeps the amount it has
            if amount_minor is not None:
                amount = _amount(amount_minor, iso_currency(payload.get("currency"), "salesforce"))
            return write(
                "Opportunity",
                {
                    self.external_ids["Opportunity"]: payload["deal_id"],
                    "StageName": self.stage_names.get(payload["stage"], payload["stage"]),
                    "Amount": amount,
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
            return write("Task", {**task_key, **who, **self._activity(payload)})
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
        if command == "UPSERT_JOB":
            return write("WorkOrder", self._work_order(payload, contact_key))
        raise Rejected(f"salesforce: no mapping for command type {command!r}")

    def _work_order(
        self, payload: Mapping[str, Any], contact_key: dict[str, str]
    ) -> dict[str, Any]:
        """UPSERT_JOB -> a WorkOrder's fields; a null field is not sent, so it keeps its
        value (a status change carries no amount)."""
        status = str(payload["status"])
        mapped = WORK_ORDER_STATUSES.get(status)
        if mapped is None:
            raise Rejected(
                f"salesforce: payload.status: {status[:50]!r} has no WorkOrder Status; "
                f"known: {', '.join(sorted(WORK_ORDER_STATUSES))}"
            )
        amount_minor = payload.get("amount_minor")
        currency = payload.get("currency")
        if amount_minor is not None:
            currency = iso_currency(currency, "salesforce")
        return {
            self.external_ids["WorkOrder"]: payload["job_id"],
            "Contact": {"attributes": {"type": "Contact"}, **contact_key},
            "Subject": _clip(payload.get("title"), SUBJECT_LENGTH),
            "Status": mapped,
            "StartDate": _datetime(payload.get("scheduled_for")),
            "EndDate": _datetime(payload.get("completed_at")),
            "Street": payload.get("address"),
            "Switchboard_Job_Type__c": payload["job_type"],
            "Switchboard_Service__c": payload.get("service"),
            "Switchboard_Amount__c": _amount(amount_minor, currency),
            "Switchboard_Currency__c": currency if amount_minor is not None else None,
            "Switchboard_Technician__c": payload.get("technician"),
            "Switchboard_Field_Job_Id__c": payload.get("external_id"),
            "Switchboard_Related_Job_Id__c": payload.get("related_job_id"),
        }

    def _activity(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """LOG_ACTIVITY -> the fields of a completed Task."""
        kind = str(payload["activity_type"]).lower()
        task_type = ACTIVITY_TYPES.get(kind)
        if task_type is None:
            raise Rejected(
                f"salesforce: activity type {payload['activity_type']!r} unknown; "
                f"use one of {sorted(ACTIVITY_TYPES)}"
            )
        direction = payload.get("direction")
        call_type = CALL_TYPES.get(str(direction).strip().lower()) if direction else None
        if direction is not None and call_type is None:
            raise Rejected(
                f"salesforce: activity direction {direction!r} is not inbound or outbound"
            )
        outcome, status, title = payload.get("outcome"), payload.get("status"), payload.get("title")
        is_call = kind == "call"
        disposition = (outcome or status) if is_call else None
        label = ACTIVITY_SUBJECTS[kind]
        subject = title or (f"{label}: {outcome}" if outcome else label)
        recording, handled_by = payload.get("recording_url"), payload.get("handled_by")
        # The Description carries what no field of its own does.
        description = _lines(
            payload.get("summary"),
            f"Outcome: {outcome}" if outcome and title and not is_call else None,
            f"Status: {status}" if status and status != disposition else None,
            f"Direction: {call_type}" if call_type and not is_call else None,
            f"Recording: {recording}" if recording else None,
            f"Handled by: {handled_by}" if handled_by else None,
        )
        owner = self.owner_ids.get(handled_by) if handled_by and self.owner_ids else None
        return {
            "Subject": subject[:SUBJECT_LENGTH],
            "Type": task_type,
            "Status": "Completed",
            "ActivityDate": utc(payload["occurred_at"]).date().isoformat(),
            "Description": description,
            "CallType": call_type if is_call else None,
            "CallDurationInSeconds": payload.get("duration_seconds") if is_call else None,
            "CallDisposition": disposition,
            "OwnerId": owner,
        }

    def _owner(self, rep_id: str) -> str:
        if self.owner_ids is None:
            return rep_id
        owner = self.owner_ids.get(rep_id)
        if owner is None:
            raise Rejected(
                f"salesforce: rep {rep_id!r} has no Salesforce user id; add it to the owner map"
            )
        return owner

    # -- merges ----------------------------------------------------------------------------

    async def _merge(self, merges: list[Merge], outcomes: list[Outcome]) -> None:
        """Apply the batch's merges, round by round (``merge_rounds``)."""
        for merge_round in merge_rounds(merges):
            await self._merge_round(merge_round, outcomes)

    async def _merge_round(self, merges: list[Merge], outcomes: list[Outcome]) -> None:
        wanted: dict[str, list[int]] = {}
        for m in merges:
            for contact_id in (m.survivor, m.retired):
                wanted.setdefault(contact_id, []).append(m.index)
        aliases = await self._aliases(wanted, outcomes)
        merges = [m for m in merges if outcomes[m.index] is None]
        survivors = {m.index: aliases.get(m.survivor, m.survivor) for m in merges}
        try:
            found = await self._contact_ids({*survivors.values(), *(m.retired for m in merges)})
        except _Refused as exc:
            for m in merges:
                outcomes[m.index] = exc
            return
        notes: list[Merge] = []
        renames: list[tuple[Merge, str]] = []  # (merge, the retired contact's Id)
        joins: list[tuple[Merge, str, str]] = []  # (merge, master Id, Id to merge)
        for m in merges:
            survivor = survivors[m.index]
            master, retired = found.get(survivor), found.get(m.retired)
            action = merge_action(m, survivor, aliases.get(m.retired), master, retired)
            if action == "none":
                continue
            if action == "refuse":
                outcomes[m.index] = Rejected(
                    f"salesforce: cannot merge {m.retired} into {survivor}: neither is in "
                    f"Salesforce (no Contact with {self.external_ids['Contact']}={survivor}); "
                    "upsert the contact first"
                )
                continue
            if action == "rename" and retired is not None:
                renames.append((m, retired))
            elif action == "join" and master is not None and retired is not None:
                joins.append((m, master, retired))
            notes.append(m)
        if renames:
            await self._rename(renames, survivors, outcomes)
        # The alias goes first: a command for the retired id that comes while Salesforce
        # merges already finds its way to the survivor (merge() re-parents the Task too).
        alias_tasks = [
            self._alias_task(m, survivors[m.index]) for m in notes if outcomes[m.index] is None
        ]
        for start in range(0, len(alias_tasks), BATCH_LIMIT):
            await self._upsert("Task", alias_tasks[start : start + BATCH_LIMIT], outcomes)
        joins = [j for j in joins if outcomes[j[0].index] is None]
        for start in range(0, len(joins), BATCH_LIMIT):
            await self._merge_call(joins[start : start + BATCH_LIMIT], outcomes)

    def _alias_task(self, merge: Merge, survivor: str) -> Write:
        shared = f" (they share {merge.identifier})" if merge.identifier else ""
        contact_key = {self.external_ids["Contact"]: survivor}
        fields = {
            "attributes": {"type": "Task"},
            self.external_ids["Task"]: ALIAS_PREFIX + merge.retired,
            "Who": {"attributes": {"type": "Contact"}, **contact_key},
            "Subject": f"Merged Switchboard contact {merge.retired}"[:SUBJECT_LENGTH],
            "Type": "Other",
            "Status": "Completed",
            "ActivityDate": utc(merge.issued_at).date().isoformat(),
            "Description": f"Switchboard merged contact {merge.retired} into {survivor}"
            f"{shared}: commands for {merge.retired} now land on this contact.",
        }
        return Write(merge.index, "Task", fields, survivor)

    async def _rename(
        self,
        renames: list[tuple[Merge, str]],
        survivors: Mapping[int, str],
        outcomes: list[Outcome],
    ) -> None:
        """Give each retired contact its survivor's id (sObject Collections update by Id)."""
        contact_field = self.external_ids["Contact"]
        writes = [
            Write(
                m.index,
                "Contact",
                {
                    "attributes": {"type": "Contact"},
                    "Id": record_id,
                    contact_field: survivors[m.index],
                },
            )
            for m, record_id in renames
        ]
        what = f"salesforce Contact update of {contact_field}"
        await self._save("PATCH", f"{self.base_url}/composite/sobjects", writes, what, outcomes)

    async def _merge_call(
        self, joins: list[tuple[Merge, str, str]], outcomes: list[Outcome]
    ) -> None:
        what = "salesforce Contact merge()"
        envelope = _merge_envelope(self._token, [(master, other) for _, master, other in joins])
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": "merge"}
        answer = await self._request("POST", self.soap_url, what, data=envelope, headers=headers)
        fault = _soap_fault(answer.text) if answer.status == 500 else None
        if fault is not None:
            code, message = fault
            reason = f"{what}: {code}: {message}"
            if code in RETRYABLE_FAULTS:
                wait = retry_after_seconds(answer.headers.get("Retry-After"))
                raise Retryable(reason, answer.summary(), wait)
            if code == "INVALID_SESSION_ID":
                raise Rejected(reason, answer.summary())
            for m, *_ in joins:
                outcomes[m.index] = Rejected(reason, answer.summary())
            return
        raise_for_status(answer, what)
        results = _merge_results(answer.text)
        if results is None or len(results) != len(joins):
            # The effect is unknown; a merge replayed finds the retired contact gone.
            raise Retryable(f"{what}: expected {len(joins)} results", answer.summary())
        for (m, *_), (success, errors) in zip(joins, results, strict=True):
            if success:
                continue
            codes = {code for code, _ in errors}
            detail = "; ".join(f"{code}: {message}" for code, message in errors)
            reason = f"{what}: {detail or 'not confirmed'}"
            # ENTITY_IS_DELETED: merged away meanwhile; the next try finds that out.
            retry = codes & (RETRYABLE_CODES | {"ENTITY_IS_DELETED"}) or not errors
            outcomes[m.index] = (Retryable if retry else Rejected)(reason, answer.summary())

    async def _redirect(
        self, records: Sequence[Mapping[str, Any]], writes: list[Write], outcomes: list[Outcome]
    ) -> list[Write]:
        """The writes, with those for a merged-away contact rebuilt for its survivor."""
        wanted: dict[str, list[int]] = {}
        for w in writes:
            if w.contact_id is not None:
                wanted.setdefault(w.contact_id, []).append(w.index)
        aliases = await self._aliases(wanted, outcomes)
        kept: list[Write] = []
        for write in writes:
            if outcomes[write.index] is not None:
                continue
            survivor = aliases.get(write.contact_id or "")
            if survivor is None:
                kept.append(write)
                continue
            try:
                kept.append(self._write_for(write.index, records[write.index], survivor))
            except Rejected as exc:
                outcomes[write.index] = exc
        return kept

    async def _deals_found(self, creates: Mapping[int, str], outcomes: list[Outcome]) -> set[int]:
        """Of ``creates`` (index -> deal id), the indices of those whose Opportunity
        exists. A refused query fails the creates that needed it."""
        field = self.external_ids["Opportunity"]
        by_deal = {deal_id: index for index, deal_id in creates.items()}
        found: set[int] = set()
        for chunk in _chunks(sorted(by_deal), QUERY_CHUNK):
            soql = f"SELECT {field} FROM Opportunity WHERE {field} IN ({_soql_list(chunk)})"
            try:
                rows = await self._query(soql, "salesforce Opportunity query")
            except _Refused as exc:
                for deal_id in chunk:
                    outcomes[by_deal[deal_id]] = exc
                continue
            found |= {by_deal[str(r[field])] for r in rows if str(r.get(field)) in by_deal}
        return found

    async def _aliases(
        self, wanted: Mapping[str, Sequence[int]], outcomes: list[Outcome]
    ) -> dict[str, str]:
        """Switchboard contact id -> the Switchboard id of the contact it was merged into,
        for those of ``wanted`` a merge retired. A refused query fails the records
        ``wanted`` names for it."""
        try:
            return await self._find_aliases(sorted(wanted))
        except _Refused as exc:
            for indices in wanted.values():
                for index in indices:
                    outcomes[index] = exc
            return {}

    async def _find_aliases(self, contact_ids: list[str]) -> dict[str, str]:
        task_field, contact_field = self.external_ids["Task"], self.external_ids["Contact"]
        whos: dict[str, str] = {}  # retired id -> the contact its alias Task is on
        for chunk in _chunks(contact_ids, QUERY_CHUNK):
            keys = _soql_list(ALIAS_PREFIX + c for c in chunk)
            soql = f"SELECT {task_field}, WhoId FROM Task WHERE {task_field} IN ({keys})"
            for row in await self._query(soql, "salesforce Task query (merged contacts)"):
                key = str(row.get(task_field) or "")
                if key.startswith(ALIAS_PREFIX) and row.get("WhoId"):
                    whos[key.removeprefix(ALIAS_PREFIX)] = str(row["WhoId"])
        if not whos:
            return {}
        keys_by_id: dict[str, str] = {}
        for chunk in _chunks(sorted(set(whos.values())), QUERY_CHUNK):
            soql = f"SELECT Id, {contact_field} FROM Contact WHERE Id IN ({_soql_list(chunk)})"
            for row in await self._query(soql, "salesforce Contact query by Id"):
                if row.get(contact_field):
                    keys_by_id[str(row["Id"])] = str(row[contact_field])
        aliases: dict[str, str] = {}
        for retired, who in whos.items():
            survivor = keys_by_id.get(who)
            if survivor and survivor != retired:
                aliases[retired] = survivor
        return aliases

    async def _contact_ids(self, contact_ids: set[str]) -> dict[str, str]:
        """Switchboard contact id -> Contact Id, for the contacts that exist."""
        contact_field = self.external_ids["Contact"]
        found: dict[str, str] = {}
        for chunk in _chunks(sorted(contact_ids), QUERY_CHUNK):
            soql = (
                f"SELECT Id, {contact_field} FROM Contact "
                f"WHERE {contact_field} IN ({_soql_list(chunk)})"
            )
            for row in await self._query(soql, "salesforce Contact query"):
                if row.get(contact_field) in contact_ids:
                    found[str(row[contact_field])] = str(row["Id"])
        return found

    # -- calls ---------------------------------------------------------------------------

    async def _request(self, method: str, url: str, what: str, **kwargs: Any) -> Answer:
        """One call; notes the org's API usage and raises its request-limit refusal."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        kwargs.setdefault("headers", self._headers)
        answer = await request(
            self._session, method, url, what=what, timeout_s=self.timeout_s, **kwargs
        )
        usage = _API_USAGE.search(answer.headers.get("Sforce-Limit-Info", ""))
        if usage:
            self.api_usage = (int(usage[1]), int(usage[2]))
        if answer.status == 403 and "REQUEST_LIMIT_EXCEEDED" in _error_codes(answer):
            wait = retry_after_seconds(answer.headers.get("Retry-After"))
            raise Retryable(f"{what}: REQUEST_LIMIT_EXCEEDED", answer.summary(), wait)
        return answer

    async def _query(self, soql: str, what: str) -> list[dict[str, Any]]:
        """Every row a SOQL query answers (following ``nextRecordsUrl``)."""
        rows: list[dict[str, Any]] = []
        answer = await self._request("GET", f"{self.base_url}/query", what, params={"q": soql})
        while True:
            if answer.status == 400:
                raise _Refused(
                    f"{what}: HTTP 400 {_error_codes(answer)}".rstrip(), answer.summary()
                )
            raise_for_status(answer, what)
            body = answer.json()
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                raise Retryable(f"{what}: answer has no records list", answer.summary())
            rows.extend(r for r in body["records"] if isinstance(r, dict))
            following = body.get("nextRecordsUrl")
            if body.get("done", True) or not following:
                return rows
            answer = await self._request("GET", self.instance_url + str(following), what)

    async def _upsert(self, sobject: str, writes: list[Write], outcomes: list[Outcome]) -> None:
        external_id = self.external_ids[sobject]
        what = f"salesforce {sobject} upsert by {external_id}"
        url = f"{self.base_url}/composite/sobjects/{sobject}/{external_id}"
        await self._save("PATCH", url, writes, what, outcomes)

    async def _save(
        self, method: str, url: str, writes: list[Write], what: str, outcomes: list[Outcome]
    ) -> None:
        """One sObject Collections call; the outcome of each record from its result."""
        body = {"allOrNone": False, "records": [w.fields for w in writes]}
        answer = await self._request(method, url, what, json=body)
        if answer.status == 400:  # the request as a whole was refused: every record in it
            reason = f"{what}: HTTP 400 {_error_codes(answer)}".rstrip()
            for w in writes:
                outcomes[w.index] = Rejected(reason, answer.summary())
            return
        raise_for_status(answer, what)
        results = answer.json()
        if not isinstance(results, list) or len(results) != len(writes):
            # The effect is unknown; the upsert is idempotent, so trying again is safe.
            raise Retryable(f"{what}: expected {len(writes)} results", answer.summary())
        for write, result in zip(writes, results, strict=True):
            outcomes[write.index] = _outcome(what, write, result)


def contact_field(key: str) -> str:
    """The Contact field a Switchboard property key is written to: a standard field
    (CONTACT_FIELDS), the key itself when it is spelled as a Salesforce field name already,
    else the custom ``Switchboard_<Words>__c``: 'lead_score' -> 'Switchboard_Lead_Score__c'."""
    if key in CONTACT_FIELDS:
        return CONTACT_FIELDS[key]
    if _FIELD_NAME.fullmatch(key):
        return key
    words = _WORD.findall(key)
    name = CUSTOM_PREFIX + "_".join(word[:1].upper() + word[1:] for word in words)
    if not words or len(name) > CUSTOM_NAME_LIMIT:
        raise Rejected(
            f"salesforce: property {key!r} makes no custom field name of at most "
            f"{CUSTOM_NAME_LIMIT} characters (it would be {name!r})"
        )
    return name + "__c"


def contact_fields(properties: Mapping[str, Any]) -> dict[str, Any]:
    """UPSERT_CONTACT's ``properties`` under the Contact's field names."""
    return {contact_field(key): value for key, value in properties.items()}


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


def _datetime(value: datetime | int | None) -> str | None:
    """A WorkOrder date-time: ISO 8601 UTC."""
    return None if value is None else utc(value).isoformat(timespec="seconds")


def _clip(text: str | None, limit: int) -> str | None:
    return None if text is None else text[:limit]


def _lines(*lines: str | None) -> str | None:
    kept = [line for line in lines if line]
    return "\n".join(kept) if kept else None


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _soql_list(values: Iterable[str]) -> str:
    """'a', 'b' -- SOQL string literals, quotes and backslashes escaped."""
    return ", ".join("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" for v in values)


# -- SOAP --------------------------------------------------------------------------------


def _merge_envelope(session_id: str, pairs: list[tuple[str, str]]) -> bytes:
    """A partner-WSDL ``merge()`` call: one MergeRequest per (master Id, Id to merge)."""
    ET.register_namespace("soapenv", SOAP_ENV)
    ET.register_namespace("urn", PARTNER)
    ET.register_namespace("sobj", SOBJECT)
    envelope = ET.Element(f"{{{SOAP_ENV}}}Envelope")
    header = ET.SubElement(
        ET.SubElement(envelope, f"{{{SOAP_ENV}}}Header"), f"{{{PARTNER}}}SessionHeader"
    )
    ET.SubElement(header, f"{{{PARTNER}}}sessionId").text = session_id
    call = ET.SubElement(ET.SubElement(envelope, f"{{{SOAP_ENV}}}Body"), f"{{{PARTNER}}}merge")
    for master, other in pairs:
        merge_request = ET.SubElement(call, f"{{{PARTNER}}}request")
        master_record = ET.SubElement(merge_request, f"{{{PARTNER}}}masterRecord")
        ET.SubElement(master_record, f"{{{SOBJECT}}}type").text = "Contact"
        ET.SubElement(master_record, f"{{{SOBJECT}}}Id").text = master
        ET.SubElement(merge_request, f"{{{PARTNER}}}recordToMergeIds").text = other
    document: bytes = ET.tostring(envelope, encoding="utf-8", xml_declaration=True)
    return document


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _parse(text: str) -> ET.Element | None:
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        return None


def _soap_fault(text: str) -> tuple[str, str] | None:
    """(exception code, message) of a SOAP fault, e.g. ("INVALID_SESSION_ID", "...")."""
    root = _parse(text)
    if root is None:  # (an Element with no children is falsy: test against None)
        return None
    fault = next((e for e in root.iter() if _local(e.tag) == "Fault"), None)
    if fault is None:
        return None
    parts = {_local(e.tag): (e.text or "").strip() for e in fault.iter()}
    code = parts.get("exceptionCode") or parts.get("faultcode", "").rsplit(":", 1)[-1]
    return code or "UNKNOWN_FAULT", parts.get("exceptionMessage") or parts.get("faultstring", "")


def _merge_results(text: str) -> list[tuple[bool, list[tuple[str, str]]]] | None:
    """Each MergeResult as (success, [(statusCode, message)]), in request order."""
    root = _parse(text)
    if root is None:
        return None
    response = next((e for e in root.iter() if _local(e.tag) == "mergeResponse"), None)
    if response is None:
        return None
    results: list[tuple[bool, list[tuple[str, str]]]] = []
    for result in (e for e in response if _local(e.tag) == "result"):
        fields = {_local(e.tag): (e.text or "").strip() for e in result}
        errors = [
            (
                next(((c.text or "") for c in e if _local(c.tag) == "statusCode"), ""),
                next(((c.text or "") for c in e if _local(c.tag) == "message"), ""),
            )
            for e in result
            if _local(e.tag) == "errors"
        ]
        results.append((fields.get("success") == "true", errors))
    return results
