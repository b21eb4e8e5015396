"""Decoding a stage's input: every message is decoded against the contract, and what
cannot be decoded is dead-lettered, so a bad message never crashes a worker and is
never silently skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import faust

from streams.dlq import dead_letter
from streams.serde import AvroSerde, UndecodableMessage


@dataclass(frozen=True)
class Decoded:
    key: bytes | None
    record: dict[str, Any]
    topic: str


async def decode_or_dead_letter(
    stream: faust.StreamT[bytes],
    serde: AvroSerde | Mapping[str, AvroSerde],
    dead_letters: faust.TopicT,
    dead_letter_serde: AvroSerde,
    stage: str,
) -> AsyncIterator[Decoded]:
    """Yield each decodable message of ``stream``; send the others, with their original
    bytes and the reason, to the dead-letter topic (in the same transaction as the
    stage's other outputs when the app runs exactly-once). A stream over several topics
    gives a serde per topic name."""
    async for event in stream.events():
        message = event.message
        decoder = serde if isinstance(serde, AvroSerde) else serde[message.topic]
        try:
            record = decoder.decode(message.value)
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
        yield Decoded(message.key, record, message.topic)


def _headers(raw: Any) -> dict[str, bytes]:
    items = raw.items() if isinstance(raw, Mapping) else (raw or ())
    return {str(k): bytes(v) for k, v in items if v is not None}
