"""A real gateway process on the real broker, for the tests that post to it: its URL,
and what it wrote to the contact-events and dead-letter topics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.registry import register_catalog
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, DEAD_LETTERS, ensure_topics
from tests.conftest import Infra, free_port
from tests.kafka_helpers import read_all, running_gateway
from tests.webhooks import SECRETS, Answer, post, signed


@dataclass(frozen=True)
class Gateway:
    settings: Settings
    events: AvroSerde
    dead_letters: AvroSerde

    def url(self, source: str) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}/webhooks/{source}"

    def send(self, source: str, body: bytes, now: float | None = None) -> Answer:
        url = self.url(source)
        signed_body, headers = signed(source, body, url, now)
        return post(url, signed_body, headers)

    def events_now(self) -> list[dict[str, Any]]:
        topic = CONTACT_EVENTS.full_name(self.settings)
        return [self.events.decode(m.value()) for m in read_all(self.settings, topic)]

    def events_by_id(self) -> dict[str, tuple[bytes, dict[str, Any]]]:
        topic = CONTACT_EVENTS.full_name(self.settings)
        return {
            record["event_id"]: (message.key() or b"", record)
            for message in read_all(self.settings, topic)
            for record in [self.events.decode(message.value())]
        }

    def dead_letters_now(self) -> list[dict[str, Any]]:
        topic = DEAD_LETTERS.full_name(self.settings)
        return [self.dead_letters.decode(m.value()) for m in read_all(self.settings, topic)]


@contextmanager
def started(infra: Infra, prefix: str, log: Path, **settings: Any) -> Iterator[Gateway]:
    """A gateway serving every source (tests.webhooks.SECRETS) under topics of its own."""
    config = Settings(
        kafka_bootstrap=infra.bootstrap,
        schema_registry_url=infra.registry_url,
        topic_prefix=f"{prefix}{uuid.uuid4().hex[:6]}.",
        partitions=3,
        gateway_port=free_port(),
        **settings,
    )
    ensure_topics(config)
    registry = registry_client(config.schema_registry_url)
    register_catalog(registry, config)
    with running_gateway(config, log, SECRETS):
        yield Gateway(
            config,
            AvroSerde(
                registry,
                "contact_event",
                CONTACT_EVENTS.full_name(config),
                discriminator="event_type",
            ),
            AvroSerde(registry, "dead_letter", DEAD_LETTERS.full_name(config)),
        )
