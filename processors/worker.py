"""Assembles the processor worker: the Faust app with every stage registered on it."""

from __future__ import annotations

from processors import router, stages
from processors.pipeline import load_rules as load_pipeline
from processors.routing import load_rules
from processors.scoring import load_model
from processors.sla import load_policies
from processors.workflow import load_library
from streams.app import catalog_topic, create_app
from streams.clock import clock_from_setting
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import (
    ASSIGNMENTS,
    AUDIT,
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
from streams.transactions import App


def build_app(settings: Settings) -> App:
    # Invalid rule files stop the worker before it starts.
    rules = stages.Rules(
        scoring=load_model(settings.scoring_model) if settings.scoring_model else load_model(),
        routing=load_rules(settings.routing_rules) if settings.routing_rules else load_rules(),
        sla=load_policies(settings.sla_policies) if settings.sla_policies else load_policies(),
        pipeline=(
            load_pipeline(settings.pipeline_rules) if settings.pipeline_rules else load_pipeline()
        ),
        workflows=load_library(settings.workflows) if settings.workflows else load_library(),
    )
    clock = clock_from_setting(settings.clock)
    app = create_app(settings)
    registry = registry_client(settings.schema_registry_url)

    def channel(spec: TopicSpec) -> stages.Channel:
        serde = AvroSerde(
            registry, spec.schema, spec.full_name(settings), discriminator=spec.discriminator
        )
        return stages.Channel(catalog_topic(app, settings, spec), serde)

    channels = stages.Channels(
        events=channel(CONTACT_EVENTS),
        claims=channel(IDENTITY_CLAIMS),
        by_contact=channel(EVENTS_BY_CONTACT),
        merges=channel(CONTACT_MERGES),
        commands=channel(CRM_COMMANDS),
        audit=channel(AUDIT),
        dead_letters=channel(DEAD_LETTERS),
        notifications=channel(NOTIFICATIONS),
        roster=channel(REP_ROSTER),
        routing=channel(ROUTING),
        assignments=channel(ASSIGNMENTS),
        timers=channel(TIMERS),
    )
    stages.register(app, settings, channels, rules, clock)
    router.register(app, settings, channels, rules.routing)
    return app
