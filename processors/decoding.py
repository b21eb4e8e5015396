"""Decoding a stage's input: every message is decoded against the contract, and what
cannot be decoded is dead-lettered, so a bad message never crashes a worker and is
never silently skipped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from faust.streams import current_event

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
            await send_in_transaction(dead_letters, message.key, dead_letter_serde.encode(letter))
            continue
        yield Decoded(message.key, record, message.topic)
        # The stage is done with this message. Faust queues table changelog writes in its
        # producer buffer and, under exactly-once, commits without draining it first, so a
        # crash right after a commit could keep the offset and lose the state. Drained
        # here, they join this message's transaction (its source partition's producer).
        await stream.app.producer.buffer.flush()


def _headers(raw: Any) -> dict[str, bytes]:
    items = raw.items() if isinstance(raw, Mapping) else (raw or ())
    return {str(k): bytes(v) for k, v in items if v is not None}


async def send_in_transaction(topic: faust.TopicT, key: bytes | None, value: bytes) -> None:
    """Send ``value`` to ``topic`` inside the transaction of the message being processed.

    Faust (faust-streaming 0.15) puts a send into the transaction of the *destination*
    partition's producer, which commits with that partition's input offsets, not with the
    input that caused the send. A repartitioning send and its cause then commit separately,
    and a crash between the two commits loses the output or repeats it. Sending with the
    source partition's transactional id makes output and input offset one commit."""
    app = topic.app
    event = current_event()
    if event is None or not app.in_transaction:
        await topic.send(key=key, value=value)
        return
    source = event.message
    group = app.assignor.group_for_topic(source.topic)
    name = topic.get_topic_name()
    partition = app.consumer.key_partition(name, key, None)
    sent = await app.producer.send(
        name,
        key,
        value,
        partition,
        None,
        None,
        transactional_id=f"{app.conf.id}-{group}-{source.partition}",
    )
    await sent
