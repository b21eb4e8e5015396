"""Exactly-once: a worker killed with SIGKILL in the middle of a stream and restarted
leaves state and outputs as if nothing had happened: every event in exactly one contact,
no audit entry or CRM command twice, with tables in memory and on disk."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.sources.loadgen import run_load
from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import AUDIT, CRM_COMMANDS, ensure_topics
from tests.integration.test_stateful_core import live_contacts
from tests.kafka_helpers import get, read_all, running_worker, worker_metric
from tests.webhooks import expected_event_ids

pytestmark = pytest.mark.integration

SEED, COUNT = 21, 400
ASSIGNED = re.compile(r"assigned partitions \[[\d, ]*\]: (\d+) keys held, (\d+) changelog")


def checkpoints(settings: Settings) -> float:
    body = get(f"http://127.0.0.1:{settings.web_port}/metrics")
    (count,) = [
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith("switchboard_checkpoint_seconds_count")
    ]
    return count


def event_ids_in_contacts(settings: Settings) -> Counter[str]:
    return Counter(e for c in live_contacts(settings).values() for e in c.recent_event_ids)


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_sigkill_mid_stream_then_restart_changes_nothing_twice(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path, store: str
) -> None:
    """With RocksDB the restarted worker finds the killed one's tables on disk, which hold
    only committed writes (a store is written after its transaction commits): it goes on
    from them, reading only the changelog past the offset they reached."""
    settings = settings.model_copy(update={"store": store})
    ensure_topics(settings)
    register_catalog(registry, settings)
    report = asyncio.run(run_load(settings, rate=0, count=COUNT, seed=SEED, target="kafka"))
    assert report.statuses == {"published": COUNT}
    expected = expected_event_ids(SEED, COUNT)

    with running_worker(settings, tmp_path / "first.log") as first:
        deadline = time.monotonic() + 60
        # Killed mid-stream, once it has committed some of its work.
        while (
            worker_metric(settings, "switchboard_events_total{") < len(expected) / 3
            or checkpoints(settings) < 2
        ):
            assert time.monotonic() < deadline, "the first worker made no progress"
            time.sleep(0.05)
        first.kill()  # SIGKILL: no shutdown, open transactions abandoned
        first.wait()

    with running_worker(settings, tmp_path / "second.log"):
        deadline = time.monotonic() + 120
        seen: Counter[str] = Counter()
        while set(seen) != expected:
            assert time.monotonic() < deadline, f"{len(expected - set(seen))} events missing"
            time.sleep(1)
            seen = event_ids_in_contacts(settings)

    # The restarted worker restores from the changelogs only what its stores lack: all of
    # it in memory, with RocksDB only what committed after the store's last write.
    held, restored = map(int, ASSIGNED.findall((tmp_path / "second.log").read_text())[0])
    if store == "rocksdb://":
        assert held > 0 and restored < held
    else:
        assert held == 0 and restored > 0

    # State: each event in exactly one contact, once.
    assert seen == Counter(expected)

    # Outputs: no audit entry or CRM command twice among committed records.
    for spec, schema, key in (
        (AUDIT, "audit_entry", "audit_id"),
        (CRM_COMMANDS, "crm_command", "command_id"),
    ):
        serde = AvroSerde(
            registry, schema, spec.full_name(settings), discriminator=spec.discriminator
        )
        ids = Counter(serde.decode(m.value())[key] for m in read_all(settings, serde.topic))
        assert ids, f"no {schema} at all"
        assert [i for i, n in ids.items() if n > 1] == [], f"{schema} written twice"
