"""Assembles the processor worker: the Faust app with every stage registered on it."""

from __future__ import annotations

import faust

from processors import intake
from streams.app import catalog_topic, create_app
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, DEAD_LETTERS, TopicSpec


def build_app(settings: Settings) -> faust.App:
    app = create_app(settings)
    registry = registry_client(settings.schema_registry_url)

    def serde(spec: TopicSpec) -> AvroSerde:
        return AvroSerde(
            registry, spec.schema, spec.full_name(settings), discriminator=spec.discriminator
        )

    intake.register(
        app,
        catalog_topic(app, settings, CONTACT_EVENTS),
        serde(CONTACT_EVENTS),
        catalog_topic(app, settings, DEAD_LETTERS),
        serde(DEAD_LETTERS),
    )
    return app
