"""The worker runtime (streams.engine) on the real broker, in one process, with a stage
of the test's own: what a checkpoint commits, what a failing record leaves, and what a
restarted worker finds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from prometheus_client import REGISTRY

from streams.engine import Decoded, Engine, Output, from_changelog
from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import DEAD_LETTERS, IDENTITY_CLAIMS, ensure_internal_topics, ensure_topics
from tests.kafka_helpers import producer, read_all, wait_for

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def claim(identifier: str, n: int) -> dict[str, object]:
    return {
        "identifier": identifier,
        "contact_id": f"c-{n}",
        "event_id": f"e-{n}",
        "claimed_at": T0,
    }


@contextmanager
def running(settings: Settings, registry: SchemaRegistryClient) -> Iterator[Engine]:
    """An engine whose one stage counts claims per identifier in a table, echoes each
    claim to a topic of its own, raises on the identifier ``boom`` and returns a record
    the contract refuses for ``badout``."""
    claims = AvroSerde(registry, "identity_claim", IDENTITY_CLAIMS.full_name(settings))
    dead = AvroSerde(registry, "dead_letter", DEAD_LETTERS.full_name(settings))
    echo_topic = IDENTITY_CLAIMS.full_name(settings) + ".echo"
    engine = Engine(settings, {"dead_letters": (dead.topic, dead), "echo": (echo_topic, claims)})
    counts = engine.table("counts")

    def count(item: Decoded) -> Sequence[Output]:
        assert item.record is not None
        identifier = item.record["identifier"]
        counts[identifier] = str(int(counts.get(identifier) or 0) + 1)
        if identifier == "boom":
            raise RuntimeError("the stage broke on boom")
        if identifier == "badout":  # an output the contract refuses
            return [("echo", identifier, {**item.record, "claimed_at": "yesterday"})]
        return [("echo", identifier, item.record)]

    engine.route((claims.topic, claims), "counting", count)
    ensure_internal_topics(
        settings, {echo_topic: (settings.partitions, {}), **engine.internal_topics()}
    )
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        engine.stop()
        thread.join(30)
        assert not thread.is_alive()


def committed(settings: Settings, topic: str) -> int:
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.app_id}
    )
    try:
        (found,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return int(found.offset)
    finally:
        consumer.close()


def changelog(settings: Settings) -> list[tuple[str, str | None]]:
    topic = f"{settings.app_id}-counts-changelog"
    return [from_changelog(m.key(), m.value()) for m in read_all(settings, topic)]


def test_a_checkpoint_writes_each_key_once_and_a_failing_record_leaves_nothing_but_a_dead_letter(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"partitions": 1, "commit_interval_s": 5.0})
    ensure_topics(settings)
    register_catalog(registry, settings)
    claims = AvroSerde(registry, "identity_claim", IDENTITY_CLAIMS.full_name(settings))
    out = producer(settings)
    records = [claim("email:a@example.com", n) for n in range(200)]
    records.insert(100, claim("boom", 999))
    records.insert(50, claim("badout", 998))
    records.append(claim("boom", 1000))  # the last record: its offset must commit too
    for record in records:
        out.produce(
            claims.topic, key=str(record["identifier"]).encode(), value=claims.encode(record)
        )
    out.flush(10)
    echo_topic = claims.topic + ".echo"

    with running(settings, registry):
        wait_for(lambda: len(read_all(settings, echo_topic)) >= 200, "the echoes", timeout=60)
        wait_for(lambda: len(read_all(settings, DEAD_LETTERS.full_name(settings))) >= 3, "all")

    # One checkpoint for all 203 records: the key written 200 times is on its changelog
    # once, with its last value; the failing records' writes are not there at all.
    assert changelog(settings) == [("email:a@example.com", "200")]
    echoes = [claims.decode(m.value())["event_id"] for m in read_all(settings, echo_topic)]
    assert echoes == [f"e-{n}" for n in range(200)]  # in order, none from boom
    dead = AvroSerde(registry, "dead_letter", DEAD_LETTERS.full_name(settings))
    refused, letter, last = [dead.decode(m.value()) for m in read_all(settings, dead.topic)]
    assert (refused["stage"], refused["error_type"]) == ("counting", "SchemaViolation")
    assert "claimed_at" in refused["reason"]
    assert last["original_offset"] == 202
    assert committed(settings, claims.topic) == 203
    assert letter["stage"] == "counting"
    assert letter["error_type"] == "RuntimeError"
    assert letter["reason"] == "the stage broke on boom"
    assert claims.decode(letter["original_value"])["event_id"] == "e-999"
    assert letter["original_key"] == b"boom"


def test_a_restarted_worker_goes_on_from_its_stores_and_commits_nothing_twice(
    settings: Settings, registry: SchemaRegistryClient
) -> None:
    settings = settings.model_copy(update={"partitions": 2, "store": "rocksdb://"})
    ensure_topics(settings)
    register_catalog(registry, settings)
    claims = AvroSerde(registry, "identity_claim", IDENTITY_CLAIMS.full_name(settings))
    echo_topic = claims.topic + ".echo"
    out = producer(settings)

    def send(first: int, last: int) -> None:
        for n in range(first, last):
            record = claim(f"phone:+4420{n % 7}", n)
            out.produce(
                claims.topic, key=str(record["identifier"]).encode(), value=claims.encode(record)
            )
        out.flush(10)

    def restored() -> float:
        return (
            REGISTRY.get_sample_value(
                "switchboard_table_restored_records_total", {"table": "counts"}
            )
            or 0.0
        )

    send(0, 70)
    with running(settings, registry):
        wait_for(lambda: len(read_all(settings, echo_topic)) >= 70, "the first echoes")
    send(70, 140)
    before = restored()
    with running(settings, registry) as second:
        wait_for(lambda: len(read_all(settings, echo_topic)) >= 140, "the second echoes")
        time.sleep(1)
        counts = dict(second.tables[0].items({0, 1}))
    # It stopped cleanly: its stores had every committed write, nothing to restore.
    assert restored() == before
    assert counts == {f"phone:+4420{k}": "20" for k in range(7)}
    echoes = [claims.decode(m.value())["event_id"] for m in read_all(settings, echo_topic)]
    assert sorted(echoes) == sorted(f"e-{n}" for n in range(140))  # none twice


BACKLOG = 60_000


def drained_with_requests(
    settings: Settings,
    registry: SchemaRegistryClient,
    urgent: bool,
    backlog: int = BACKLOG,
    work_s: float = 0.0,
) -> list[int]:
    """A worker drains ``backlog`` records, spending ``work_s`` on each, and for one record
    in ten writes a request to a topic it reads itself (``urgent`` or not), as a lead's
    routing request asks the router. For each request, in order: how many backlog records
    the worker had handled when it came back (request n was sent at record 10 * (n + 1))."""
    settings = settings.model_copy(update={"partitions": 6})
    ensure_topics(settings)
    register_catalog(registry, settings)
    claims = AvroSerde(registry, "identity_claim", IDENTITY_CLAIMS.full_name(settings))
    dead = AvroSerde(registry, "dead_letter", DEAD_LETTERS.full_name(settings))
    requests = claims.topic + ".requests"
    out = producer(settings)
    for n in range(backlog):
        record = claim(f"email:{n}@example.com", n)
        out.produce(
            claims.topic, key=str(record["identifier"]).encode(), value=claims.encode(record)
        )
    out.flush(30)

    engine = Engine(settings, {"dead_letters": (dead.topic, dead), "requests": (requests, claims)})
    drained: list[int] = []
    handled = 0

    def drain(item: Decoded) -> Sequence[Output]:
        nonlocal handled
        handled += 1
        assert item.record is not None
        done = time.perf_counter() + work_s
        while time.perf_counter() < done:
            pass
        return [("requests", "router", item.record)] if handled % 10 == 0 else []

    def answer(item: Decoded) -> Sequence[Output]:
        drained.append(handled)
        return []

    engine.route((claims.topic, claims), "draining", drain)
    engine.route((requests, claims), "answering", answer, urgent=urgent)
    ensure_internal_topics(settings, {requests: (settings.partitions, {})})
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(drained) >= backlog // 10, "every request back", timeout=120)
    finally:
        engine.stop()
        thread.join(30)
    assert (handled, len(drained)) == (backlog, backlog // 10)
    return drained


def test_what_a_worker_writes_to_its_own_inputs_is_read_while_it_drains_a_backlog(
    settings: Settings, registry: SchemaRegistryClient
) -> None:
    """Behind a backlog, the records a worker writes to a topic it reads itself (a lead's
    routing request, an assignment, a claim) come back while it drains the backlog, not
    after it: with librdkafka's default fetch queue the whole backlog was queued ahead of
    them, and no lead was routed until the backlog was drained."""
    drained = drained_with_requests(settings, registry, urgent=False)
    # The first requests came back with most of the backlog still to drain.
    assert drained[0] < BACKLOG * 3 // 4, f"first request back after {drained[0]} records"


def test_an_urgent_input_is_read_ahead_of_the_backlog_queued_before_it(
    settings: Settings, registry: SchemaRegistryClient
) -> None:
    """What a worker writes to an urgent input (a routing request, an assignment, a due
    notice, a merge step) is read ahead of the backlog already in its fetch queue, within
    a checkpoint and a check of being sent, through the whole drain. The worker spends
    250 µs a record, as a stage does; its fetch queue then holds seconds of backlog
    (about 10,000 records here, measured: first request back after 14,841 records,
    median 9,821 and 95th percentile 13,611 records after it was sent, without
    urgency; 4,000, 3,370 and 5,690 with it)."""
    drained = drained_with_requests(
        settings, registry, urgent=True, backlog=30_000, work_s=0.000_25
    )
    late = sorted(back - 10 * (n + 1) for n, back in enumerate(drained))
    median, worst = late[len(late) // 2], late[int(len(late) * 0.95)]
    assert drained[0] < 10_000, f"first request back after {drained[0]} records"
    assert median < 6_000, f"median request back {median} records after it was sent"
    assert worst < 9_000, f"95th percentile request back {worst} records after it was sent"
