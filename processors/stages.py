"""The stateful stages on the workers' tables (streams.tables), wired to their topics.

identity (keyed by identifier)     contact-events + identity-claims  -> table identity
    resolves each event to a contact id, claims the event's other identifiers, starts
    merges, and re-keys the event by contact id onto events-by-contact.
contact (keyed by contact id)      events-by-contact, contact-merges, assignments, timers
                                   -> tables contacts, aliases, timers, workflow-runs
    keeps the contact's state and score (processors.contact), runs merges step by step,
    forwards a retired contact's events to its survivor, moves deals on what happened
    (processors.pipeline), starts and stops SLA clocks and fires their escalation steps
    when due (processors.sla_clocks), runs the contact's workflows and ends their waits
    (processors.workflows.runs), and writes CRM commands, notifications, routing requests
    and audit entries (processors.records), and invoices for completed billable jobs
    to the billing sink.

Each stage is a function of one decoded record: it reads and writes its tables and
returns what it sends; the runtime (streams.engine) commits both in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from processors import sla
from processors.area import ServiceAreas
from processors.contact import advance
from processors.identity import claim, merge_states, resolve
from processors.ids import decision_id
from processors.jobs import JOB_EVENTS, Operations
from processors.jobs import decide as decide_job
from processors.matching import ASSIGNED
from processors.pipeline import PipelineRules, apply_rules
from processors.records import (
    activity_outputs,
    audit_entry,
    breach_trigger,
    contact_fields,
    invoice_outputs,
    job_outputs,
    merge_outputs,
    next_step,
    next_step_outputs,
    pipeline_outputs,
    qualification_audit,
    route_request,
    stage_change_triggers,
    upsert_contact,
    with_tasks,
)
from processors.routing import RoutingRules
from processors.scoring import ScoringModel, components_at, is_meaningful, total
from processors.sla_clocks import SlaClocks
from processors.state import (
    PENDING_TASKS,
    ContactState,
    OwnerTask,
    identifiers_of,
    kept_tasks,
)
from processors.workflows.engine import Engine as WorkflowEngine
from processors.workflows.library import Library
from processors.workflows.runs import WorkflowRuns
from streams import metrics
from streams.clock import Clock
from streams.engine import Decoded, Engine, Forwarded, Output, Refused
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.tables import Parsed

# Identifiers remembered as claimed per key; an older one is claimed again if it recurs.
CLAIMED_PER_KEY = 50


@dataclass(frozen=True)
class Inputs:
    """The topics the stages read (full names) and their serdes."""

    events: tuple[str, AvroSerde]
    claims: tuple[str, AvroSerde]
    by_contact: tuple[str, AvroSerde]
    merges: tuple[str, AvroSerde]
    assignments: tuple[str, AvroSerde]
    timers: tuple[str, AvroSerde]


@dataclass(frozen=True)
class Views:
    """Read-only views of the tables for `switchboard explain`, of the partitions this
    worker holds."""

    identifier: Callable[[str], dict[str, Any]]
    contact: Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class Rules:
    """The declarative files the stages run on, validated at load."""

    scoring: ScoringModel
    routing: RoutingRules
    sla: sla.SlaPolicies
    pipeline: PipelineRules
    workflows: Library
    areas: ServiceAreas | None = None  # None: no service-area check


def observe_age(stage: str, event: dict[str, Any]) -> None:
    age = datetime.now(UTC) - event["received_time"]
    metrics.labelled(metrics.EVENT_AGE, stage).observe(max(age.total_seconds(), 0.0))


def register(
    engine: Engine, settings: Settings, inputs: Inputs, rules: Rules, clock: Clock
) -> Views:
    identity = engine.table("identity")
    claimed = engine.table("claimed")  # identifier -> identifiers claimed with it (JSON)
    contacts = Parsed(
        engine.table("contacts"), ContactState.model_validate_json, ContactState.model_dump_json
    )
    aliases = engine.table("aliases")
    model, routing_rules, areas = rules.scoring, rules.routing, rules.areas
    metrics.declare(metrics.BAND_ENTRIES, ({"band": band.name} for band in model.bands))
    metrics.declare(
        metrics.PIPELINE_MOVES,
        ({"rule": r.name, "stage": r.move_to} for r in rules.pipeline.rules if r.move_to),
    )

    def resolve_event(item: Decoded) -> list[Output | Forwarded]:
        event = record_of(item)
        # The gateway refuses these already; an import or another producer may not. A time
        # far ahead would start clocks no later event could stop.
        arrived = max(clock.now(), event["received_time"])
        ahead = (event["event_time"] - arrived).total_seconds()
        if ahead > settings.max_event_skew_s:
            raise Refused(
                f"field event_time: {event['event_time'].isoformat()} is {ahead:.0f}s after "
                f"it arrived (max_event_skew_s is {settings.max_event_skew_s:g})"
            )
        ids = identifiers_of(event["identity"])
        key = (item.key or b"").decode() or ids[0]
        found = resolve(key, identity.get(key), ids)
        if found.minted:
            identity[key] = found.contact_id
        # Each identifier is claimed once with the key it came with: a claim answered
        # before (linked, or merged) gives the same answer again.
        before = json.loads(claimed.get(key) or "[]")
        new = [i for i in found.claims if i not in before]
        if new:
            claimed[key] = json.dumps([*before, *new][-CLAIMED_PER_KEY:])
        outputs: list[Output | Forwarded] = [
            (
                "claims",
                identifier,
                {
                    "identifier": identifier,
                    "contact_id": found.contact_id,
                    "event_id": event["event_id"],
                    "claimed_at": event["event_time"],
                },
            )
            for identifier in new
        ]
        # Forwarded as it came: the contact id is the key (Avro encoding is much of a
        # worker's time, and the event does not change).
        assert item.value is not None
        outputs.append(("by_contact", found.contact_id, item.value))
        metrics.labelled(
            metrics.EVENTS, "identity", event["event_type"], event["source_system"]
        ).inc()
        observe_age("identity", event)
        return outputs

    def on_claim(item: Decoded) -> list[Output]:
        request = record_of(item)
        identifier = request["identifier"]
        outcome = claim(identifier, identity.get(identifier), request["contact_id"])
        if outcome.linked or outcome.merge:
            identity[identifier] = outcome.owner
        if outcome.merge is None:
            return []
        merge = outcome.merge
        step = {
            "step": "REQUEST",
            "target": merge.loser,
            "other": merge.survivor,
            "identifier": identifier,
            "state": None,
            "timers": None,
            "workflows": None,
            "at": request["claimed_at"],
        }
        return [("merges", merge.loser, step)]

    clocks = SlaClocks(engine, settings, rules.sla, clock)
    operations = Operations(settings.operations_channel, tuple(settings.operations_recipients))
    runs = WorkflowRuns(engine, settings, WorkflowEngine(rules.workflows, rules.pipeline), clock)

    def on_event(contact_id: str, event: dict[str, Any], partition: int) -> list[Output]:
        event["contact_id"] = contact_id  # forwarded as it came: the key names it
        survivor = aliases.get(contact_id)
        if survivor is not None:  # retired by a merge: its survivor takes the event
            return [("by_contact", survivor, {**event, "contact_id": survivor})]
        before = contacts.get(contact_id)
        outcome = advance(before or ContactState(contact_id=contact_id), event, model, areas)
        decision = outcome.score
        if decision is None:
            return []  # seen before: nothing changes, nothing is sent again
        state = outcome.state
        out: list[Output] = []
        metrics.labelled(
            metrics.EVENTS, "contact", event["event_type"], event["source_system"]
        ).inc()
        observe_age("contact", event)
        at = event["event_time"]
        causes = [event["event_id"]]
        if decision.crossed_band and decision.band is not None:
            metrics.labelled(metrics.BAND_ENTRIES, decision.band).inc()
        if before is None:
            metrics.labelled(metrics.CONTACTS_CREATED, event["source_system"]).inc()
            created = audit_entry(
                contact_id,
                "identity",
                "contact_created",
                f"first seen through {event['source_system']} {event['event_type']}",
                {"identifiers": ",".join(state.identifiers)},
                causes,
                at,
            )
            out.append(("audit", contact_id, created))
        if before is None or contact_fields(before) != contact_fields(state):
            command_id = decision_id("upsert", state.contact_id, event["event_id"])
            upsert = upsert_contact(state, command_id, event["event_id"], at)
            out.append(("commands", contact_id, upsert))
        out += activity_outputs(state, event)
        out += invoice_outputs(state, event)
        if event["event_type"] in JOB_EVENTS:
            state, job = decide_job(state, event)
            if job is not None:
                out += job_outputs(state, job, operations)
        out += qualification_audit(before, state, event)
        if is_meaningful(decision, model):
            inputs = {
                "previous": decision.previous,
                "score": decision.score,
                "rules": ",".join(decision.rules),
                "band": decision.band,
                **{f"component.{k}": round(v, 2) for k, v in decision.components.items()},
            }
            changed = audit_entry(
                contact_id,
                "scoring",
                "score_changed",
                f"score {decision.previous:g} -> {decision.score:g}"
                + (f" by {', '.join(decision.rules)}" if decision.rules else ""),
                inputs,
                causes,
                at,
            )
            out.append(("audit", contact_id, changed))
            if decision.crossed_band:
                crossed = audit_entry(
                    contact_id,
                    "scoring",
                    "band_crossed",
                    f"band {decision.previous_band} -> {decision.band}",
                    inputs,
                    causes,
                    at,
                )
                out.append(("audit", contact_id, crossed))
        moved = apply_rules(rules.pipeline, state, event)
        if moved.moves or moved.tasks or moved.messages or moved.skipped:
            state = moved.state
            for move in moved.moves:
                metrics.labelled(metrics.PIPELINE_MOVES, move.rule, move.stage).inc()
            out += pipeline_outputs(state, moved, event)
        out += clocks.on_triggers(state, [event, *stage_change_triggers(moved, event)], partition)
        state, sent = runs.on_event(state, event, partition)
        out += sent
        if routable(state, event):
            state = state.model_copy(update={"routing": "requested"})
            out.append(route_request(state, event["event_id"], at))
        task = next_step(state, event)
        if task is not None:
            if state.owner_id is None and state.routing == "requested":
                # The router answers in moments: the task waits for the owner it names.
                # The caller lookup shows it meanwhile (a callback the caller just asked for).
                held = [*state.pending_tasks, task][-PENDING_TASKS:]
                made = OwnerTask(
                    task_id=task.task_id, title=task.title, due_at=task.due_at, at=task.at
                )
                tasks = kept_tasks(state.tasks, made)
                state = state.model_copy(update={"pending_tasks": held, "tasks": tasks})
            else:
                out += next_step_outputs(contact_id, task, state.owner_id)
        contacts[contact_id] = with_tasks(state, out)  # once, whatever changed it
        return out

    def routable(state: ContactState, event: dict[str, Any]) -> bool:
        if state.owner_id is not None:
            return False
        # A lead the router could place with nobody is asked about again when enrichment
        # brings what its rules look at (industry, size, country): it may match one now.
        again = state.routing == "unassigned" and event["event_type"] == "CONTACT_ENRICHED"
        if state.routing is not None and not again:
            return False
        wanted = routing_rules.route_from_band
        return wanted is None or model.band_rank(state.band) >= model.band_rank(wanted)

    def on_assignment(contact_id: str, assignment: dict[str, Any], partition: int) -> list[Output]:
        survivor = aliases.get(contact_id)
        if survivor is not None:
            return [("assignments", survivor, {**assignment, "contact_id": survivor})]
        state = contacts.get(contact_id)
        if state is None:
            return []
        rep_id = assignment["rep_id"]
        outcome = "assigned" if rep_id else ("held" if assignment["held"] else "unassigned")
        update: dict[str, Any] = {"routing": outcome, "pending_tasks": []}
        if rep_id and rep_id != state.owner_id:
            update |= {
                "owner_id": rep_id,
                "owner_email": assignment.get("rep_email"),
                "manager_email": assignment.get("manager_email"),
            }
        assigned = state.model_copy(update=update)
        out: list[Output] = []
        for task in state.pending_tasks:  # for the owner just named (held: unowned)
            out += next_step_outputs(contact_id, task, assigned.owner_id)
        if "owner_id" in update:  # clocks that start on assignment start (a running one goes on)
            at = assignment["at"]
            trigger = {
                "event_id": decision_id("assigned", contact_id, rep_id, at.isoformat()),
                "event_type": ASSIGNED,
                "event_time": at,
                "payload": {"rep_id": rep_id, "rule": assignment["rule"]},
            }
            out += clocks.on_triggers(assigned, [trigger], partition)
            assigned, sent = runs.on_event(assigned, trigger, partition)
            out += sent
        contacts[contact_id] = with_tasks(assigned, out)
        return out

    def on_merge_step(contact_id: str, step: dict[str, Any], partition: int) -> list[Output]:
        kind, other, at = step["step"], step["other"], step["at"]
        alias = aliases.get(contact_id)
        if kind in ("REQUEST", "RESOLVE", "TRANSFER") and alias is not None:
            return [("merges", alias, {**step, "target": alias})]  # follow to the survivor
        if kind == "REQUEST":
            return [
                ("merges", other, {**step, "step": "RESOLVE", "target": other, "other": contact_id})
            ]
        if kind == "RESOLVE":
            if other == contact_id:
                return []
            survivor, loser = sorted((contact_id, other))
            return [
                ("merges", loser, {**step, "step": "RETIRE", "target": loser, "other": survivor})
            ]
        if kind == "RETIRE":
            if alias is not None:  # retired meanwhile: merge what it has become instead
                return [("merges", alias, {**step, "step": "REQUEST", "target": alias})]
            aliases[contact_id] = other
            state = contacts.get(contact_id)
            if state is not None:
                del contacts[contact_id]
            running = clocks.retire(contact_id, partition)  # they go on with the survivor
            in_workflows = runs.retire(contact_id, partition)
            transfer = {
                **step,
                "step": "TRANSFER",
                "target": other,
                "other": contact_id,
                "state": state.model_dump_json() if state else None,
                "timers": running,
                "workflows": in_workflows,
            }
            merged_into = audit_entry(
                contact_id,
                "identity",
                "merged_into",
                f"shares {step['identifier']} with {other}; {other} continues as the contact",
                {"survivor": other, "identifier": step["identifier"]},
                [],
                at,
            )
            return [("merges", other, transfer), ("audit", contact_id, merged_into)]
        # TRANSFER
        retired = ContactState.model_validate_json(step["state"]) if step["state"] else None
        before = contacts.get(contact_id)
        current = before or ContactState(contact_id=contact_id)
        merged = merge_states(current, retired) if retired else current
        if merged.last_event_time is not None:
            components = components_at(
                merged.scoring, merged.facts(), model, merged.last_event_time
            )
            merged = merged.model_copy(
                update={
                    "score": total(components, model),
                    "score_components": components,
                    "band": model.band_for(total(components, model)),
                }
            )
        out: list[Output] = []
        if step.get("timers"):
            out += clocks.adopt(contact_id, other, step["timers"], at, partition)
        if step.get("workflows"):
            merged, sent = runs.adopt(merged, other, step["workflows"], partition)
            out += sent
        contacts[contact_id] = merged
        # The merged profile's upsert also creates the survivor in the CRM when the merge
        # reached it before its first event (the two come by different topics).
        out += merge_outputs(before, merged, other, step["identifier"], at)
        merged_audit = audit_entry(
            contact_id,
            "identity",
            "merged",
            f"{other} proved to be the same person (shared {step['identifier']})",
            {"retired": other, "identifier": step["identifier"], "score": merged.score},
            [],
            at,
        )
        out.append(("audit", contact_id, merged_audit))
        return out

    def on_due(contact_id: str, notice: dict[str, Any], partition: int) -> list[Output]:
        """A timer is due: a workflow's wait, or an SLA clock's step (whose breach may
        start a workflow)."""
        state = contacts.get(contact_id)
        if runs.is_wait(notice["timer_id"]):
            if state is None:
                return []
            after, sent = runs.on_due(contact_id, notice, partition, state)
            after = with_tasks(after, sent)
            if after is not state:
                contacts[contact_id] = after
            return sent
        current = state or ContactState(contact_id=contact_id)
        firing, out = clocks.on_due(contact_id, notice, partition, current)
        if firing is not None and state is not None:
            after, sent = runs.on_event(state, breach_trigger(contact_id, firing), partition)
            out += sent
            after = with_tasks(after, out)
            if after is not state:
                contacts[contact_id] = after
        return out

    def contact_input(
        handle: Callable[[str, dict[str, Any], int], list[Output]],
    ) -> Callable[[Decoded], list[Output]]:
        def step(item: Decoded) -> list[Output]:
            return handle((item.key or b"").decode(), record_of(item), item.partition)

        return step

    engine.route(inputs.events, "identity", resolve_event)
    engine.route(inputs.claims, "identity", on_claim)
    engine.route(inputs.by_contact, "contact", contact_input(on_event))
    engine.route(inputs.merges, "contact", contact_input(on_merge_step))
    engine.route(inputs.assignments, "contact", contact_input(on_assignment))
    engine.route(inputs.timers, "contact", contact_input(on_due))

    def identifier_view(identifier: str) -> dict[str, Any]:
        return {"identifier": identifier, "contact_id": identity.lookup(identifier)}

    def contact_view(contact_id: str) -> dict[str, Any]:
        stored = contacts.table.lookup(contact_id)
        return {
            "contact_id": contact_id,
            "merged_into": aliases.lookup(contact_id),
            "state": json.loads(stored) if stored is not None else None,
        }

    return Views(identifier_view, contact_view)


def record_of(item: Decoded) -> dict[str, Any]:
    assert item.record is not None  # these routes take no tombstones
    return item.record
