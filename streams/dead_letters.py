"""Inspecting and replaying the dead-letter topic (``switchboard dlq list|show|replay``).

Replay puts a dead letter's original bytes, key and headers back on the topic it came
from, marked with a ``switchboard-replay-of`` header. It is idempotent end to end: what
the record carries (``event_id``, ``command_id``, ``notification_id``) lets every reader
drop a second copy, so replaying twice delivers once. Input that never reached a topic
(a webhook the gateway refused) cannot be replayed: it has to be sent again at its
source."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import Producer

from streams.kafka import producer_config, read_topic
from streams.serde import AvroSerde, SerdeError
from streams.settings import Settings
from streams.topics import CATALOG, DEAD_LETTERS

REPLAY_HEADER = "switchboard-replay-of"


@dataclass(frozen=True)
class Letter:
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.record["dead_letter_id"])

    @property
    def replayable(self) -> bool:
        return self.record["original_topic"] is not None

    def line(self) -> str:
        r = self.record
        at: datetime = r["failed_at"]
        origin = (
            f"{r['original_topic']}[{r['original_partition']}]@{r['original_offset']}"
            if r["original_topic"]
            else f"source {r['source'] or '?'} (never reached a topic)"
        )
        reason = " ".join(str(r["reason"]).split())
        reason = reason if len(reason) <= 100 else reason[:99] + "…"
        return (
            f"{self.id}  {at:%Y-%m-%d %H:%M:%S}Z  {r['stage']:<16} {r['error_type']:<20} "
            f"{origin}  {reason}"
        )


def read_letters(settings: Settings, serde: AvroSerde) -> list[Letter]:
    """Every dead letter, oldest first; one per id (a stage that dead-letters the same
    input again after a restart writes the same id)."""
    letters: dict[str, Letter] = {}
    for message in read_topic(settings, DEAD_LETTERS.full_name(settings)):
        letter = Letter(serde.decode(message.value()))
        letters[letter.id] = letter
    return sorted(letters.values(), key=lambda letter: letter.record["failed_at"])


def select(
    letters: Iterable[Letter], ids: Iterable[str] = (), stage: str | None = None
) -> list[Letter]:
    """The letters whose id starts with one of ``ids`` (a prefix as ``list`` shows it is
    enough) or, without ids, those of ``stage``."""
    wanted = list(ids)
    return [
        letter
        for letter in letters
        if (any(letter.id.startswith(i) for i in wanted) if wanted else True)
        and (stage is None or letter.record["stage"] == stage)
    ]


def describe(letter: Letter, serdes: dict[str, AvroSerde]) -> str:
    """Everything a dead letter holds, with its original value decoded when the catalog
    knows the topic's schema and the bytes still decode."""
    r = letter.record
    lines = [f"{name}: {r[name]}" for name in r if name not in ("original_value", "original_key")]
    lines.append(f"original_key: {(r['original_key'] or b'').decode(errors='replace')}")
    value: bytes = r["original_value"]
    serde = serdes.get(r["original_topic"] or "")
    try:
        if serde is None:
            raise SerdeError("no schema known for this topic")
        lines.append(f"original_value (decoded): {serde.decode(value)}")
    except SerdeError as exc:
        lines.append(f"original_value ({len(value)} bytes, not decodable: {exc}):")
        lines.append(value[:2000].decode(errors="replace"))
    return "\n".join(lines)


def catalog_serdes(settings: Settings, registry: Any) -> dict[str, AvroSerde]:
    return {
        spec.full_name(settings): AvroSerde(
            registry, spec.schema, spec.full_name(settings), discriminator=spec.discriminator
        )
        for spec in CATALOG
    }


def replay(settings: Settings, letters: Iterable[Letter]) -> tuple[list[Letter], list[Letter]]:
    """Put each replayable letter back on its original topic; returns (replayed, skipped)."""
    producer = Producer(producer_config(settings))
    replayed, skipped = [], []
    for letter in letters:
        r = letter.record
        if not letter.replayable:
            skipped.append(letter)
            continue
        headers = dict(r["original_headers"])
        headers[REPLAY_HEADER] = letter.id.encode()
        producer.produce(
            r["original_topic"],
            key=r["original_key"],
            value=r["original_value"],
            headers=list(headers.items()),
        )
        replayed.append(letter)
    left = producer.flush(30)
    if left:
        raise ConnectionError(f"{left} replayed records not acknowledged by Kafka within 30 s")
    return replayed, skipped
