"""Client settings every Switchboard producer shares."""

from __future__ import annotations

from typing import Any

from streams.settings import Settings


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer that waits for every in-sync replica.

    ``murmur2_random`` is the Java client's partitioner, which Faust's producer (aiokafka)
    also uses: a key written by a source connector lands on the partition a Faust stage
    expects for that key, so tables and repartition topics stay co-partitioned.
    librdkafka's own default (CRC32) would put the same key elsewhere."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": "murmur2_random",
        # Uncompressed: events are small, and any consumer can read them.
        "log_level": 4,
    } | overrides
