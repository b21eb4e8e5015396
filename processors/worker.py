"""Assembles the processor worker: the runtime (streams.engine) with every stage on it."""

from __future__ import annotations

from processors import router, stages
from processors.area import load_areas, warm
from processors.pipeline import load_rules as load_pipeline
from processors.routing import load_rules
from processors.scoring import load_model
from processors.sla import load_policies
from processors.workflows.library import load_library
from streams.clock import clock_from_setting
from streams.engine import Engine
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import (
    ASSIGNMENTS,
    AUDIT,
    BILLING_COMMANDS,
    CONTACT_EVENTS,
    CONTACT_MERGES,
    CRM_COMMANDS,
    DEAD_LETTERS,
    EVENTS_BY_CONTACT,
    IDENTITY_CLAIMS,
    NOTIFICATIONS,
    REP_ROSTER,
    ROUTING,
    TIMERS,
    TopicSpec,
)


def build(settings: Settings) -> tuple[Engine, stages.Views]:
    # Invalid rule files stop the worker before it starts.
    rules = stages.Rules(
        scoring=load_model(settings.scoring_model) if settings.scoring_model else load_model(),
        routing=load_rules(settings.routing_rules) if settings.routing_rules else load_rules(),
        sla=load_policies(settings.sla_policies) if settings.sla_policies else load_policies(),
        pipeline=(
            load_pipeline(settings.pipeline_rules) if settings.pipeline_rules else load_pipeline()
        ),
        workflows=load_library(settings.workflows) if settings.workflows else load_library(),
        areas=load_areas(settings.service_areas) if settings.service_areas else load_areas(),
    )
    if rules.areas is not None:
        warm(rules.areas)
    registry = registry_client(settings.schema_registry_url)

    def topic(spec: TopicSpec) -> tuple[str, AvroSerde]:
        name = spec.full_name(settings)
        return name, AvroSerde(registry, spec.schema, name, discriminator=spec.discriminator)

    outputs = {
        "claims": topic(IDENTITY_CLAIMS),
        "by_contact": topic(EVENTS_BY_CONTACT),
        "merges": topic(CONTACT_MERGES),
        "commands": topic(CRM_COMMANDS),
        "billing": topic(BILLING_COMMANDS),
        "audit": topic(AUDIT),
        "dead_letters": topic(DEAD_LETTERS),
        "notifications": topic(NOTIFICATIONS),
        "routing": topic(ROUTING),
        "assignments": topic(ASSIGNMENTS),
        "timers": topic(TIMERS),
    }
    engine = Engine(settings, outputs)
    inputs = stages.Inputs(
        events=topic(CONTACT_EVENTS),
        claims=outputs["claims"],
        by_contact=outputs["by_contact"],
        merges=outputs["merges"],
        assignments=outputs["assignments"],
        timers=outputs["timers"],
    )
    views = stages.register(engine, settings, inputs, rules, clock_from_setting(settings.clock))
    router.register(engine, topic(REP_ROSTER), outputs["routing"], rules.routing)
    return engine, views
