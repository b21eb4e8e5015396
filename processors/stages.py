"""The stateful stages on Faust tables, wired to their topics.

identity (keyed by identifier)     contact-events + identity-claims  -> table identity
    resolves each event to a contact id, claims the event's other identifiers, starts
    merges, and re-keys the event by contact id onto events-by-contact.
contact (keyed by contact id)      events-by-contact, contact-merges, assignments, timers
                                   -> tables contacts, aliases, timers, workflow-runs
    keeps the contact's state and score (processors.contact), runs merges step by step,
    forwards a retired contact's events to its survivor, moves deals on what happened
    (processors.pipeline), starts and stops SLA clocks and fires their escalation steps
    when due (processors.sla_clocks), runs the contact's workflows and ends their waits
    (processors.workflow_runs), and writes CRM commands, notifications, routing requests
    and audit entries (processors.records).

Everything a stage sends is in the Kafka transaction of the message it is processing
(processing_guarantee=exactly_once), together with its table writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust

from processors import sla
from processors.contact import advance
from processors.decoding import Decoded, each_decoded
from processors.identity import claim, merge_states, resolve
from processors.ids import decision_id
from processors.matching import ASSIGNED
from processors.pipeline import PipelineRules, apply_rules
from processors.records import (
    Output,
    activity_outputs,
    audit_entry,
    breach_trigger,
    contact_fields,
    merge_outputs,
    next_step,
    next_step_outputs,
    pipeline_outputs,
    route_request,
    stage_change_triggers,
    upsert_contact,
)
from processors.routing import RoutingRules
from processors.scoring import ScoringModel, components_at, is_meaningful, total
from processors.sla_clocks import SlaClocks
from processors.state import PENDING_TASKS, ContactState, identifiers_of
from processors.timers import DueNotices
from processors.workflow import Library
from processors.workflow_engine import Engine
from processors.workflow_runs import WorkflowRuns
from streams import metrics
from streams.app import raw_topic
from streams.clock import Clock
from streams.serde import AvroSerde
from streams.settings import Settings


@dataclass(frozen=True)
class Channel:
    """A topic and the serde of its records."""

    topic: faust.TopicT
    serde: AvroSerde

    @property
    def name(self) -> str:
        return self.serde.topic

    async def send(self, key: str, record: dict[str, Any]) -> None:
        await self.topic.send(key=key.encode(), value=self.serde.encode(record))

    async def send_raw(self, message: Any, record: dict[str, Any]) -> None:
        """``record`` keyed like the original ``message`` (for dead letters)."""
        await self.topic.send(key=message.key, value=self.serde.encode(record))


@dataclass(frozen=True)
class Channels:
    events: Channel
    claims: Channel
    by_contact: Channel
    merges: Channel
    commands: Channel
    audit: Channel
    dead_letters: Channel
    notifications: Channel
    roster: Channel
    routing: Channel
    assignments: Channel
    timers: Channel


@dataclass(frozen=True)
class Rules:
    """The declarative files the stages run on, validated at load."""

    scoring: ScoringModel
    routing: RoutingRules
    sla: sla.SlaPolicies
    pipeline: PipelineRules
    workflows: Library


def observe_age(stage: str, event: dict[str, Any]) -> None:
    age = datetime.now(UTC) - event["received_time"]
    metrics.EVENT_AGE.labels(stage=stage).observe(max(age.total_seconds(), 0.0))


def register(
    app: faust.App, settings: Settings, channels: Channels, rules: Rules, clock: Clock
) -> None:
    identity = app.Table("identity", partitions=settings.partitions, key_type=str, value_type=str)
    contacts = app.Table("contacts", partitions=settings.partitions, key_type=str, value_type=str)
    aliases = app.Table("aliases", partitions=settings.partitions, key_type=str, value_type=str)
    model, routing_rules = rules.scoring, rules.routing
    c = channels
    metrics.declare(metrics.BAND_ENTRIES, ({"band": band.name} for band in model.bands))
    metrics.declare(
        metrics.PIPELINE_MOVES,
        ({"rule": r.name, "stage": r.move_to} for r in rules.pipeline.rules if r.move_to),
    )

    async def resolve_event(item: Decoded) -> None:
        event = item.record
        ids = identifiers_of(event["identity"])
        key = (item.key or b"").decode() or ids[0]
        found = resolve(key, identity.get(key), ids)
        if found.minted:
            identity[key] = found.contact_id
        for identifier in found.claims:
            await c.claims.send(
                identifier,
                {
                    "identifier": identifier,
                    "contact_id": found.contact_id,
                    "event_id": event["event_id"],
                    "claimed_at": event["event_time"],
                },
            )
        await c.by_contact.send(found.contact_id, {**event, "contact_id": found.contact_id})
        metrics.EVENTS.labels(
            stage="identity", event_type=event["event_type"], source=event["source_system"]
        ).inc()
        observe_age("identity", event)

    @app.agent(c.events.topic, name="identity")
    async def identity_stage(stream: faust.StreamT[bytes]) -> None:
        dead = c.dead_letters
        await each_decoded(
            stream, c.events.serde, dead.topic, dead.serde, "identity", resolve_event
        )

    async def on_claim(item: Decoded) -> None:
        request = item.record
        identifier = request["identifier"]
        outcome = claim(identifier, identity.get(identifier), request["contact_id"])
        if outcome.linked or outcome.merge:
            identity[identifier] = outcome.owner
        if outcome.merge is not None:
            merge = outcome.merge
            await c.merges.send(
                merge.loser,
                {
                    "step": "REQUEST",
                    "target": merge.loser,
                    "other": merge.survivor,
                    "identifier": identifier,
                    "state": None,
                    "timers": None,
                    "workflows": None,
                    "at": request["claimed_at"],
                },
            )

    @app.agent(c.claims.topic, name="identity-claims")
    async def claims_stage(stream: faust.StreamT[bytes]) -> None:
        dead = c.dead_letters
        await each_decoded(stream, c.claims.serde, dead.topic, dead.serde, "identity", on_claim)

    def load(contact_id: str) -> ContactState | None:
        stored = contacts.get(contact_id)
        return None if stored is None else ContactState.model_validate_json(stored)

    async def upsert_command(state: ContactState, cause: str, at: datetime) -> None:
        command_id = decision_id("upsert", state.contact_id, cause)
        await c.commands.send(state.contact_id, upsert_contact(state, command_id, cause, at))

    async def send_all(outputs: list[Output]) -> None:
        for channel, key, record in outputs:
            await getattr(c, channel).send(key, record)

    notices = DueNotices(settings, c.timers.serde, clock)
    clocks = SlaClocks(app, settings, rules.sla, clock, send_all, notices, c.by_contact.name)
    engine = Engine(rules.workflows, rules.pipeline)
    runs = WorkflowRuns(app, settings, engine, clock, send_all, notices, c.by_contact.name)

    async def on_event(contact_id: str, event: dict[str, Any], partition: int) -> None:
        survivor = aliases.get(contact_id)
        if survivor is not None:  # retired by a merge: its survivor takes the event
            await c.by_contact.send(survivor, {**event, "contact_id": survivor})
            return
        before = load(contact_id)
        outcome = advance(before or ContactState(contact_id=contact_id), event, model)
        decision = outcome.score
        if decision is None:
            return  # seen before: nothing changes, nothing is sent again
        state = outcome.state
        contacts[contact_id] = state.model_dump_json()
        metrics.EVENTS.labels(
            stage="contact", event_type=event["event_type"], source=event["source_system"]
        ).inc()
        observe_age("contact", event)
        at = event["event_time"]
        causes = [event["event_id"]]
        if decision.crossed_band and decision.band is not None:
            metrics.BAND_ENTRIES.labels(band=decision.band).inc()
        if before is None:
            metrics.CONTACTS_CREATED.labels(source=event["source_system"]).inc()
            await c.audit.send(
                contact_id,
                audit_entry(
                    contact_id,
                    "identity",
                    "contact_created",
                    f"first seen through {event['source_system']} {event['event_type']}",
                    {"identifiers": ",".join(state.identifiers)},
                    causes,
                    at,
                ),
            )
        if before is None or contact_fields(before) != contact_fields(state):
            await upsert_command(state, event["event_id"], at)
        await send_all(activity_outputs(state, event))
        if is_meaningful(decision, model):
            inputs = {
                "previous": decision.previous,
                "score": decision.score,
                "rules": ",".join(decision.rules),
                "band": decision.band,
                **{f"component.{k}": round(v, 2) for k, v in decision.components.items()},
            }
            await c.audit.send(
                contact_id,
                audit_entry(
                    contact_id,
                    "scoring",
                    "score_changed",
                    f"score {decision.previous:g} -> {decision.score:g}"
                    + (f" by {', '.join(decision.rules)}" if decision.rules else ""),
                    inputs,
                    causes,
                    at,
                ),
            )
            if decision.crossed_band:
                await c.audit.send(
                    contact_id,
                    audit_entry(
                        contact_id,
                        "scoring",
                        "band_crossed",
                        f"band {decision.previous_band} -> {decision.band}",
                        inputs,
                        causes,
                        at,
                    ),
                )
        moved = apply_rules(rules.pipeline, state, event)
        if moved.moves or moved.tasks or moved.messages or moved.skipped:
            state = moved.state
            contacts[contact_id] = state.model_dump_json()
            for move in moved.moves:
                metrics.PIPELINE_MOVES.labels(rule=move.rule, stage=move.stage).inc()
            await send_all(pipeline_outputs(state, moved, event))
        await clocks.on_triggers(state, [event, *stage_change_triggers(moved, event)], partition)
        after = await runs.on_event(state, event, partition)
        if after is not state:
            state = after
            contacts[contact_id] = state.model_dump_json()
        if routable(state):
            state = state.model_copy(update={"routing": "requested"})
            contacts[contact_id] = state.model_dump_json()
            await send_all([route_request(state, event["event_id"], at)])
        task = next_step(state, event)
        if task is not None:
            if state.owner_id is None and state.routing == "requested":
                # The router answers in moments: the task waits for the owner it names.
                held = [*state.pending_tasks, task][-PENDING_TASKS:]
                state = state.model_copy(update={"pending_tasks": held})
                contacts[contact_id] = state.model_dump_json()
            else:
                await send_all(next_step_outputs(contact_id, task, state.owner_id))

    def routable(state: ContactState) -> bool:
        if state.owner_id is not None or state.routing is not None:
            return False
        wanted = routing_rules.route_from_band
        return wanted is None or model.band_rank(state.band) >= model.band_rank(wanted)

    async def on_assignment(contact_id: str, assignment: dict[str, Any], partition: int) -> None:
        survivor = aliases.get(contact_id)
        if survivor is not None:
            await c.assignments.send(survivor, {**assignment, "contact_id": survivor})
            return
        state = load(contact_id)
        if state is None:
            return
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
        contacts[contact_id] = assigned.model_dump_json()
        for task in state.pending_tasks:  # for the owner just named (held: unowned)
            await send_all(next_step_outputs(contact_id, task, assigned.owner_id))
        if "owner_id" in update:  # clocks that start on assignment start (a running one goes on)
            at = assignment["at"]
            trigger = {
                "event_id": decision_id("assigned", contact_id, rep_id, at.isoformat()),
                "event_type": ASSIGNED,
                "event_time": at,
                "payload": {"rep_id": rep_id, "rule": assignment["rule"]},
            }
            await clocks.on_triggers(assigned, [trigger], partition)
            after = await runs.on_event(assigned, trigger, partition)
            if after is not assigned:
                contacts[contact_id] = after.model_dump_json()

    async def on_merge_step(contact_id: str, step: dict[str, Any], partition: int) -> None:
        kind, other, at = step["step"], step["other"], step["at"]
        alias = aliases.get(contact_id)
        if kind in ("REQUEST", "RESOLVE", "TRANSFER") and alias is not None:
            await c.merges.send(alias, {**step, "target": alias})  # follow to the survivor
        elif kind == "REQUEST":
            await c.merges.send(
                other, {**step, "step": "RESOLVE", "target": other, "other": contact_id}
            )
        elif kind == "RESOLVE":
            if other != contact_id:
                survivor, loser = sorted((contact_id, other))
                await c.merges.send(
                    loser, {**step, "step": "RETIRE", "target": loser, "other": survivor}
                )
        elif kind == "RETIRE":
            if alias is not None:  # retired meanwhile: merge what it has become instead
                await c.merges.send(alias, {**step, "step": "REQUEST", "target": alias})
                return
            aliases[contact_id] = other
            state = load(contact_id)
            if state is not None:
                del contacts[contact_id]
            running = clocks.retire(contact_id, partition)  # they go on with the survivor
            in_workflows = runs.retire(contact_id, partition)
            await c.merges.send(
                other,
                {
                    **step,
                    "step": "TRANSFER",
                    "target": other,
                    "other": contact_id,
                    "state": state.model_dump_json() if state else None,
                    "timers": running,
                    "workflows": in_workflows,
                },
            )
            await c.audit.send(
                contact_id,
                audit_entry(
                    contact_id,
                    "identity",
                    "merged_into",
                    f"shares {step['identifier']} with {other}; {other} continues as the contact",
                    {"survivor": other, "identifier": step["identifier"]},
                    [],
                    at,
                ),
            )
        elif kind == "TRANSFER":
            retired = ContactState.model_validate_json(step["state"]) if step["state"] else None
            before = load(contact_id)
            current = before or ContactState(contact_id=contact_id)
            merged = merge_states(current, retired) if retired else current
            if merged.last_event_time is not None:
                components = components_at(
                    merged.scoring, merged.profile, model, merged.last_event_time
                )
                merged = merged.model_copy(
                    update={
                        "score": total(components, model),
                        "score_components": components,
                        "band": model.band_for(total(components, model)),
                    }
                )
            contacts[contact_id] = merged.model_dump_json()
            if step.get("timers"):
                await clocks.adopt(contact_id, other, step["timers"], at, partition)
            if step.get("workflows"):
                adopted = await runs.adopt(merged, other, step["workflows"], partition)
                contacts[contact_id] = adopted.model_dump_json()
            # The merged profile's upsert also creates the survivor in the CRM when the merge
            # reached it before its first event (the two come by different topics).
            await send_all(merge_outputs(before, merged, other, step["identifier"], at))
            await c.audit.send(
                contact_id,
                audit_entry(
                    contact_id,
                    "identity",
                    "merged",
                    f"{other} proved to be the same person (shared {step['identifier']})",
                    {"retired": other, "identifier": step["identifier"], "score": merged.score},
                    [],
                    at,
                ),
            )

    # Read-only views for `switchboard explain`; Faust forwards each request to the
    # worker that owns the key's partition.
    @app.page("/identifiers/{identifier}")
    @app.table_route(table=identity, match_info="identifier")
    async def identifier_view(web: Any, request: Any, identifier: str) -> Any:
        return web.json({"identifier": identifier, "contact_id": identity.get(identifier)})

    @app.page("/contacts/{contact_id}")
    @app.table_route(table=contacts, match_info="contact_id")
    async def contact_view(web: Any, request: Any, contact_id: str) -> Any:
        survivor = aliases.get(contact_id)
        stored = contacts.get(contact_id)
        return web.json(
            {
                "contact_id": contact_id,
                "merged_into": survivor,
                "state": json.loads(stored) if stored is not None else None,
            }
        )

    inputs = (c.by_contact, c.merges, c.assignments, c.timers)
    source = raw_topic(app, settings, *(channel.name for channel in inputs))

    async def on_contact_input(item: Decoded) -> None:
        contact_id = (item.key or b"").decode()
        if item.topic == c.by_contact.name:
            await on_event(contact_id, item.record, item.partition)
        elif item.topic == c.merges.name:
            await on_merge_step(contact_id, item.record, item.partition)
        elif item.topic == c.assignments.name:
            await on_assignment(contact_id, item.record, item.partition)
        else:
            await on_due(contact_id, item.record, item.partition)

    async def on_due(contact_id: str, notice: dict[str, Any], partition: int) -> None:
        """A timer is due: a workflow's wait, or an SLA clock's step (whose breach may
        start a workflow)."""
        state = load(contact_id)
        if runs.is_wait(notice["timer_id"]):
            if state is not None:
                after = await runs.on_due(contact_id, notice, partition, state)
                if after is not state:
                    contacts[contact_id] = after.model_dump_json()
            return
        current = state or ContactState(contact_id=contact_id)
        firing = await clocks.on_due(contact_id, notice, partition, current)
        if firing is not None and state is not None:
            after = await runs.on_event(state, breach_trigger(contact_id, firing), partition)
            if after is not state:
                contacts[contact_id] = after.model_dump_json()

    @app.agent(source, name="contact")
    async def contact_stage(stream: faust.StreamT[bytes]) -> None:
        serdes = {channel.name: channel.serde for channel in inputs}
        dead = c.dead_letters
        await each_decoded(stream, serdes, dead.topic, dead.serde, "contact", on_contact_input)
