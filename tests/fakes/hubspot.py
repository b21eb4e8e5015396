"""A local HubSpot CRM API (v3 objects, v4 associations) for the HubSpot writer's tests.

It speaks the documented shapes (see connectors/sinks/crm/hubspot.py for the pages):
bearer auth, batch upsert by a unique ``idProperty`` (an upsert updates the record holding
that value, never makes a second one), batch read by ``idProperty``, default associations,
207 multi-status naming failed inputs by ``context.objectWriteTraceId``, 400 error bodies
``{status: "error", message, correlationId, category}``, 429 with ``errorType: RATE_LIMIT``
and ``policyName``, and ``X-HubSpot-RateLimit-*`` headers. It refuses what HubSpot refuses:
more than 100 inputs, duplicate ids in one batch, a non-unique ``idProperty``, unknown
properties, bad enumeration values, unknown owners, a unique value another record holds,
an engagement without ``hs_timestamp``. Its portal is set up as the writer's docstring
says: it knows HubSpot's default properties the writer uses and the ``switchboard_``
custom properties listed there, and no other (``define`` creates one more).

It merges the way HubSpot documents (``POST /crm/v3/objects/{type}/merge``): the merged
record gets a new id; both old ids keep resolving to it (batch read by id, update by id);
the primary's property values win and the other's fill the gaps; the other's e-mail
becomes an additional e-mail that still finds the record; ``hs_merged_object_ids`` lists
the ids merged in; every association of either record moves to the merged one. The
other's *custom* unique values (``switchboard_contact_id``) are kept in the record's history
only, as HubSpot's "primary wins" rule says, so reading by them finds nothing; pass
``merged_values_resolve=True`` for a portal where they would still find the merged record
(the writer must work either way)."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from tests.fakes import FakeServer, Scripted, json_response

BATCH_LIMIT = 100
ASSOCIATION_LIMIT = 2000
ENGAGEMENTS = ("tasks", "calls", "meetings", "emails", "communications", "notes")
_ENGAGEMENT_COMMON = {"hs_timestamp", "hubspot_owner_id", "switchboard_command_id"}
PROPERTIES: dict[str, set[str]] = {
    "contacts": {
        "email", "phone", "firstname", "lastname", "company", "jobtitle", "website",
        "lifecyclestage", "hs_lead_status", "hubspot_owner_id", "switchboard_contact_id",
        # HubSpot's default contact properties for the profile
        "address", "city", "state", "zip", "country", "industry", "hs_timezone",
        "numemployees",
        # the custom properties connectors/sinks/crm/hubspot.py tells a portal to create
        "switchboard_lead_score", "switchboard_lead_band", "switchboard_service",
        "switchboard_qualification", "switchboard_timezone", "switchboard_company_size",
        "switchboard_workflow_tags", "switchboard_sla_breach", "switchboard_sla_breached_at",
        "switchboard_onboarding",
        # enrichment and the service area (qualification)
        "switchboard_annual_revenue", "switchboard_seniority", "switchboard_service_area",
        "switchboard_service_branch", "switchboard_distance_km",
    },
    "deals": {
        "dealname", "dealstage", "pipeline", "amount", "deal_currency_code", "closedate",
        "hubspot_owner_id", "switchboard_deal_id",
    },
    "tasks": _ENGAGEMENT_COMMON
    | {"hs_task_subject", "hs_task_body", "hs_task_status", "hs_task_priority", "hs_task_type"},
    "calls": _ENGAGEMENT_COMMON
    | {"hs_call_title", "hs_call_body", "hs_call_duration", "hs_call_status",
       "hs_call_direction", "hs_call_disposition", "hs_call_recording_url"},
    "meetings": _ENGAGEMENT_COMMON
    | {"hs_meeting_title", "hs_meeting_body", "hs_meeting_start_time", "hs_meeting_end_time",
       "hs_meeting_outcome"},
    "emails": _ENGAGEMENT_COMMON
    | {"hs_email_text", "hs_email_subject", "hs_email_direction", "hs_email_status"},
    "communications": _ENGAGEMENT_COMMON
    | {"hs_communication_channel_type", "hs_communication_logged_from",
       "hs_communication_body"},
    "notes": _ENGAGEMENT_COMMON | {"hs_note_body"},
    # The job records' custom object, as connectors/sinks/crm/hubspot.py tells a portal to
    # define it (its fully qualified name p_<name>).
    "p_switchboard_jobs": {
        "switchboard_job_id", "job_name", "job_type", "job_status", "service", "address",
        "amount", "currency", "scheduled_for", "completed_at", "technician", "field_job_id",
        "related_job_id", "hubspot_owner_id",
    },
}  # fmt: skip
UNIQUE: dict[str, set[str]] = {
    "contacts": {"email", "switchboard_contact_id"},
    "deals": {"switchboard_deal_id"},
    **{kind: {"switchboard_command_id"} for kind in ENGAGEMENTS},
    "p_switchboard_jobs": {"switchboard_job_id"},
}
ENUMS: dict[str, set[str]] = {
    "lifecyclestage": {
        "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity",
        "customer", "evangelist", "other",
    },
    # A few of HubSpot's own time zone codes (it has one per zone it knows, not IANA names).
    "hs_timezone": {
        "america_slash_new_york", "america_slash_chicago", "america_slash_denver",
        "america_slash_los_angeles", "europe_slash_london", "europe_slash_lisbon",
    },
    "hs_task_status": {"NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"},
    "hs_task_priority": {"NONE", "LOW", "MEDIUM", "HIGH"},
    "hs_call_status": {
        "BUSY", "CALLING_CRM_USER", "CANCELED", "COMPLETED", "CONNECTING", "FAILED",
        "IN_PROGRESS", "NO_ANSWER", "QUEUED", "RINGING",
    },
    "hs_call_direction": {"INBOUND", "OUTBOUND"},
    # The default call outcomes: Busy, Connected, Left live message, Left voicemail,
    # No answer, Wrong number.
    "hs_call_disposition": {
        "9d9162e7-6cf3-4944-bf63-4dff82258764", "f240bbac-87c9-4f6e-bf70-924b57d47db7",
        "a4c4c377-d246-4b32-a13b-75a56a4cd0ff", "b2cf5968-551e-4856-9783-52b3da59a7d0",
        "73a0d17f-1163-4015-bdd5-ec830791da20", "17b47fee-58de-441e-a44c-c6300d46f273",
    },
    "hs_email_direction": {"EMAIL", "INCOMING_EMAIL", "FORWARDED_EMAIL"},
    "hs_communication_channel_type": {"SMS", "WHATS_APP", "LINKEDIN_MESSAGE"},
    "hs_communication_logged_from": {"CRM"},
}  # fmt: skip
# HUBSPOT_DEFINED default association type ids, {object}-to-contact.
ASSOCIATION_TYPES = {
    "deals": 3,
    "tasks": 204,
    "calls": 194,
    "meetings": 200,
    "emails": 198,
    "communications": 82,
    "notes": 202,
    # A custom object's association to contacts gets its type id when the schema is made.
    "p_switchboard_jobs": 71,
}
# Datetime and number properties (epoch millis or ISO 8601; a decimal number).
DATETIMES = {"hs_timestamp", "scheduled_for", "completed_at"}
NUMBERS = {"amount"}
ADDITIONAL_EMAILS = "hs_additional_emails"
MERGED_IDS = "hs_merged_object_ids"


def error_body(message: str, category: str = "VALIDATION_ERROR", **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeHubSpot(FakeServer):
    """HubSpot on loopback. ``objects[type][id]`` holds each record's properties;
    ``associations`` holds (from type, from id, to type, to id)."""

    def __init__(
        self,
        token: str = "pat-na1-test",
        owners: set[str] | None = None,
        merged_values_resolve: bool = False,
    ) -> None:
        super().__init__()
        self.token = token
        self.owners = owners if owners is not None else {"9001", "9002"}
        self.objects: dict[str, dict[str, dict[str, str]]] = {kind: {} for kind in PROPERTIES}
        self.properties = {kind: set(names) for kind, names in PROPERTIES.items()}
        self.associations: set[tuple[str, str, str, str]] = set()
        self.merged_into: dict[str, str] = {}  # a merged-away record id -> the merged record
        self.merged_values_resolve = merged_values_resolve
        self._merged_values: dict[tuple[str, str, str], str] = {}  # (type, prop, value) -> id
        self._merge_refusal: str | None = None
        self._ids = itertools.count(1001)
        self._rejects: dict[str, tuple[str, str]] = {}
        self._remaining = 190

    # -- what tests look at -------------------------------------------------------------

    def find(self, object_type: str, prop: str, value: str) -> list[dict[str, str]]:
        """Every stored record of ``object_type`` whose ``prop`` is ``value``."""
        return [p for p in self.objects[object_type].values() if p.get(prop) == value]

    def resolve(self, object_id: str) -> str:
        """The id a record is known by now: a merged-away id resolves to the merged one."""
        seen = set()
        while object_id in self.merged_into and object_id not in seen:
            seen.add(object_id)
            object_id = self.merged_into[object_id]
        return object_id

    def associated(self, object_type: str, contact_object_id: str) -> set[str]:
        """The ids of the ``object_type`` records tied to this contact."""
        return {
            from_id
            for from_type, from_id, to_type, to_id in self.associations
            if from_type == object_type and to_type == "contacts" and to_id == contact_object_id
        }

    def define(self, object_type: str, name: str) -> None:
        """Create a custom property, as a portal admin does (properties API or settings)."""
        self.properties[object_type].add(name)

    def reject(self, id_value: str, message: str, category: str = "VALIDATION_ERROR") -> None:
        """Make every upsert input with this id fail (a 207 multi-status answer)."""
        self._rejects[id_value] = (category, message)

    def refuse_merges(self, message: str | None) -> None:
        """Refuse every merge with a 400 VALIDATION_ERROR saying ``message`` (None: stop)."""
        self._merge_refusal = message

    def accept(self, id_value: str) -> None:
        """Stop rejecting this id (the portal was fixed)."""
        self._rejects.pop(id_value, None)

    def rate_limit(
        self, retry_after: str | None = "1", policy: str = "TEN_SECONDLY_ROLLING"
    ) -> None:
        """Answer the next request with HubSpot's 429."""
        body = error_body(
            f"You have reached your {policy.lower()} limit.",
            "RATE_LIMITS",
            errorType="RATE_LIMIT",
            policyName=policy,
        )
        headers = {"X-HubSpot-RateLimit-Remaining": "0"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        self.fail_next(Scripted(429, _dumps(body), headers))

    # -- protocol -----------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/crm/v3/objects/{object_type}/batch/upsert", self._upsert)
        app.router.add_post("/crm/v3/objects/{object_type}/batch/read", self._read)
        app.router.add_post("/crm/v3/objects/{object_type}/merge", self._merge)
        app.router.add_patch("/crm/v3/objects/{object_type}/{object_id}", self._update)
        app.router.add_post(
            "/crm/v4/associations/{from_type}/{to_type}/batch/associate/default",
            self._associate,
        )
        app.router.add_post(
            "/crm/v4/associations/{from_type}/{to_type}/batch/read", self._read_associations
        )

    def authorized(self, request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("Authorization") == f"Bearer {self.token}":
            return None
        return json_response(
            error_body(
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication and you can find more details at "
                "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                "INVALID_AUTHENTICATION",
            ),
            401,
        )

    def decorate(self, response: web.StreamResponse) -> None:
        self._remaining = max(self._remaining - 1, 0)
        response.headers.setdefault("X-HubSpot-RateLimit-Max", "190")
        response.headers.setdefault("X-HubSpot-RateLimit-Remaining", str(self._remaining))
        response.headers.setdefault("X-HubSpot-RateLimit-Interval-Milliseconds", "10000")

    async def _inputs(
        self, request: web.Request, limit: int
    ) -> tuple[str, list[Any]] | web.Response:
        object_type = request.match_info.get("object_type") or request.match_info["from_type"]
        if object_type not in PROPERTIES:
            return json_response(
                error_body(f"Unable to infer object type from: {object_type}"), 400
            )
        try:
            body = await request.json()
        except ValueError:
            return json_response(error_body("Invalid input JSON on line 1"), 400)
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return json_response(error_body("Invalid input: inputs must not be empty"), 400)
        if len(inputs) > limit:
            return json_response(
                error_body(
                    f"Too many inputs: {len(inputs)} were sent, the limit is {limit}.",
                    context={"inputs": [str(len(inputs))]},
                ),
                400,
            )
        return object_type, inputs

    async def _upsert(self, request: web.Request) -> web.Response:
        parsed = await self._inputs(request, BATCH_LIMIT)
        if isinstance(parsed, web.Response):
            return parsed
        object_type, inputs = parsed
        ids = [str(i.get("id")) for i in inputs if isinstance(i, dict)]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            return json_response(
                error_body(
                    f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique",
                    context={"ids": duplicates},
                ),
                400,
            )
        for item in inputs:
            bad = _malformed_input(object_type, item)
            if bad:
                return json_response(error_body(bad), 400)
        results, errors = [], []
        for item in inputs:
            trace = item.get("objectWriteTraceId")
            outcome = self._upsert_one(object_type, item)
            if isinstance(outcome, tuple):
                category, message = outcome
                if trace is None:  # no multi-status without trace ids: the batch fails
                    return json_response(error_body(message, category), 400)
                errors.append(
                    {
                        "status": "error",
                        "category": category,
                        "message": message,
                        "context": {"objectWriteTraceId": [trace]},
                    }
                )
            else:
                results.append({**outcome, **({"objectWriteTraceId": trace} if trace else {})})
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": _now(),
            "completedAt": _now(),
        }
        if errors:
            answer.update(errors=errors, numErrors=len(errors))
        return json_response(answer, 207 if errors else 200)

    def _upsert_one(
        self, object_type: str, item: dict[str, Any]
    ) -> dict[str, Any] | tuple[str, str]:
        """The stored record (HubSpot's result shape), or (category, message) on refusal."""
        id_property, id_value = item["idProperty"], str(item["id"])
        if id_value in self._rejects:
            return self._rejects[id_value]
        properties = {k: str(v) for k, v in item.get("properties", {}).items() if v is not None}
        problem = self._invalid_properties(object_type, properties)
        if problem:
            return problem
        existing = self._lookup(object_type, id_property, id_value)
        if existing is None and object_type in ENGAGEMENTS and "hs_timestamp" not in properties:
            return "VALIDATION_ERROR", "Missing required property: hs_timestamp"
        object_id = existing or str(next(self._ids))
        conflict = self._unique_conflict(object_type, object_id, properties)
        if conflict:
            return conflict
        stored = self.objects[object_type].setdefault(object_id, {id_property: id_value})
        stored.update(properties)
        stored["hs_object_id"] = object_id
        return {**_shown(object_id, stored), "new": existing is None}

    def _invalid_properties(
        self, object_type: str, properties: dict[str, str]
    ) -> tuple[str, str] | None:
        unknown = sorted(set(properties) - self.properties[object_type])
        if unknown:
            return "VALIDATION_ERROR", "Property values were not valid: " + ", ".join(
                f'{{"isValid":false,"message":"Property \\"{name}\\" does not exist",'
                f'"error":"PROPERTY_DOESNT_EXIST","name":"{name}"}}'
                for name in unknown
            )
        for name, value in properties.items():
            problem = _invalid_value(name, value, self.owners)
            if problem:
                return "VALIDATION_ERROR", f"Property values were not valid: {problem}"
        return None

    def _unique_conflict(
        self, object_type: str, object_id: str, properties: dict[str, str]
    ) -> tuple[str, str] | None:
        for name in UNIQUE[object_type] & set(properties):
            holder = self._lookup(object_type, name, properties[name])
            if holder is not None and holder != object_id:
                return "CONFLICT", (
                    f"A {object_type[:-1]} with the {name} '{properties[name]}' already exists."
                )
        return None

    def _lookup(self, object_type: str, prop: str, value: str) -> str | None:
        fold = str.lower if prop == "email" else str
        for object_id, props in self.objects[object_type].items():
            if prop in props and fold(props[prop]) == fold(value):
                return object_id
        if prop == "email":  # a merged-in contact's e-mail still finds the merged record
            for object_id, props in self.objects[object_type].items():
                extra = props.get(ADDITIONAL_EMAILS, "").split(";")
                if fold(value) in {fold(e) for e in extra if e}:
                    return object_id
        if self.merged_values_resolve:
            held = self._merged_values.get((object_type, prop, fold(value)))
            if held is not None and self.resolve(held) in self.objects[object_type]:
                return self.resolve(held)
        return None

    async def _read(self, request: web.Request) -> web.Response:
        parsed = await self._inputs(request, BATCH_LIMIT)
        if isinstance(parsed, web.Response):
            return parsed
        object_type, inputs = parsed
        body = await request.json()
        id_property = body.get("idProperty", "hs_object_id")
        if id_property != "hs_object_id" and id_property not in UNIQUE[object_type]:
            return json_response(error_body(f"{id_property} is not a unique property"), 400)
        wanted = body.get("properties") or []
        results, missing = [], []
        for item in inputs:
            value = str(item.get("id"))
            object_id = (
                self.resolve(value)
                if id_property == "hs_object_id"
                else self._lookup(object_type, id_property, value)
            )
            if object_id is None or object_id not in self.objects[object_type]:
                missing.append(value)
                continue
            props = self.objects[object_type][object_id]
            shown = {k: props.get(k) for k in [*wanted, "hs_object_id"]}
            results.append({"id": object_id, "properties": shown, "archived": False})
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if missing:
            kind = object_type[:-1].upper()
            answer["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"Could not get some {kind} objects, they may be deleted or "
                    "not exist. Check that ids are valid.",
                    "context": {"ids": missing},
                }
            ]
            answer["numErrors"] = 1
        return json_response(answer, 207 if missing else 200)

    async def _associate(self, request: web.Request) -> web.Response:
        parsed = await self._inputs(request, ASSOCIATION_LIMIT)
        if isinstance(parsed, web.Response):
            return parsed
        from_type, inputs = parsed
        to_type = request.match_info["to_type"]
        if to_type != "contacts" or from_type not in ASSOCIATION_TYPES:
            return json_response(error_body(f"No default association {from_type}->{to_type}"), 400)
        results, errors = [], []
        for item in inputs:
            from_id, to_id = str(item["from"]["id"]), str(item["to"]["id"])
            if from_id not in self.objects[from_type] or to_id not in self.objects[to_type]:
                errors.append(
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": f"No {from_type} {from_id} or {to_type} {to_id}",
                        "context": {"fromObjectId": [from_id]},
                    }
                )
                continue
            self.associations.add((from_type, from_id, to_type, to_id))
            spec = {
                "associationCategory": "HUBSPOT_DEFINED",
                "associationTypeId": ASSOCIATION_TYPES[from_type],
            }
            results.append({"from": {"id": from_id}, "to": {"id": to_id}, "associationSpec": spec})
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if errors:
            answer.update(errors=errors, numErrors=len(errors))
        return json_response(answer, 207 if errors else 200)

    async def _read_associations(self, request: web.Request) -> web.Response:
        parsed = await self._inputs(request, ASSOCIATION_LIMIT)
        if isinstance(parsed, web.Response):
            return parsed
        from_type, inputs = parsed
        to_type = request.match_info["to_type"]
        if to_type not in PROPERTIES:
            return json_response(error_body(f"Unable to infer object type from: {to_type}"), 400)
        results, missing = [], []
        for item in inputs:
            from_id = self.resolve(str(item.get("id") if isinstance(item, dict) else item))
            to_ids = sorted(
                to_id
                for kind, object_id, to_kind, to_id in self.associations
                if (kind, object_id, to_kind) == (from_type, from_id, to_type)
            )
            if not to_ids:
                missing.append(from_id)
                continue
            spec = {
                "category": "HUBSPOT_DEFINED",
                "typeId": ASSOCIATION_TYPES.get(from_type, 1),
                "label": None,
            }
            results.append(
                {
                    "from": {"id": from_id},
                    "to": [{"toObjectId": int(t), "associationTypes": [spec]} for t in to_ids],
                }
            )
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if missing:
            answer["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": f"No {to_type} are associated with {from_type} {i}.",
                    "context": {"fromObjectId": [i]},
                }
                for i in missing
            ]
            answer["numErrors"] = len(missing)
        return json_response(answer, 207 if missing else 200)

    async def _merge(self, request: web.Request) -> web.Response:
        object_type = request.match_info["object_type"]
        if object_type not in PROPERTIES:
            return json_response(
                error_body(f"Unable to infer object type from: {object_type}"), 400
            )
        try:
            body = await request.json()
        except ValueError:
            return json_response(error_body("Invalid input JSON on line 1"), 400)
        ids = [
            body.get(k) if isinstance(body, dict) else None
            for k in ("primaryObjectId", "objectIdToMerge")
        ]
        if not all(isinstance(i, str | int) and str(i) for i in ids):
            return json_response(
                error_body("Invalid input JSON: primaryObjectId and objectIdToMerge are required"),
                400,
            )
        if self._merge_refusal is not None:
            return json_response(error_body(self._merge_refusal), 400)
        primary, other = (self.resolve(str(i)) for i in ids)
        stored = self.objects[object_type]
        if primary not in stored or other not in stored:
            return json_response(error_body("resource not found", "OBJECT_NOT_FOUND"), 404)
        if primary == other:
            return json_response(
                error_body(f"Cannot merge {object_type[:-1]} {primary} with itself"), 400
            )
        kept, merged_in = stored.pop(primary), stored.pop(other)
        new_id = str(next(self._ids))
        record = {k: v for k, v in merged_in.items() if v}
        record.update({k: v for k, v in kept.items() if v})  # the primary's values win
        emails = [e for p in (kept, merged_in) for e in p.get(ADDITIONAL_EMAILS, "").split(";")]
        if merged_in.get("email") and merged_in.get("email") != record.get("email"):
            emails.append(merged_in["email"])
        record.pop(ADDITIONAL_EMAILS, None)
        if any(emails):
            record[ADDITIONAL_EMAILS] = ";".join(dict.fromkeys(e for e in emails if e))
        before = [i for p in (kept, merged_in) for i in p.get(MERGED_IDS, "").split(";") if i]
        record[MERGED_IDS] = ";".join([*before, primary, other])
        record["hs_object_id"] = new_id
        for name in UNIQUE[object_type]:  # the merged-in record's own unique values
            value = merged_in.get(name)
            if value and value != record.get(name):
                fold = value.lower() if name == "email" else value
                self._merged_values[(object_type, name, fold)] = new_id
        stored[new_id] = record
        self.merged_into[primary] = self.merged_into[other] = new_id
        self.associations = {
            (
                f,
                self._moved(f, fid, object_type, primary, other, new_id),
                t,
                self._moved(t, tid, object_type, primary, other, new_id),
            )
            for f, fid, t, tid in self.associations
        }
        return json_response(_shown(new_id, record))

    @staticmethod
    def _moved(kind: str, object_id: str, merged: str, a: str, b: str, new_id: str) -> str:
        return new_id if kind == merged and object_id in (a, b) else object_id

    async def _update(self, request: web.Request) -> web.Response:
        object_type = request.match_info["object_type"]
        if object_type not in PROPERTIES:
            return json_response(
                error_body(f"Unable to infer object type from: {object_type}"), 400
            )
        object_id = self.resolve(request.match_info["object_id"])
        if object_id not in self.objects[object_type]:
            return json_response(error_body("resource not found", "OBJECT_NOT_FOUND"), 404)
        try:
            body = await request.json()
        except ValueError:
            return json_response(error_body("Invalid input JSON on line 1"), 400)
        raw = body.get("properties") if isinstance(body, dict) else None
        if not isinstance(raw, dict):
            return json_response(error_body("Invalid input JSON: properties is required"), 400)
        properties = {k: str(v) for k, v in raw.items() if v is not None}
        problem = self._invalid_properties(object_type, properties) or self._unique_conflict(
            object_type, object_id, properties
        )
        if problem:
            category, message = problem
            return json_response(
                error_body(message, category), 409 if category == "CONFLICT" else 400
            )
        stored = self.objects[object_type][object_id]
        stored.update(properties)
        return json_response(_shown(object_id, stored))


def _shown(object_id: str, stored: dict[str, str]) -> dict[str, Any]:
    """A record the way HubSpot answers with one."""
    now = _now()
    return {
        "id": object_id,
        "properties": dict(stored),
        "createdAt": now,
        "updatedAt": now,
        "archived": False,
    }


def _malformed_input(object_type: str, item: Any) -> str | None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return "Invalid input JSON: each input needs a string id"
    if item.get("idProperty") not in UNIQUE[object_type]:
        return f"{item.get('idProperty')} is not a unique property of {object_type}"
    properties = item.get("properties")
    if not isinstance(properties, dict) or any(
        isinstance(v, dict | list) for v in properties.values()
    ):
        return "Invalid input JSON: properties must map names to values"
    return None


def _invalid_value(name: str, value: str, owners: set[str]) -> str | None:
    if name in ENUMS and value not in ENUMS[name]:
        return f"{value} was not one of the allowed options for {name}: {sorted(ENUMS[name])}"
    if name == "hubspot_owner_id" and value not in owners:
        return f"{value} is not a valid owner id"
    if name in DATETIMES and not value.isdigit():
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return f"{value} is not a valid datetime for {name}"
    if name in NUMBERS:
        try:
            float(value)
        except ValueError:
            return f"{value} is not a valid number for {name}"
    return None


def _dumps(body: Mapping[str, Any]) -> str:
    return json.dumps(body)


@pytest.fixture
def fake_hubspot() -> Iterator[FakeHubSpot]:
    """A running FakeHubSpot; list ``tests.fakes.hubspot`` in ``pytest_plugins`` to use it."""
    with FakeHubSpot.running() as fake:
        yield fake
