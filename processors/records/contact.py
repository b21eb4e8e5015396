"""The contact's own record in the CRM: the fields it upserts, the merged profile after a
merge, the service-area check's audit, and the owner tasks the state remembers."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from processors.area import facts as area_facts
from processors.ids import decision_id
from processors.profile import CRM_PROPERTIES
from processors.records.base import audit_entry, crm_command
from processors.records.pipeline import deal_payload
from processors.state import ContactState, OwnerTask, kept_tasks
from streams.engine import Output


def contact_fields(state: ContactState) -> dict[str, Any]:
    """What the CRM contact shows of the state, but the score (which moves with nearly
    every event, so it rides along with the changes that matter instead). Made of the
    identifiers, profile, band and area alone: ``changed_fields`` relies on it."""
    strongest = state.identifiers_by_kind()
    profile = state.profile
    properties = {k: profile[k] for k in CRM_PROPERTIES if k in profile}
    if state.band:
        properties["lead_band"] = state.band
    if state.area is not None:
        properties |= area_properties(state)
    return {
        "email": strongest.get("email"),
        "phone": strongest.get("phone"),
        "crm_id": strongest.get("crm"),
        "first_name": profile.get("first_name"),
        "last_name": profile.get("last_name"),
        "company": profile.get("company"),
        "title": profile.get("title"),
        "properties": properties,
    }


def changed_fields(before: ContactState | None, state: ContactState) -> dict[str, Any] | None:
    """``contact_fields(state)`` when they differ from ``before``'s, else None; found
    without them when what they are made of is the same (most events change none of it)."""
    if before is not None and (before.identifiers, before.profile, before.band, before.area) == (
        state.identifiers,
        state.profile,
        state.band,
        state.area,
    ):
        return None
    fields = contact_fields(state)
    return fields if before is None or contact_fields(before) != fields else None


def area_properties(state: ContactState) -> dict[str, str]:
    """The service-area check as CRM properties: service_area (in, out, unknown),
    service_branch, distance_km."""
    found = area_facts(state.area)
    return {("service_branch" if k == "branch" else k): v for k, v in found.items()}


def qualification_audit(
    before: ContactState | None, state: ContactState, event: dict[str, Any]
) -> list[Output]:
    """Audit entries for what qualification learnt: an enrichment provider's answer (the
    fields it gave), and a new service-area check (in area, branch, distance). Most events
    are neither: one string compare and one identity test."""
    out: list[Output] = []
    contact_id, at, causes = state.contact_id, event["event_time"], [event["event_id"]]
    if event["event_type"] == "CONTACT_ENRICHED":
        p = event["payload"]
        fields = p.get("fields") or {}
        reason = (
            f"{p['provider']} knows "
            + " and ".join(
                w
                for w, on in (
                    ("the company", p["company_found"]),
                    ("the person", p["person_found"]),
                )
                if on
            )
            if p["status"] == "found"
            else f"{p['provider']} knows neither {p.get('domain') or 'the domain'} nor the e-mail"
        )
        inputs = {
            "domain": p.get("domain") or "",
            **{f"enriched.{k}": v for k, v in fields.items()},
        }
        decision = "enriched" if p["status"] == "found" else "not_enriched"
        out.append(
            (
                "audit",
                contact_id,
                audit_entry(contact_id, "enrichment", decision, reason, inputs, causes, at),
            )
        )
    area = state.area
    previous = before.area if before is not None else None
    if area is not None and (
        previous is None or (previous.postcode, previous.country) != (area.postcode, area.country)
    ):
        inputs = {"postcode": area.postcode, **area_facts(area)}
        if area.team:
            inputs["team"] = area.team
        decision = {True: "in_area", False: "out_of_area", None: "area_unknown"}[area.in_area]
        out.append(
            (
                "audit",
                contact_id,
                audit_entry(contact_id, "area", decision, area.reason, inputs, causes, at),
            )
        )
    return out


def upsert_contact(
    state: ContactState, command_id: str, cause: str | None, at: datetime, **properties: str
) -> dict[str, Any]:
    """An UPSERT_CONTACT with what the CRM should show: identifiers, profile, score."""
    return upsert_of(state, contact_fields(state), command_id, cause, at, properties)


def upsert_of(
    state: ContactState,
    fields: dict[str, Any],
    command_id: str,
    cause: str | None,
    at: datetime,
    properties: dict[str, str] | None = None,
) -> dict[str, Any]:
    """upsert_contact, given ``contact_fields(state)`` already worked out (``fields`` is
    not changed)."""
    payload = {
        **fields,
        "properties": {
            "lead_score": f"{state.score:g}",
            **fields["properties"],
            **(properties or {}),
        },
    }
    return {
        "command_id": command_id,
        "command_type": "UPSERT_CONTACT",
        "contact_id": state.contact_id,
        "issued_at": at,
        "causation_event_id": cause,
        "payload": payload,
    }


def merge_outputs(
    before: ContactState | None,
    merged: ContactState,
    retired: str,
    identifier: str,
    at: datetime,
    adopted: Iterable[str] = (),
) -> list[Output]:
    """What the CRM is told of a merge, in order: MERGE_CONTACTS (it moves everything of
    ``retired`` onto the survivor), the owner the survivor keeps when it came from the
    retired contact (a CRM's own merge keeps the survivor's fields, blank or not), the
    merged profile, and a CREATE_DEAL under the survivor for each open deal it
    ``adopted`` from ``retired``.

    The retired contact's own CREATE_DEAL went out keyed by it, on another partition, in
    no order with the survivor's later stage changes; made again here (same deal id, its
    values now) it comes before them in the survivor's order, and after the profile (a CRM
    ties a deal to a contact that exists). A sink applies a CREATE_DEAL of a deal that
    exists as nothing, so whichever create comes second changes nothing. A deal without a
    name is the CRM's own (known from its change feed), never Switchboard's to create."""
    survivor = merged.contact_id
    cause = f"merged:{retired}"
    outputs = [
        crm_command(
            survivor,
            "MERGE_CONTACTS",
            decision_id("merge", survivor, retired),
            {"retired_contact_id": retired, "identifier": identifier},
            at,
            None,
        )
    ]
    previous = before.owner_id if before else None
    if merged.owner_id is not None and merged.owner_id != previous:
        payload = {
            "owner_id": merged.owner_id,
            "previous_owner_id": previous,
            "reason": f"kept from {retired}, merged into this contact",
        }
        command_id = decision_id("merge-owner", survivor, retired)
        outputs.append(crm_command(survivor, "SET_OWNER", command_id, payload, at, None))
    upsert = upsert_contact(merged, decision_id("upsert", survivor, cause), cause, at)
    outputs.append(("commands", survivor, upsert))
    for deal_id in adopted:
        deal = merged.open_deals.get(deal_id)
        if deal is None or deal.name is None:
            continue
        command_id = decision_id("merge-deal", survivor, retired, deal_id)
        payload = deal_payload(deal_id, deal.name, deal.stage, deal.amount_minor, deal.currency)
        outputs.append(crm_command(survivor, "CREATE_DEAL", command_id, payload, at, None))
    return outputs


def with_tasks(state: ContactState, outputs: list[Output]) -> ContactState:
    """``state`` remembering the tasks ``outputs`` create for the owner (a pipeline
    rule's, a workflow's, an SLA escalation's, a call's next step), for the caller lookup."""
    tasks = state.tasks
    for topic, _, record in outputs:
        if topic == "commands" and record["command_type"] == "CREATE_TASK":
            p = record["payload"]
            made = OwnerTask(
                task_id=p["task_id"], title=p["title"], due_at=p["due_at"], at=record["issued_at"]
            )
            tasks = kept_tasks(tasks, made)
    return state if tasks is state.tasks else state.model_copy(update={"tasks": tasks})
