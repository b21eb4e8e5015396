"""The stateful stages on the workers' tables (streams.tables), wired to their topics.

identity (keyed by identifier)     contact-events + identity-claims  -> table identity
    stages/identity.py: resolves each event to a contact id, claims the event's other
    identifiers, starts merges, and re-keys the event by contact id onto
    events-by-contact.
contact (keyed by contact id)      events-by-contact, contact-merges, assignments, timers
                                   -> tables contacts, aliases, timers, workflow-runs
    stages/contact.py: the contact's state, score, deals, SLA clocks and workflows, and
    what they write (CRM commands, notifications, routing requests, audit entries);
    stages/merges.py: merges, step by step.

Each stage is a function of one decoded record: it reads and writes its tables and
returns its outputs; the runtime (streams.engine) commits both in one transaction."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processors import sla
from processors.area import ServiceAreas
from processors.jobs import Operations
from processors.pipeline import PipelineRules
from processors.routing import RoutingRules
from processors.scoring import ScoringModel
from processors.sla_clocks import SlaClocks
from processors.stages.contact import ContactStage
from processors.stages.decoded import by_contact
from processors.stages.identity import IdentityStage
from processors.stages.merges import MergeSteps
from processors.state import ContactState
from processors.workflows.engine import Engine as WorkflowEngine
from processors.workflows.library import Library
from processors.workflows.runs import WorkflowRuns
from streams import metrics
from streams.clock import Clock
from streams.engine import Engine
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.tables import Parsed


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


def register(
    engine: Engine, settings: Settings, inputs: Inputs, rules: Rules, clock: Clock
) -> Views:
    """The identity and contact stages on ``engine``'s tables and inputs."""
    identity = engine.table("identity")
    contacts = Parsed(
        engine.table("contacts"), ContactState.model_validate_json, ContactState.model_dump_json
    )
    aliases = engine.table("aliases")
    metrics.declare(metrics.BAND_ENTRIES, ({"band": band.name} for band in rules.scoring.bands))
    metrics.declare(
        metrics.PIPELINE_MOVES,
        ({"rule": r.name, "stage": r.move_to} for r in rules.pipeline.rules if r.move_to),
    )
    clocks = SlaClocks(engine, settings, rules.sla, clock)
    runs = WorkflowRuns(engine, settings, WorkflowEngine(rules.workflows, rules.pipeline), clock)
    resolving = IdentityStage(identity, engine.table("claimed"), settings, clock)
    contact = ContactStage(
        contacts,
        aliases,
        clocks,
        runs,
        Operations(settings.operations_channel, tuple(settings.operations_recipients)),
        model=rules.scoring,
        routing_rules=rules.routing,
        pipeline=rules.pipeline,
        areas=rules.areas,
    )
    merges = MergeSteps(contacts, aliases, clocks, runs, rules.scoring)

    # The identity stage reads an event's first fields only (event_id .. identity) and
    # forwards its bytes as they came; the contact stage decodes it whole.
    events, serde = inputs.events
    engine.route((events, serde.leading("identity")), "identity", resolving.on_event)
    engine.route(inputs.claims, "identity", resolving.on_claim)
    engine.route(inputs.by_contact, "contact", by_contact(contact.on_event))
    # What one stage asks of another (a merge step, an assignment, a due notice) is read
    # ahead of a backlog of events: the lead it concerns should not wait for the backlog.
    engine.route(inputs.merges, "contact", by_contact(merges.on_step), urgent=True)
    engine.route(inputs.assignments, "contact", by_contact(contact.on_assignment), urgent=True)
    engine.route(inputs.timers, "contact", by_contact(contact.on_due), urgent=True)

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
