"""What every stage does with the record it is handed: take the decoded value, and
observe how old the event is when the stage takes it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from streams import metrics
from streams.engine import Decoded, Output


def record_of(item: Decoded) -> dict[str, Any]:
    assert item.record is not None  # these routes take no tombstones
    return item.record


def observe_age(stage: str, event: dict[str, Any]) -> None:
    # time.time(), not datetime.now(UTC) and a timedelta: two objects fewer per event
    age = time.time() - event["received_time"].timestamp()
    metrics.labelled(metrics.EVENT_AGE, stage).observe(max(age, 0.0))


def by_contact(
    handle: Callable[[str, dict[str, Any], int], list[Output]],
) -> Callable[[Decoded], list[Output]]:
    """A contact-keyed step, ``handle(contact_id, record, partition)``, as a route."""

    def step(item: Decoded) -> list[Output]:
        return handle((item.key or b"").decode(), record_of(item), item.partition)

    return step
