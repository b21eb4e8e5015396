"""Assembles the processor worker: the Faust app with every stage registered on it."""

from __future__ import annotations

import faust

from processors import stages
from processors.scoring import load_model
from streams.app import catalog_topic, create_app
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import (
    AUDIT,
    CONTACT_EVENTS,
    CONTACT_MERGES,
    CRM_COMMANDS,
    DEAD_LETTERS,
    EVENTS_BY_CONTACT,
    IDENTITY_CLAIMS,
    TopicSpec,
)


def build_app(settings: Settings) -> faust.App:
    model = load_model()  # an invalid scoring model stops the worker before it starts
    app = create_app(settings)
    registry = registry_client(settings.schema_registry_url)

    def channel(spec: TopicSpec) -> stages.Channel:
        serde = AvroSerde(
            registry, spec.schema, spec.full_name(settings), discriminator=spec.discriminator
        )
        return stages.Channel(catalog_topic(app, settings, spec), serde)

    stages.register(
        app,
        settings,
        stages.Channels(
            events=channel(CONTACT_EVENTS),
            claims=channel(IDENTITY_CLAIMS),
            by_contact=channel(EVENTS_BY_CONTACT),
            merges=channel(CONTACT_MERGES),
            commands=channel(CRM_COMMANDS),
            audit=channel(AUDIT),
            dead_letters=channel(DEAD_LETTERS),
        ),
        model,
    )
    return app
