"""The HubSpot CRM writer: CRM commands become HubSpot CRM v3 batch upserts.

Every write is an upsert by a unique property, so a redelivered command finds the record it
made the first time and changes nothing (invariant 2):

- contacts by ``email``, or by ``switchboard_contact_id`` when the command has no e-mail;
  every contact carries ``switchboard_contact_id`` so the other commands can find it;
- deals by ``switchboard_deal_id`` (CREATE_DEAL and UPDATE_DEAL_STAGE reach the same deal;
  UPDATE_DEAL_STAGE sets ``amount`` and ``deal_currency_code`` too when it carries an amount).
  A CREATE_DEAL of a deal HubSpot has changes nothing, as in the SQL store (a merge makes
  its adopted deals again, so a create from before it may come after a stage change): the
  call's creates are looked up first (one batch read), and one deal's second create in a
  call shares the first's outcome;
- tasks, calls, meetings, e-mails, SMS (communications) and notes by
  ``switchboard_command_id``, the command's idempotency key. LOG_ACTIVITY of a form or a
  payment has no engagement type of its own: it becomes a note headed by its title.

- jobs (UPSERT_JOB) in the custom object ``job_object`` (settings ``hubspot_job_object``,
  ``p_switchboard_jobs`` by default, or its ``2-<n>`` objectTypeId) by ``switchboard_job_id``.
  The portal defines the object with these properties (single-line text but where said):
  ``switchboard_job_id`` (unique), ``job_name`` (the primary display property),
  ``job_type``, ``job_status``, ``service``, ``address``, ``amount`` (number, major units),
  ``currency``, ``scheduled_for`` and ``completed_at`` (datetime), ``technician``,
  ``field_job_id`` (the field system's id) and ``related_job_id``, and an association to
  contacts. A null field is not sent, so the record keeps its value.

Batch upsert takes no associations, so a deal or activity is tied to its contact afterwards
with the v4 "associate default" batch call, which is idempotent too. The portal needs the
custom unique-value properties above (``hasUniqueValue: true``) on each object it writes.

UPSERT_CONTACT's ``properties`` use Switchboard's own names; each is written to a HubSpot
contact property (``CONTACT_PROPERTIES`` and ``contact_property``). A key HubSpot has a
default contact property for goes there (``lifecyclestage`` is HubSpot's name already):

    address -> address      region -> state      country -> country
    city -> city            postcode -> zip      industry -> industry
    lifecyclestage -> lifecyclestage

Every other key becomes the custom property ``switchboard_<key>``: the key in lower case,
each run of characters other than letters and digits made one underscore. The portal must
create them (single-line text; not unique): today ``switchboard_lead_score``,
``switchboard_lead_band``, ``switchboard_service``, ``switchboard_qualification``,
``switchboard_timezone``, ``switchboard_company_size``, ``switchboard_workflow_tags``,
``switchboard_sla_breach``, ``switchboard_sla_breached_at``, from enrichment and the
service area ``switchboard_annual_revenue``, ``switchboard_seniority``,
``switchboard_service_area``, ``switchboard_service_branch``, ``switchboard_distance_km``
and, from the bundled payment-onboarding workflow, ``switchboard_onboarding``; a key a
workflow adds tomorrow follows the same rule. Two defaults are deliberately not used:
``hs_timezone`` is a dropdown of HubSpot's own codes (``america_slash_new_york``) that
lacks some IANA names (no ``UTC``; ``Europe/Kiev`` but not ``Europe/Kyiv``), and
``numemployees`` a dropdown of ranges (``25-50``): a value outside either would refuse the
whole contact. A key already spelled
as a HubSpot name (``hs_...``, ``switchboard_...``) is passed as it is.

MERGE_CONTACTS uses HubSpot's own merge (``POST /crm/v3/objects/contacts/merge``): HubSpot
moves the retired contact's deals and activities to the merged record and keeps both old
record ids pointing at it. It does not keep the retired contact's ``switchboard_contact_id``
(the primary's values win; only e-mail has an exception, as an additional e-mail), so the
writer keeps the alias itself: a note keyed ``switchboard_command_id =
merged-contact:{retired id}``, tied to the survivor, written *before* the merge call. HubSpot
moves that note along with every later merge of the survivor. Before writing, the writer
reads those notes for the batch's contact ids (one batch read; two more only when one is
found) and sends a retired id's commands to the survivor's record instead, so a command
issued before the merge neither recreates the retired contact nor is refused. A merge is
idempotent: replayed, the retired contact is no longer there (or the note says it was
merged already) and only the note is written again. A retired id unknown to HubSpot gets
the note alone; when only the retired contact exists, it is renamed to the survivor's id.

Docs followed (developers.hubspot.com):

- batch upsert, input ``{id, idProperty, objectWriteTraceId, properties}`` and output
  ``{status, results[{id, properties, new, objectWriteTraceId, ...}], errors[], numErrors}``:
  /docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts
- batch read by ``idProperty``: /docs/api-reference/legacy/crm/objects/objects/batch/read
- v4 default associations ``POST /crm/v4/associations/{from}/{to}/batch/associate/default``
  with ``inputs[{from: {id}, to: {id}}]``:
  /docs/api-reference/legacy/crm/associations/associate-records/batch/create-associations;
  v4 batch read ``POST /crm/v4/associations/{from}/{to}/batch/read`` with ``inputs[{id}]``,
  answered ``results[{from: {id}, to: [{toObjectId, associationTypes}]}]``
- merge ``POST /crm/v3/objects/contacts/merge`` with ``{primaryObjectId, objectIdToMerge}``,
  answered with the merged record ``{id, properties, createdAt, updatedAt, archived}``:
  /docs/api-reference/legacy/crm/objects/contacts/merge-contacts; the merged record gets a
  new id and both old ids keep resolving to it (developer changelog, "Updated merge
  functionality for contacts and companies"; knowledge.hubspot.com "Merge records")
- update ``PATCH /crm/v3/objects/contacts/{contactId}`` with ``{properties}``
- errors: /docs/api-reference/error-handling -- the body ``{status: "error", message,
  correlationId, category, errors[]}`` (every field optional); 207 multi-status when the
  inputs carry an ``objectWriteTraceId``, each error naming its inputs in
  ``context.objectWriteTraceId`` (a list); 429 bodies add ``errorType: "RATE_LIMIT"`` and
  ``policyName`` (``TEN_SECONDLY_ROLLING`` or ``DAILY``), and answers carry
  ``X-HubSpot-RateLimit-Max``/``-Remaining``/``-Interval-Milliseconds``
  (/docs/developer-tooling/platform/usage-guidelines).
- default contact properties (knowledge.hubspot.com "HubSpot's default contact
  properties"): ``address``, ``city``, ``state``, ``zip``, ``country``, ``industry`` are
  single-line text; ``lifecyclestage``, ``hs_timezone`` and ``numemployees`` are dropdowns
- engagement properties: tasks (``hs_task_subject``, ``hs_task_body``, ``hs_timestamp`` is
  the due date, ``hs_task_priority``, ``hs_task_status``), calls (``hs_call_title``,
  ``hs_call_body``, ``hs_call_direction`` INBOUND/OUTBOUND, ``hs_call_status``,
  ``hs_call_duration`` in milliseconds, ``hs_call_recording_url``, ``hs_call_disposition``
  = the id of a call outcome; the ids below are HubSpot's default outcomes), e-mails
  (``hs_email_direction`` EMAIL/INCOMING_EMAIL), notes (``hs_note_body``, ``hs_timestamp``):
  /docs/api-reference/latest/crm/activities/*/guide."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from connectors.delivery import DeliveryError, Outcome, Rejected, Retryable
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

BATCH_LIMIT = 100  # inputs per batch call (upsert, read, associate)
CONTACT_KEY = "switchboard_contact_id"
DEAL_KEY = "switchboard_deal_id"
JOB_KEY = "switchboard_job_id"
DEFAULT_JOB_OBJECT = "p_switchboard_jobs"  # = Settings.hubspot_job_object
COMMAND_KEY = "switchboard_command_id"
# The note that keeps a merged-away Switchboard contact id pointing at its survivor.
ALIAS_PREFIX = "merged-contact:"
MERGED_IDS = "hs_merged_object_ids"  # HubSpot's own list of the record ids merged into one

# UPSERT_CONTACT's Switchboard property names -> HubSpot default contact properties. Any
# other key is written to the custom property CUSTOM_PREFIX + key (contact_property).
CONTACT_PROPERTIES = {
    "address": "address",
    "city": "city",
    "region": "state",
    "postcode": "zip",
    "country": "country",
    "industry": "industry",
    "lifecyclestage": "lifecyclestage",
}
CUSTOM_PREFIX = "switchboard_"
# Keys already spelled as HubSpot property names, passed as they are.
HUBSPOT_PREFIXES = ("hs_", CUSTOM_PREFIX)
# LOG_ACTIVITY's activity_type -> the HubSpot engagement object that records it.
ACTIVITY_OBJECTS = {
    "call": "calls",
    "meeting": "meetings",
    "email": "emails",
    "sms": "communications",
    "form": "notes",
    "payment": "notes",
}
# How a form or payment is headed on the timeline when the command has no title.
ACTIVITY_LABELS = {"form": "Form submission", "payment": "Payment"}
TASK_PRIORITIES = {"low": "LOW", "medium": "MEDIUM", "normal": "MEDIUM", "high": "HIGH"}
DIRECTIONS = {"inbound", "outbound"}
EMAIL_DIRECTIONS = {"inbound": "INCOMING_EMAIL", "outbound": "EMAIL"}
# The provider's call status -> hs_call_status. A logged call happened, so anything else
# is COMPLETED (and the provider's word goes into the body).
CALL_STATUSES = {
    "completed": "COMPLETED",
    "answered": "COMPLETED",
    "voicemail": "COMPLETED",
    "busy": "BUSY",
    "no-answer": "NO_ANSWER",
    "failed": "FAILED",
    "canceled": "CANCELED",
    "cancelled": "CANCELED",
    "in-progress": "IN_PROGRESS",
    "ringing": "RINGING",
    "queued": "QUEUED",
}
# An outcome or status -> the id of HubSpot's default call outcome it names. Only these map
# cleanly; any other outcome stays in the call's body alone.
CALL_DISPOSITIONS = {
    "connected": "f240bbac-87c9-4f6e-bf70-924b57d47db7",
    "busy": "9d9162e7-6cf3-4944-bf63-4dff82258764",
    "no-answer": "73a0d17f-1163-4015-bdd5-ec830791da20",
    "voicemail": "b2cf5968-551e-4856-9783-52b3da59a7d0",
    "left-voicemail": "b2cf5968-551e-4856-9783-52b3da59a7d0",
    "left-live-message": "a4c4c377-d246-4b32-a13b-75a56a4cd0ff",
    "wrong-number": "17b47fee-58de-441e-a44c-c6300d46f273",
}
_NOT_NAME = re.compile(r"[^a-z0-9]+")  # what a custom property name cannot hold


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
    contact_id: str = ""  # the Switchboard contact it belongs to (a survivor, once merged)


class HubSpotWriter:
    """Destination ``hubspot``: one record, one upsert, in batches of at most 100."""

    name = "hubspot"
    max_batch = BATCH_LIMIT
    in_order = False

    def __init__(
        self,
        token: str,
        *,
        base_url: str = "https://api.hubapi.com",
        owner_ids: Mapping[str, str] | None = None,
        stage_names: Mapping[str, str] | None = None,
        job_object: str = DEFAULT_JOB_OBJECT,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        """``owner_ids`` maps Switchboard rep ids to HubSpot owner ids; without it rep ids
        are taken to be HubSpot owner ids already. ``stage_names`` maps pipeline stages to
        the deal pipeline's stage ids; an unmapped stage goes as it is. ``job_object`` is
        the custom object that holds job records. A ``session`` passed in stays open."""
        self.base_url = base_url.rstrip("/")
        self.job_object = job_object
        self.owner_ids = owner_ids
        self.stage_names = dict(stage_names or {})
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {token}"}
        self._session = session
        self._own_session = session is None
        self.rate_limit_remaining: int | None = None  # X-HubSpot-RateLimit-Remaining, last seen

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        outcomes: list[Outcome] = [None] * len(records)
        writes: list[Write] = []
        merges: list[Merge] = []
        for index, record in enumerate(records):
            try:
                if record["command_type"] == "MERGE_CONTACTS":
                    merges.append(merge_of(index, record, "hubspot"))
                else:
                    writes.append(self._write_for(index, record))
            except Rejected as exc:
                outcomes[index] = exc
        if merges:  # first: a command for a contact they retire then lands on the survivor
            await self._merge(merges, outcomes)
        if writes:
            writes = await self._redirect(records, writes, outcomes)
        writes, repeats = await without_existing_deals(
            records, writes, outcomes, lambda creates: self._deals_found(records, creates, outcomes)
        )
        contacts = await self._contact_ids({w.contact_id for w in writes if w.associate})
        groups: dict[tuple[str, str], list[Write]] = {}
        for write in writes:
            if write.associate and write.contact_id not in contacts:
                outcomes[write.index] = Rejected(
                    f"hubspot: contact {write.contact_id} not found (no contact with "
                    f"{CONTACT_KEY}={write.contact_id}); upsert the contact first"
                )
                continue
            groups.setdefault((write.object_type, write.id_property), []).append(write)
        for (object_type, _), group in groups.items():
            for start in range(0, len(group), BATCH_LIMIT):
                chunk = group[start : start + BATCH_LIMIT]
                made = await self._upsert(object_type, chunk, outcomes)
                links = [
                    (w.index, made[w.index], contacts[w.contact_id])
                    for w in chunk
                    if w.associate and w.index in made
                ]
                if links:
                    await self._associate(object_type, links, outcomes)
        for index, first in repeats.items():  # one create made the deal for both
            outcomes[index] = outcomes[first]
        return outcomes

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    # -- commands -> upsert inputs ---------------------------------------------------------

    def _write_for(
        self, index: int, record: Mapping[str, Any], survivor: str | None = None
    ) -> Write:
        """The record as an upsert input; ``survivor`` is the contact it goes to instead of
        its own, when a merge retired its contact."""
        command = record["command_type"]
        payload: Mapping[str, Any] = record["payload"]
        contact_id: str = survivor or record["contact_id"]
        command_id: str = record["command_id"]

        def write(object_type: str, key: str, value: str, props: dict[str, Any]) -> Write:
            properties = {k: _text(v) for k, v in props.items() if v is not None}
            properties[key] = value
            associate = object_type != "contacts"
            return Write(
                index, object_type, key, value, properties, associate, command_id, contact_id
            )

        if command == "UPSERT_CONTACT":
            props = {
                **contact_properties(payload.get("properties") or {}),
                "email": payload.get("email"),
                "phone": payload.get("phone"),
                "firstname": payload.get("first_name"),
                "lastname": payload.get("last_name"),
                "company": payload.get("company"),
                "jobtitle": payload.get("title"),
                CONTACT_KEY: contact_id,
            }
            email = payload.get("email")
            if email and survivor is None:  # the survivor is found by its own id, always
                return write("contacts", "email", email, props)
            return write("contacts", CONTACT_KEY, contact_id, props)
        if command == "SET_OWNER":
            owner = self._owner(payload["owner_id"])
            return write("contacts", CONTACT_KEY, contact_id, {"hubspot_owner_id": owner})
        if command == "CREATE_DEAL":
            props = {
                "dealname": payload["name"],
                "dealstage": self.stage_names.get(payload["stage"], payload["stage"]),
                "pipeline": payload.get("pipeline"),
                "amount": _amount(payload.get("amount_minor"), payload.get("currency")),
                "deal_currency_code": payload.get("currency"),
            }
            return write("deals", DEAL_KEY, payload["deal_id"], props)
        if command == "UPDATE_DEAL_STAGE":
            props = {"dealstage": self.stage_names.get(payload["stage"], payload["stage"])}
            amount_minor = payload.get("amount_minor")
            if amount_minor is not None:  # without one, the deal keeps the amount it has
                currency = iso_currency(payload.get("currency"), "hubspot")
                props["amount"] = _amount(amount_minor, currency)
                props["deal_currency_code"] = currency
            return write("deals", DEAL_KEY, payload["deal_id"], props)
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
            object_type, props = _activity(payload, self._handler_owner(payload))
            return write(object_type, COMMAND_KEY, command_id, props)
        if command == "ADD_NOTE":
            props = {"hs_note_body": payload["body"], "hs_timestamp": _instant(record["issued_at"])}
            return write("notes", COMMAND_KEY, command_id, props)
        if command == "UPSERT_JOB":
            amount_minor = payload.get("amount_minor")
            currency = payload.get("currency")
            if amount_minor is not None:
                currency = iso_currency(currency, "hubspot")
            props = {
                "job_name": payload.get("title"),
                "job_type": payload["job_type"],
                "job_status": payload["status"],
                "service": payload.get("service"),
                "address": payload.get("address"),
                "amount": _amount(amount_minor, currency),
                "currency": currency if amount_minor is not None else None,
                "scheduled_for": payload.get("scheduled_for"),
                "completed_at": payload.get("completed_at"),
                "technician": payload.get("technician"),
                "field_job_id": payload.get("external_id"),
                "related_job_id": payload.get("related_job_id"),
            }
            return write(self.job_object, JOB_KEY, payload["job_id"], props)
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

    def _handler_owner(self, payload: Mapping[str, Any]) -> str | None:
        """The HubSpot owner of an activity's ``handled_by``, when the owner map knows it
        (it may as well name the voice-AI assistant, which owns nothing in HubSpot)."""
        handled_by = payload.get("handled_by")
        if not handled_by or self.owner_ids is None:
            return None
        return self.owner_ids.get(handled_by)

    # -- merges ----------------------------------------------------------------------------

    async def _merge(self, merges: list[Merge], outcomes: list[Outcome]) -> None:
        """Apply the batch's merges, round by round (``merge_rounds``)."""
        for merge_round in merge_rounds(merges):
            await self._merge_round(merge_round, outcomes)

    async def _merge_round(self, merges: list[Merge], outcomes: list[Outcome]) -> None:
        wanted: dict[str, list[tuple[int, str]]] = {}
        for m in merges:
            for contact_id in (m.survivor, m.retired):
                wanted.setdefault(contact_id, []).append((m.index, m.command_id))
        aliases = await self._aliases(wanted, outcomes)
        merges = [m for m in merges if outcomes[m.index] is None]
        survivors = {m.index: aliases.get(m.survivor, m.survivor) for m in merges}
        found = await self._contact_ids({*survivors.values(), *(m.retired for m in merges)})
        notes: list[tuple[Merge, str, str]] = []  # (merge, survivor id, HubSpot contact)
        joins: list[tuple[Merge, str, str]] = []  # (merge, primary, object to merge)
        for m in merges:
            survivor = survivors[m.index]
            primary, retired = found.get(survivor), found.get(m.retired)
            action = merge_action(m, survivor, aliases.get(m.retired), primary, retired)
            if action == "refuse":
                outcomes[m.index] = Rejected(
                    f"hubspot: cannot merge {m.retired} into {survivor}: neither is in HubSpot "
                    f"(no contact with {CONTACT_KEY}={survivor}); upsert the contact first"
                )
            elif action == "rename" and retired is not None:
                if await self._rename(m, retired, survivor, outcomes):
                    notes.append((m, survivor, retired))
            elif action in ("join", "alias") and primary is not None:
                notes.append((m, survivor, primary))
                if action == "join" and retired is not None:
                    joins.append((m, primary, retired))
        # The alias goes first: a command for the retired id that comes while HubSpot merges
        # already finds its way to the survivor (HubSpot moves the note onto the merged record).
        await self._alias_notes(notes, outcomes)
        for m, primary, retired in joins:
            if outcomes[m.index] is None:
                await self._merge_pair(m, primary, retired, outcomes)

    async def _alias_notes(
        self, notes: list[tuple[Merge, str, str]], outcomes: list[Outcome]
    ) -> None:
        writes: list[Write] = []
        tied: dict[int, str] = {}
        for m, survivor, contact in notes:
            shared = f" (they share {m.identifier})" if m.identifier else ""
            body = (
                f"Switchboard merged contact {m.retired} into {survivor}{shared}: commands "
                f"for {m.retired} now land on this contact."
            )
            properties = {"hs_note_body": body, "hs_timestamp": _instant(m.issued_at)}
            key = ALIAS_PREFIX + m.retired
            properties[COMMAND_KEY] = key
            writes.append(
                Write(m.index, "notes", COMMAND_KEY, key, properties, True, m.command_id, survivor)
            )
            tied[m.index] = contact
        for start in range(0, len(writes), BATCH_LIMIT):
            chunk = writes[start : start + BATCH_LIMIT]
            made = await self._upsert("notes", chunk, outcomes)
            links = [(w.index, made[w.index], tied[w.index]) for w in chunk if w.index in made]
            if links:
                await self._associate("notes", links, outcomes)

    async def _merge_pair(
        self, merge: Merge, primary: str, retired: str, outcomes: list[Outcome]
    ) -> None:
        what = f"hubspot contacts merge {merge.retired} into {merge.survivor}"
        body = {"primaryObjectId": primary, "objectIdToMerge": retired}
        answer = await self._call("/crm/v3/objects/contacts/merge", body, what)
        if answer.status in (400, 404, 409):
            message = _message(answer)
            outcomes[merge.index] = Rejected(
                f"{what}: HTTP {answer.status} {message}".strip(), answer.summary()
            )
            return
        _raise_for_call(answer, what)
        _json_object(answer)  # the merged record: anything else leaves the effect unknown

    async def _rename(
        self, merge: Merge, contact: str, survivor: str, outcomes: list[Outcome]
    ) -> bool:
        """Give the retired contact the survivor's id; False (with the outcome set) if not."""
        what = f"hubspot contacts update {merge.retired} to {CONTACT_KEY}={survivor}"
        body = {"properties": {CONTACT_KEY: survivor}}
        answer = await self._call(f"/crm/v3/objects/contacts/{contact}", body, what, "PATCH")
        if answer.status == 404:  # gone meanwhile (merged by someone): look again next time
            outcomes[merge.index] = Retryable(f"{what}: HTTP 404", answer.summary())
            return False
        if answer.status in (400, 409):
            message = _message(answer)
            outcomes[merge.index] = Rejected(
                f"{what}: HTTP {answer.status} {message}".strip(), answer.summary()
            )
            return False
        _raise_for_call(answer, what)
        return True

    async def _redirect(
        self, records: Sequence[Mapping[str, Any]], writes: list[Write], outcomes: list[Outcome]
    ) -> list[Write]:
        """The writes, with those for a merged-away contact rebuilt for its survivor."""
        wanted: dict[str, list[tuple[int, str]]] = {}
        for w in writes:
            wanted.setdefault(w.contact_id, []).append((w.index, w.trace_id))
        aliases = await self._aliases(wanted, outcomes)
        kept: list[Write] = []
        for write in writes:
            if outcomes[write.index] is not None:
                continue
            survivor = aliases.get(write.contact_id)
            if survivor is None:
                kept.append(write)
                continue
            try:
                kept.append(self._write_for(write.index, records[write.index], survivor))
            except Rejected as exc:
                outcomes[write.index] = exc
        return kept

    async def _deals_found(
        self,
        records: Sequence[Mapping[str, Any]],
        creates: Mapping[int, str],
        outcomes: list[Outcome],
    ) -> set[int]:
        """Of ``creates`` (index -> deal id), the indices of those whose deal HubSpot has.
        A refused read fails the creates that needed it."""
        by_deal = {deal_id: index for index, deal_id in creates.items()}
        ordered = sorted(by_deal)
        found: set[int] = set()
        for start in range(0, len(ordered), BATCH_LIMIT):
            chunk = ordered[start : start + BATCH_LIMIT]
            what = "hubspot deals batch/read"
            body = {
                "idProperty": DEAL_KEY,
                "inputs": [{"id": d} for d in chunk],
                "properties": [DEAL_KEY],
            }
            answer = await self._call("/crm/v3/objects/deals/batch/read", body, what)
            if answer.status == 400:
                inputs = [(by_deal[d], str(records[by_deal[d]]["command_id"]), d) for d in chunk]
                _refused(answer, what, inputs, outcomes)
                continue
            _raise_for_call(answer, what)
            for result in _json_object(answer).get("results", []):
                deal_id = str((result.get("properties") or {}).get(DEAL_KEY) or "")
                if deal_id in by_deal:
                    found.add(by_deal[deal_id])
        return found

    async def _aliases(
        self, wanted: Mapping[str, Sequence[tuple[int, str]]], outcomes: list[Outcome]
    ) -> dict[str, str]:
        """Switchboard contact id -> the Switchboard id of the contact it was merged into,
        for those of ``wanted`` a merge retired. ``wanted`` names, per contact id, the
        records (index, command id) that a refused read fails."""
        notes: dict[str, str] = {}  # retired id -> its alias note
        ordered = sorted(wanted)
        for start in range(0, len(ordered), BATCH_LIMIT):
            chunk = ordered[start : start + BATCH_LIMIT]
            what = "hubspot notes batch/read (merged contacts)"
            body = {
                "idProperty": COMMAND_KEY,
                "inputs": [{"id": ALIAS_PREFIX + c} for c in chunk],
                "properties": [COMMAND_KEY],
            }
            answer = await self._call("/crm/v3/objects/notes/batch/read", body, what)
            if answer.status == 400:  # the records that needed the read fail with it
                inputs = [(i, trace, c) for c in chunk for i, trace in wanted[c]]
                _refused(answer, what, inputs, outcomes)
                continue
            _raise_for_call(answer, what)
            for result in _json_object(answer).get("results", []):
                key = str((result.get("properties") or {}).get(COMMAND_KEY) or "")
                retired = key.removeprefix(ALIAS_PREFIX)
                if key.startswith(ALIAS_PREFIX) and retired in wanted:
                    notes[retired] = str(result["id"])
        if not notes:
            return {}
        tied = await self._note_contacts(sorted(set(notes.values())))
        survivors = await self._contact_keys(sorted(set(tied.values())))
        aliases: dict[str, str] = {}
        for retired, note in notes.items():
            survivor = survivors.get(tied.get(note, ""))
            if survivor and survivor != retired:
                aliases[retired] = survivor
        return aliases

    async def _note_contacts(self, note_ids: list[str]) -> dict[str, str]:
        """Note id -> the HubSpot contact it is tied to (HubSpot moves it on every merge)."""
        tied: dict[str, str] = {}
        for start in range(0, len(note_ids), BATCH_LIMIT):
            what = "hubspot notes->contacts batch/read"
            body = {"inputs": [{"id": n} for n in note_ids[start : start + BATCH_LIMIT]]}
            path = "/crm/v4/associations/notes/contacts/batch/read"
            answer = await self._call(path, body, what)
            _raise_for_call(answer, what)
            for result in _json_object(answer).get("results", []):
                to = result.get("to") or []
                if to:
                    tied[str(result["from"]["id"])] = str(to[0]["toObjectId"])
        return tied

    async def _contact_keys(self, object_ids: list[str]) -> dict[str, str]:
        """HubSpot contact id (or an id merged into it) -> its Switchboard contact id."""
        keys: dict[str, str] = {}
        for start in range(0, len(object_ids), BATCH_LIMIT):
            what = "hubspot contacts batch/read by id"
            body = {
                "inputs": [{"id": i} for i in object_ids[start : start + BATCH_LIMIT]],
                "properties": [CONTACT_KEY, MERGED_IDS],
            }
            answer = await self._call("/crm/v3/objects/contacts/batch/read", body, what)
            _raise_for_call(answer, what)
            for result in _json_object(answer).get("results", []):
                props = result.get("properties") or {}
                key = props.get(CONTACT_KEY)
                if not key:
                    continue
                merged = str(props.get(MERGED_IDS) or "").split(";")
                for object_id in [str(result["id"]), *merged]:
                    if object_id:
                        keys[object_id] = str(key)
        return keys

    # -- calls ---------------------------------------------------------------------------

    async def _call(
        self, path: str, body: dict[str, Any], what: str, method: str = "POST"
    ) -> Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        answer = await request(
            self._session,
            method,
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


def contact_property(key: str) -> str:
    """The HubSpot contact property a Switchboard property key is written to: its default
    property (CONTACT_PROPERTIES), the key itself when it is spelled as a HubSpot name
    already, else the custom ``switchboard_<key>``: 'lead_score' -> 'switchboard_lead_score',
    'Lead Score' -> 'switchboard_lead_score'."""
    if key in CONTACT_PROPERTIES:
        return CONTACT_PROPERTIES[key]
    if key.startswith(HUBSPOT_PREFIXES):
        return key
    name = _NOT_NAME.sub("_", key.lower()).strip("_")
    if not name:
        raise Rejected(f"hubspot: property {key!r} has no letters or digits to name a property")
    return CUSTOM_PREFIX + name


def contact_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """UPSERT_CONTACT's ``properties`` under HubSpot's names."""
    return {contact_property(key): value for key, value in properties.items()}


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


def _message(answer: Answer) -> str:
    """HubSpot's ``message`` from an error body, or the start of the body."""
    body = answer.json()
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('category', 'ERROR')}: {body['message']}"
    return answer.text[:200]


def _slug(value: Any) -> str:
    """'No Answer', 'no_answer', 'no-answer' -> 'no-answer'."""
    return re.sub(r"[\s_]+", "-", str(value).strip().lower())


def _lines(*lines: str | None) -> str | None:
    kept = [line for line in lines if line]
    return "\n".join(kept) if kept else None


def _activity(payload: Mapping[str, Any], owner: str | None) -> tuple[str, dict[str, Any]]:
    """LOG_ACTIVITY -> (engagement object, properties). ``owner`` is the HubSpot owner of
    ``handled_by``, if it has one."""
    kind = str(payload["activity_type"]).lower()
    object_type = ACTIVITY_OBJECTS.get(kind)
    if object_type is None:
        raise Rejected(
            f"hubspot: activity type {payload['activity_type']!r} has no HubSpot engagement; "
            f"use one of {sorted(ACTIVITY_OBJECTS)}"
        )
    direction = payload.get("direction")
    if direction is not None and _slug(direction) not in DIRECTIONS:
        raise Rejected(f"hubspot: activity direction {direction!r} is not inbound or outbound")
    when = _instant(payload["occurred_at"])
    summary, outcome = payload.get("summary"), payload.get("outcome")
    title, status = payload.get("title"), payload.get("status")
    handled_by = payload.get("handled_by")
    handled = f"Handled by: {handled_by}" if handled_by else None
    duration = payload.get("duration_seconds")
    if object_type == "calls":
        call_status = CALL_STATUSES.get(_slug(status)) if status else None
        disposition = next(
            (
                CALL_DISPOSITIONS[_slug(v)]
                for v in (outcome, status)
                if v and _slug(v) in CALL_DISPOSITIONS
            ),
            None,
        )
        return object_type, {
            "hs_timestamp": when,
            "hs_call_title": title or (f"Call: {outcome}" if outcome else "Call"),
            "hs_call_body": _lines(
                summary,
                f"Outcome: {outcome}" if outcome else None,
                f"Status: {status}" if status and call_status is None else None,
                handled,
            ),
            "hs_call_direction": _slug(direction).upper() if direction else None,
            "hs_call_duration": duration * 1000 if duration is not None else None,
            "hs_call_status": call_status or "COMPLETED",
            "hs_call_disposition": disposition,
            "hs_call_recording_url": payload.get("recording_url"),
            "hubspot_owner_id": owner,
        }
    if object_type == "meetings":
        return object_type, {
            "hs_timestamp": when,
            "hs_meeting_title": title or (f"Meeting: {outcome}" if outcome else "Meeting"),
            "hs_meeting_body": _lines(
                summary, f"Outcome: {outcome}" if title and outcome else None, handled
            ),
            "hs_meeting_start_time": when,
            "hubspot_owner_id": owner,
        }
    if object_type == "emails":
        return object_type, {
            "hs_timestamp": when,
            "hs_email_subject": title,
            "hs_email_direction": EMAIL_DIRECTIONS[_slug(direction)] if direction else None,
            "hs_email_text": summary,
            "hubspot_owner_id": owner,
        }
    if object_type == "notes":  # a form or a payment: a note headed by what it was
        label = ACTIVITY_LABELS[kind]
        heading = title or (f"{label}: {outcome}" if outcome else label)
        return object_type, {
            "hs_timestamp": when,
            "hs_note_body": _lines(
                heading,
                summary,
                f"Outcome: {outcome}" if title and outcome else None,
                f"Status: {status}" if status else None,
                handled,
            ),
            "hubspot_owner_id": owner,
        }
    return object_type, {
        "hs_timestamp": when,
        "hs_communication_channel_type": "SMS",
        "hs_communication_logged_from": "CRM",
        "hs_communication_body": _lines(
            summary, f"Direction: {_slug(direction)}" if direction else None, handled
        ),
        "hubspot_owner_id": owner,
    }
