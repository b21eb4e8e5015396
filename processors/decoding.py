"""Decoding a stage's input: every message is decoded against the contract, and what
cannot be decoded is dead-lettered, so a bad message never crashes a worker and is
never silently skipped."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import faust

from streams import metrics
from streams.dlq import dead_letter
from streams.serde import AvroSerde, UndecodableMessage
from streams.transactions import step


@dataclass(frozen=True)
class Decoded:
    key: bytes | None
    record: dict[str, Any]
    topic: str
    partition: int


async def each_decoded(
    stream: faust.StreamT[bytes],
    serde: AvroSerde | Mapping[str, AvroSerde],
    dead_letters: faust.TopicT,
    dead_letter_serde: AvroSerde,
    stage: str,
    handle: Callable[[Decoded], Awaitable[None]],
) -> None:
    """Hand each decodable message of ``stream`` to ``handle``; send the others, with their
    original bytes and the reason, to the dead-letter topic. Each message is one step
    (streams.transactions): what it sends and writes commits with its offset. A stream
    over several topics gives a serde per topic name."""
    metrics.DEAD_LETTERS.labels(stage=stage, error_type=UndecodableMessage.__name__)
    async for event in stream.events():
        async with step(event) as current:
            if not current:
                continue
            message = event.message
            decoder = serde if isinstance(serde, AvroSerde) else serde[message.topic]
            try:
                record = decoder.decode(message.value)
            except UndecodableMessage as exc:
                letter = undecodable(message, stage, exc)
                await dead_letters.send(key=message.key, value=dead_letter_serde.encode(letter))
                continue
            await handle(Decoded(message.key, record, message.topic, message.partition))


def undecodable(message: Any, stage: str, error: Exception) -> dict[str, Any]:
    """The dead letter of a Faust message that ``stage`` could not decode."""
    return dead_letter(
        stage=stage,
        error=error,
        value=message.value,
        key=message.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        headers=_headers(message.headers),
    )


def _headers(raw: Any) -> dict[str, bytes]:
    items = raw.items() if isinstance(raw, Mapping) else (raw or ())
    return {str(k): bytes(v) for k, v in items if v is not None}
