"""The intake stage: the first reader of the contact-events topic. It decodes every
message against the contract and dead-letters what cannot be decoded, so a bad
message never crashes a worker and is never silently skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import faust

from streams import metrics
from streams.dlq import dead_letter
from streams.serde import AvroSerde, UndecodableMessage

STAGE = "intake"


@dataclass(frozen=True)
class Decoded:
    key: bytes | None
    record: dict[str, Any]


async def decode_or_dead_letter(
    stream: faust.StreamT[bytes],
    serde: AvroSerde,
    dead_letters: faust.TopicT,
    dead_letter_serde: AvroSerde,
    stage: str,
) -> AsyncIterator[Decoded]:
    """Yield each decodable message of ``stream``; send the others, with their original
    bytes and the reason, to the dead-letter topic (in the same transaction as the
    stage's other outputs when the app runs exactly-once)."""
    async for event in stream.events():
        message = event.message
        try:
            record = serde.decode(message.value)
        except UndecodableMessage as exc:
            letter = dead_letter(
                stage=stage,
                error=exc,
                value=message.value,
                key=message.key,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                headers=_headers(message.headers),
            )
            await dead_letters.send(key=message.key, value=dead_letter_serde.encode(letter))
            continue
        yield Decoded(message.key, record)


def _headers(raw: Any) -> dict[str, bytes]:
    items = raw.items() if isinstance(raw, Mapping) else (raw or ())
    return {str(k): bytes(v) for k, v in items if v is not None}


def register(
    app: faust.App,
    events: faust.TopicT,
    events_serde: AvroSerde,
    dead_letters: faust.TopicT,
    dead_letter_serde: AvroSerde,
) -> None:
    @app.agent(events, name=STAGE)
    async def intake(stream: faust.StreamT[bytes]) -> None:
        async for item in decode_or_dead_letter(
            stream, events_serde, dead_letters, dead_letter_serde, STAGE
        ):
            record = item.record
            metrics.EVENTS.labels(
                stage=STAGE, event_type=record["event_type"], source=record["source_system"]
            ).inc()
            age = datetime.now(UTC) - record["event_time"]
            metrics.EVENT_AGE.labels(stage=STAGE).observe(max(age.total_seconds(), 0.0))
