"""Dead letters: input that could not be parsed, validated or delivered is kept with its
original bytes, the reason and the stage that gave up on it (never only a log line)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message

from streams import metrics


def dead_letter(
    *,
    stage: str,
    error: BaseException | str,
    value: bytes | None,
    key: bytes | None = None,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    headers: dict[str, bytes] | None = None,
    source: str | None = None,
    error_type: str | None = None,
    attempts: int = 1,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The DeadLetter record (schemas/dead_letter.avsc) for one failed input.

    The id is derived from where the input came from (topic, partition, offset) or,
    for input that never reached a topic, from its bytes, so dead-lettering the same
    input twice (a redelivery after a crash) yields the same id."""
    value = value or b""
    if topic is not None and offset is not None:
        origin = f"{stage}|{topic}|{partition}|{offset}".encode()
    else:
        origin = f"{stage}|{source}|".encode() + value
    if error_type is None:
        error_type = type(error).__name__ if isinstance(error, BaseException) else "Rejected"
    metrics.DEAD_LETTERS.labels(stage=stage, error_type=error_type).inc()
    return {
        "dead_letter_id": hashlib.sha256(origin).hexdigest()[:32],
        "stage": stage,
        "reason": str(error),
        "error_type": error_type,
        "failed_at": now or datetime.now(UTC),
        "source": source,
        "original_topic": topic,
        "original_partition": partition,
        "original_offset": offset,
        "original_key": key,
        "original_value": value,
        "original_headers": dict(headers or {}),
        "attempts": attempts,
    }


def message_dead_letter(
    message: Message, *, stage: str, error: BaseException, **more: Any
) -> dict[str, Any]:
    """The dead letter of a consumed Kafka ``message``: its bytes, place and headers."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    headers = {
        str(k): v if isinstance(v, bytes) else str(v).encode() for k, v in pairs if v is not None
    }
    return dead_letter(
        stage=stage,
        error=error,
        value=message.value(),
        key=message.key(),
        topic=message.topic(),
        partition=message.partition(),
        offset=message.offset(),
        headers=headers,
        **more,
    )
