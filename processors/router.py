"""The router stage: leads to route and roster changes arrive on one partition of the
routing topic, in one order, so capacity and the weighted round-robin are exact.

For each lead it decides (processors.routing) and sends the assignment back to the
contact stage, a SET_OWNER CRM command, a notification to the rep with the context
they need (who, why now, score, recent activity, recommended first action), and an
audit entry with the rule that matched."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from processors.area import facts as area_facts
from processors.ids import decision_id
from processors.records.base import ROUTER_KEY, audit_entry, crm_command, notification
from processors.routing import Assignment, Rep, RoutingRules, rep_from_record, route
from processors.state import ContactState
from streams import metrics
from streams.engine import Decoded, Engine, Output
from streams.serde import AvroSerde
from streams.tables import Parsed


class RouterState(BaseModel):
    roster: dict[str, Rep] = Field(default_factory=dict)
    rotation: dict[str, int] = Field(default_factory=dict)
    # Leads this router assigned since the roster last reported each rep's open leads.
    assigned: dict[str, int] = Field(default_factory=dict)

    def effective_roster(self) -> dict[str, Rep]:
        return {
            rep_id: rep.model_copy(
                update={"open_leads": rep.open_leads + self.assigned.get(rep_id, 0)}
            )
            for rep_id, rep in self.roster.items()
        }


def recommended_action(contact: ContactState) -> str:
    inbound = sorted(contact.last_inbound.items(), key=lambda item: item[1])
    latest = inbound[-1][0] if inbound else None
    has_phone = any(i.startswith("phone:") for i in contact.identifiers)
    if latest == "meeting":
        return "confirm the booked meeting and prepare for it"
    if latest == "phone" or (has_phone and latest == "web"):
        return "call back within 5 minutes"
    if latest == "email":
        return "reply to their e-mail today"
    return "reach out by e-mail today" if not has_phone else "call today"


def notification_context(contact: ContactState, decision: Assignment, rep: Rep) -> dict[str, str]:
    profile = contact.profile
    recent = ", ".join(
        f"{channel} {at:%Y-%m-%d %H:%M}Z"
        for channel, at in sorted(contact.last_inbound.items(), key=lambda i: i[1], reverse=True)[
            :3
        ]
    )
    return {
        "rep": rep.name,
        "who": contact.who(),
        "company": profile.get("company", ""),
        "contact_id": contact.contact_id,
        "identifiers": ", ".join(contact.identifiers),
        "why_now": f"score {contact.score:g} ({contact.band or 'no band'}); {decision.reason}",
        "score": f"{contact.score:g}",
        "recent_activity": recent or "none recorded",
        "recommended_action": recommended_action(contact),
    }


def addresses(roster: dict[str, Rep], rep_id: str | None) -> dict[str, str | None]:
    """The chosen rep's e-mail and their manager's, for SLA reminders and escalations."""
    rep = roster.get(rep_id) if rep_id else None
    manager = roster.get(rep.manager_id) if rep and rep.manager_id else None
    return {
        "rep_email": rep.email if rep else None,
        "manager_email": manager.email if manager else None,
    }


def handle(
    message: dict[str, Any], state: RouterState, rules: RoutingRules
) -> tuple[RouterState, list[Output]]:
    """Apply one routing message: the router's state after it, and what it sends."""
    at: datetime = message["at"]
    outputs: list[Output] = []
    if message["kind"] == "ROSTER":
        rep_id = message["rep_id"]
        roster = dict(state.roster)
        if message["rep"] is None:
            roster.pop(rep_id, None)
        else:
            roster[rep_id] = rep_from_record(json.loads(message["rep"]))
        # The roster's own count of open leads now includes what we assigned before.
        assigned = {k: v for k, v in state.assigned.items() if k != rep_id}
        return state.model_copy(update={"roster": roster, "assigned": assigned}), outputs

    contact = ContactState.model_validate_json(message["contact"])
    rotation, decision = route(contact, state.effective_roster(), state.rotation, rules, at)
    cause = message["cause"] or ""
    contact_id = contact.contact_id
    assignment = {
        "contact_id": contact_id,
        "rep_id": decision.rep_id,
        "rule": decision.rule,
        "reason": decision.reason,
        "held": decision.held,
        "at": at,
        **addresses(state.roster, decision.rep_id),
    }
    outputs.append(("assignments", contact_id, assignment))
    outcome = "assigned" if decision.rep_id else ("held" if decision.held else "unassigned")
    metrics.labelled(metrics.ROUTING_DECISIONS, decision.rule or "none", outcome).inc()
    if decision.rep_id:
        metrics.labelled(metrics.ASSIGNMENTS, decision.rep_id).inc()
    inputs = {
        "rule": decision.rule or "",
        "rep_id": decision.rep_id or "",
        "considered": ",".join(decision.considered),
        "score": f"{contact.score:g}",
        "band": contact.band or "",
        "country": contact.profile.get("country", ""),
        "industry": contact.profile.get("industry", ""),
    }
    # What the decision could see of the service area and of enrichment (for explain).
    inputs |= {f"area.{k}": v for k, v in area_facts(contact.area).items()}
    inputs |= {
        f"profile.{field}": contact.profile[field]
        for field in ("company_size", "annual_revenue", "seniority")
        if field in contact.profile
    }
    causes = [cause] if cause else []
    audit = audit_entry(contact_id, "routing", outcome, decision.reason, inputs, causes, at)
    audit["audit_id"] = decision_id(contact_id, "routing", outcome, cause)  # ids as they were
    outputs.append(("audit", contact_id, audit))
    if decision.rep_id is None:
        return state.model_copy(update={"rotation": rotation}), outputs
    rep = state.roster[decision.rep_id]
    payload = {
        "owner_id": decision.rep_id,
        "previous_owner_id": contact.owner_id,
        "reason": f"{decision.rule}: {decision.reason}",
    }
    command_id = decision_id("set-owner", contact_id, decision.rep_id, cause)
    outputs.append(crm_command(contact_id, "SET_OWNER", command_id, payload, at, cause or None))
    outputs.append(
        notification(
            contact_id,
            decision_id("new-lead", contact_id, decision.rep_id, cause),
            "EMAIL",
            rep.email,
            "new_lead",
            f"New lead for you: score {contact.score:g}",
            notification_context(contact, decision, rep),
            at,
            cause or None,
        )
    )
    assigned = dict(state.assigned)
    assigned[decision.rep_id] = assigned.get(decision.rep_id, 0) + 1
    return state.model_copy(update={"rotation": rotation, "assigned": assigned}), outputs


def register(
    engine: Engine,
    roster: tuple[str, AvroSerde],
    routing: tuple[str, AvroSerde],
    rules: RoutingRules,
) -> None:
    # Parsed once and dumped once per checkpoint: every routing message reads and writes it.
    states = Parsed(
        engine.table("router"), RouterState.model_validate_json, RouterState.model_dump_json
    )
    metrics.declare(
        metrics.ROUTING_DECISIONS,
        (
            {"rule": rule, "outcome": outcome}
            for rule in [*(r.name for r in rules.rules), "none"]
            for outcome in ("assigned", "held", "unassigned")
        ),
    )

    def roster_change(item: Decoded) -> list[Output]:
        """Roster changes join the leads' order on the router's partition."""
        change = {
            "kind": "ROSTER",
            "contact_id": None,
            "contact": None,
            "rep_id": (item.key or b"").decode(),
            # None: the rep was removed (a tombstone)
            "rep": None if item.record is None else json.dumps(item.record),
            "cause": None,
            "at": datetime.fromtimestamp(item.timestamp_ms / 1000, UTC),
        }
        return [("routing", ROUTER_KEY, change)]

    declared: set[str] = set()  # reps whose assignment count is exported

    def decide(item: Decoded) -> list[Output]:
        assert item.record is not None
        state = states.get(ROUTER_KEY) or RouterState()
        if not declared.issuperset(state.roster):  # once per rep, not per lead
            metrics.declare(metrics.ASSIGNMENTS, ({"rep": rep} for rep in state.roster))
            declared.update(state.roster)
        state, outputs = handle(item.record, state, rules)
        states[ROUTER_KEY] = state
        return outputs

    engine.route(roster, "roster", roster_change, tombstones=True)
    engine.route(routing, "routing", decide, urgent=True)
