"""The contact stage (keyed by contact id; table ``contacts``, with ``aliases``): keeps
the contact's state and score (processors.contact), forwards a retired contact's input
to its survivor, moves deals on what happened (processors.pipeline), starts and stops
SLA clocks and fires their steps when due (processors.sla_clocks), runs the contact's
workflows and ends their waits (processors.workflows.runs), and writes CRM commands,
notifications, routing requests and audit entries (processors.records), and invoices
for completed billable jobs to the billing sink."""

from __future__ import annotations

from typing import Any

from processors.area import ServiceAreas
from processors.contact import advance
from processors.ids import decision_id
from processors.jobs import JOB_EVENTS, Operations
from processors.jobs import decide as decide_job
from processors.matching import ASSIGNED
from processors.pipeline import PipelineRules, apply_rules
from processors.records.base import audit_entry
from processors.records.billing import invoice_outputs
from processors.records.contact import (
    changed_fields,
    qualification_audit,
    upsert_of,
    with_tasks,
)
from processors.records.jobs import job_outputs
from processors.records.pipeline import pipeline_outputs, stage_change_triggers
from processors.records.sla import breach_trigger
from processors.records.timeline import (
    activity_outputs,
    next_step,
    next_step_outputs,
    route_request,
)
from processors.routing import RoutingRules
from processors.scoring import ScoringModel, is_meaningful
from processors.sla_clocks import SlaClocks
from processors.stages.decoded import observe_age
from processors.state import PENDING_TASKS, ContactState, OwnerTask, kept_tasks, new_contact
from processors.workflows.runs import WorkflowRuns
from streams import metrics
from streams.engine import Output
from streams.tables import Parsed, Table


class ContactStage:
    def __init__(
        self,
        contacts: Parsed[ContactState],
        aliases: Table,
        clocks: SlaClocks,
        runs: WorkflowRuns,
        operations: Operations,
        *,
        model: ScoringModel,
        routing_rules: RoutingRules,
        pipeline: PipelineRules,
        areas: ServiceAreas | None,
    ) -> None:
        self.contacts = contacts
        self.aliases = aliases
        self.clocks = clocks
        self.runs = runs
        self.operations = operations
        self.model = model
        self.routing_rules = routing_rules
        self.pipeline = pipeline
        self.areas = areas
        # The bands a lead without an owner is routed from (None: any band, or none),
        # ranked once here rather than twice per event.
        floor = model.band_rank(routing_rules.route_from_band)
        self.routed_bands = (
            frozenset(b.name for b in model.bands if model.band_rank(b.name) >= floor)
            if floor
            else None
        )

    def on_event(self, contact_id: str, event: dict[str, Any], partition: int) -> list[Output]:
        event["contact_id"] = contact_id  # forwarded as it came: the key names it
        survivor = self.aliases.get(contact_id)
        if survivor is not None:  # retired by a merge: its survivor takes the event
            return [("by_contact", survivor, {**event, "contact_id": survivor})]
        model = self.model
        before = self.contacts.get(contact_id)
        outcome = advance(before or new_contact(contact_id), event, model, self.areas)
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
        fields = changed_fields(before, state)
        if fields is not None:
            command_id = decision_id("upsert", state.contact_id, event["event_id"])
            upsert = upsert_of(state, fields, command_id, event["event_id"], at)
            out.append(("commands", contact_id, upsert))
        out += activity_outputs(state, event)
        out += invoice_outputs(state, event)
        if event["event_type"] in JOB_EVENTS:
            state, job = decide_job(state, event)
            if job is not None:
                out += job_outputs(state, job, self.operations)
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
        moved = apply_rules(self.pipeline, state, event)
        if moved.moves or moved.tasks or moved.messages or moved.skipped:
            state = moved.state
            for move in moved.moves:
                metrics.labelled(metrics.PIPELINE_MOVES, move.rule, move.stage).inc()
            out += pipeline_outputs(state, moved, event)
        triggers = [event, *stage_change_triggers(moved, event)]
        out += self.clocks.on_triggers(state, triggers, partition)
        state, in_workflows = self.runs.on_event(state, event, partition)
        out += in_workflows
        if self.routable(state, event):
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
        self.contacts[contact_id] = with_tasks(state, out)  # once, whatever changed it
        return out

    def routable(self, state: ContactState, event: dict[str, Any]) -> bool:
        if state.owner_id is not None:
            return False
        # A lead the router could place with nobody is asked about again when enrichment
        # brings what its rules look at (industry, size, country): it may match one now.
        again = state.routing == "unassigned" and event["event_type"] == "CONTACT_ENRICHED"
        if state.routing is not None and not again:
            return False
        return self.routed_bands is None or state.band in self.routed_bands

    def on_assignment(
        self, contact_id: str, assignment: dict[str, Any], partition: int
    ) -> list[Output]:
        survivor = self.aliases.get(contact_id)
        if survivor is not None:
            return [("assignments", survivor, {**assignment, "contact_id": survivor})]
        state = self.contacts.get(contact_id)
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
            out += self.clocks.on_triggers(assigned, [trigger], partition)
            assigned, in_workflows = self.runs.on_event(assigned, trigger, partition)
            out += in_workflows
        self.contacts[contact_id] = with_tasks(assigned, out)
        return out

    def on_due(self, contact_id: str, notice: dict[str, Any], partition: int) -> list[Output]:
        """A timer is due: a workflow's wait, or an SLA clock's step (whose breach may
        start a workflow)."""
        state = self.contacts.get(contact_id)
        if self.runs.is_wait(notice["timer_id"]):
            if state is None:
                return []
            after, out = self.runs.on_due(contact_id, notice, partition, state)
            after = with_tasks(after, out)
            if after is not state:
                self.contacts[contact_id] = after
            return out
        current = state or ContactState(contact_id=contact_id)
        firing, out = self.clocks.on_due(contact_id, notice, partition, current)
        if firing is not None and state is not None:
            trigger = breach_trigger(contact_id, firing)
            after, in_workflows = self.runs.on_event(state, trigger, partition)
            out += in_workflows
            after = with_tasks(after, out)
            if after is not state:
                self.contacts[contact_id] = after
        return out
