"""Fault tolerance on the real 3-broker KRaft cluster (``infra/kafka/kafka.sh start
cluster``: replication factor 3, ``min.insync.replicas`` 2).

Each test runs real ``switchboard worker`` and ``switchboard sink`` processes on a
deterministic feed (the load generator's stories for a fixed seed), injects one fault
while the stream flows, lets the pipeline settle and then checks, end to end:

- state: every event of the feed is in exactly one contact, and the contacts group the
  events exactly as the feed's identifiers join them (the grouping a fault-free run
  makes, derived from the feed itself);
- outputs: no CRM command, audit entry or notification id twice in its topic;
- the CRM store (the SQL sink): every command id in ``crm-commands`` applied exactly once
  or dead-lettered with the store's reason, no applied id that is not in the topic, and
  each table holding exactly the rows its applied commands make.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import parse_schema, schemaless_writer
from sqlalchemy import text
from sqlalchemy.engine import make_url

import schemas
from connectors.sinks.crm.sql import SqlCrmStore, open_store
from connectors.sinks.database import create_sql_engine
from connectors.sources.base import WebhookRequest
from connectors.sources.identity import strongest_key
from connectors.sources.loadgen import LoadReport, Stories, run_load
from connectors.sources.registry import SOURCES
from streams.clock import FileClock
from streams.registry import register_catalog
from streams.serde import AvroSerde, UndecodableMessage, subject_for
from streams.settings import Settings
from streams.topics import (
    ASSIGNMENTS,
    AUDIT,
    CONTACT_EVENTS,
    CONTACT_MERGES,
    CRM_COMMANDS,
    DEAD_LETTERS,
    EVENTS_BY_CONTACT,
    IDENTITY_CLAIMS,
    NOTIFICATIONS,
    REP_ROSTER,
    ROUTING,
    TIMERS,
    TopicSpec,
    ensure_topics,
)
from tests.conftest import ROOT, free_port
from tests.integration.test_stateful_core import REPS, live_contacts
from tests.kafka_helpers import (
    WORKER_INPUTS,
    delete_topics,
    producer,
    read_all,
    running_sink,
    running_worker,
    wait_for,
    worker_metric,
)

pytestmark = pytest.mark.integration

CLUSTER = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
NODES = (1, 2, 3)
CLUSTER_RUN = Path(os.environ.get("SWITCHBOARD_RUN_DIR", ROOT / ".run")) / "kafka" / "cluster"
SEED, COUNT = 33, 400

# The cluster: start, health, one node killed and restarted.


def start_cluster() -> None:
    """``kafka.sh start cluster`` starts only the nodes that are not running."""
    subprocess.run(
        ["bash", "infra/kafka/kafka.sh", "start", "cluster"],
        cwd=ROOT,
        check=True,
        timeout=300,
        capture_output=True,
    )


def node_pid(node: int) -> int | None:
    pidfile = CLUSTER_RUN / f"node{node}" / "kafka.pid"
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().strip())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def kill_node(node: int) -> None:
    """SIGKILL one broker (no controlled shutdown) and wait until it is gone."""
    pid = node_pid(node)
    assert pid is not None, f"node {node} is not running"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: node_pid(node) is None, f"node {node} to die", 30)


def fully_replicated(prefix: str | None = None) -> bool:
    """Three brokers, and every partition (of the topics starting with ``prefix``, and of
    Kafka's own) led and with all three replicas in sync."""
    admin = AdminClient({"bootstrap.servers": CLUSTER, "log_level": 3})
    try:
        meta = admin.list_topics(timeout=10)
    except Exception:
        return False
    if len(meta.brokers) != len(NODES):
        return False
    for name, topic in meta.topics.items():
        if prefix is not None and not (name.startswith(prefix) or name.startswith("__")):
            continue
        for partition in topic.partitions.values():
            if partition.leader < 0 or len(partition.isrs) != len(partition.replicas):
                return False
    return True


@pytest.fixture(scope="module")
def cluster(session_prefix: str) -> Iterator[str]:
    # A worker or sink that crashes in C code (librdkafka) leaves its Python threads'
    # tracebacks in its log.
    faulthandler = os.environ.get("PYTHONFAULTHANDLER")
    os.environ["PYTHONFAULTHANDLER"] = "1"
    start_cluster()
    wait_for(lambda: fully_replicated(session_prefix), "the cluster to be healthy", 90)
    yield CLUSTER
    start_cluster()  # a test that failed with a node down leaves it to us
    wait_for(lambda: fully_replicated(session_prefix), "the cluster to be healthy again", 90)
    # To follow a failure's records afterwards (offsets history, read_uncommitted against
    # read_committed), keep the topics: SWITCHBOARD_KEEP_FAULT_TOPICS=1.
    if not os.environ.get("SWITCHBOARD_KEEP_FAULT_TOPICS"):
        delete_topics(CLUSTER, session_prefix)
    if faulthandler is None:
        del os.environ["PYTHONFAULTHANDLER"]
    else:
        os.environ["PYTHONFAULTHANDLER"] = faulthandler


@pytest.fixture
def on_cluster(
    settings: Settings, cluster: str, registry: SchemaRegistryClient, tmp_path: Path
) -> Settings:
    """The test's own topics and app id, on the cluster, with a CRM store in tmp_path."""
    clock = tmp_path / "clock"
    # Time stands still while the test looks: no SLA clock or workflow wait runs out, so
    # what the pipeline decides depends on the feed alone.
    FileClock.write(clock, datetime.now(UTC))
    ready = settings.model_copy(
        update={
            "kafka_bootstrap": cluster,
            "replication_factor": 3,
            "min_insync_replicas": 2,
            "clock": f"file:{clock}",
            "crm_database_url": f"sqlite:///{tmp_path / 'crm.db'}",
            "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "notify_outbox": tmp_path / "outbox.jsonl",
            "sink_batch_size": 50,
            "sink_backoff_base_s": 0.2,
            "sink_backoff_cap_s": 2.0,
            "sink_breaker_threshold": 3,
            "sink_breaker_cooldown_s": 2.0,
            "metrics_port": 0,
            # A publish waits out a leader election instead of failing.
            "gateway_delivery_timeout_ms": 60_000,
        }
    )
    ensure_topics(ready)
    register_catalog(registry, ready)
    return ready


def publish_roster(settings: Settings, registry: SchemaRegistryClient) -> None:
    """Three reps, so leads get owners: SET_OWNER commands and notifications to reps."""
    roster = serde(registry, settings, REP_ROSTER)
    out = producer(settings)
    for rep in REPS:
        out.produce(roster.topic, key=rep["rep_id"].encode(), value=roster.encode(rep))
    assert out.flush(30) == 0


# The feed and what a fault-free run makes of it.


def feed_events(seed: int, count: int) -> list[dict[str, Any]]:
    """The canonical events the load generator's first ``count`` webhooks map to."""
    stories, events = Stories(seed), []
    for _ in range(count):
        webhook = stories.next()
        content_type = "application/x-www-form-urlencoded" if webhook.form else "application/json"
        request = WebhookRequest(webhook.body, {"Content-Type": content_type})
        events += SOURCES[webhook.source].parse(request, datetime.now(UTC))
    return events


def identifiers(event: dict[str, Any]) -> list[str]:
    ident = event["identity"]
    found = [
        f"{kind}:{ident[name]}"
        for kind, name in (("crm", "crm_id"), ("email", "email"), ("phone", "phone"))
        if ident.get(name)
    ]
    return found + [f"ext:{system}:{v}" for system, v in (ident.get("external_ids") or {}).items()]


def people(events: list[dict[str, Any]]) -> set[frozenset[str]]:
    """The event ids of each person: events sharing an identifier are one person's
    (union-find over identifiers), which is what identity resolution must end with."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for event in events:
        ids = [f"event:{event['event_id']}", *identifiers(event)]
        for other in ids[1:]:
            parent[root(other)] = root(ids[0])
    groups: dict[str, set[str]] = {}
    for event in events:
        groups.setdefault(root(f"event:{event['event_id']}"), set()).add(event["event_id"])
    return {frozenset(g) for g in groups.values()}


@dataclass
class Feed:
    """The load generator writing the feed to Kafka in a thread."""

    settings: Settings
    count: int = COUNT
    seed: int = SEED
    rate: float = 0
    report: LoadReport | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.report = asyncio.run(
            run_load(
                self.settings, rate=self.rate, count=self.count, seed=self.seed, target="kafka"
            )
        )

    def start(self) -> Feed:
        self.thread.start()
        return self

    def wait(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the feed did not finish"
        assert self.report is not None
        assert self.report.statuses == {"published": self.count}, self.report.statuses


def events_in_contacts(settings: Settings) -> Counter[str]:
    return Counter(e for c in live_contacts(settings).values() for e in c.recent_event_ids)


def reached(settings: Settings, count: float) -> bool:
    return processed(settings) >= count


def processed(settings: Settings) -> float:
    try:
        return worker_metric(settings, "switchboard_events_total{", stage="contact")
    except OSError:
        return 0.0


# Settling: every record of every input consumed by its group.


def last_offsets(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    """The offset of the last committed record of each non-empty partition."""
    last: dict[tuple[str, int], int] = {}
    for topic in topics:
        for message in read_all(settings, topic):
            tp = (str(message.topic()), int(message.partition() or 0))
            last[tp] = max(last.get(tp, -1), int(message.offset() or 0))
    return last


COORDINATOR_MOVING = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError._TIMED_OUT,
}


def committed_offsets(consumer: Consumer, tps: list[TopicPartition]) -> list[TopicPartition]:
    """``consumer.committed``, asked again while the group's coordinator moves (after a
    broker was killed the old one answers NOT_COORDINATOR until the client re-finds it)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return consumer.committed(tps, timeout=10)
        except KafkaException as e:
            moving = e.args[0].code() in COORDINATOR_MOVING or e.args[0].retriable()
            if not moving or time.monotonic() > deadline:
                raise
            time.sleep(1)


def behind(settings: Settings, group: str, topics: list[str]) -> dict[str, tuple[int, int]]:
    """The partitions (``topic[p]``) where ``group`` has not committed past the last
    committed record: (its committed offset, that record's offset). The offsets are read
    before the records, so a transaction that commits in between shows up as a record
    not consumed yet, never as a false "done"."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": group, "log_level": 3}
    )
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in consumer.list_topics(t, timeout=10).topics[t].partitions
        ]
        committed = {(tp.topic, tp.partition): tp.offset for tp in committed_offsets(consumer, tps)}
    finally:
        consumer.close()
    return {
        f"{topic.removeprefix(settings.topic_prefix)}[{p}]": (committed.get((topic, p), -1), last)
        for (topic, p), last in last_offsets(settings, topics).items()
        if committed.get((topic, p), -1) <= last
    }


def caught_up(settings: Settings, group: str, topics: list[str]) -> bool:
    return not behind(settings, group, topics)


@dataclass
class Progress:
    """Whether ``group`` has caught up; fails once it has stopped moving: the same
    partitions at the same committed offsets for ``stall_s`` seconds, with the feed
    already written, means nothing is consuming them any more."""

    settings: Settings
    group: str
    topics: list[str]
    stall_s: float = 30.0
    last: dict[str, tuple[int, int]] = field(default_factory=dict)
    since: float = field(default_factory=time.monotonic)

    def __call__(self) -> bool:
        now = behind(self.settings, self.group, self.topics)
        if now != self.last:
            self.last, self.since = now, time.monotonic()
        assert time.monotonic() - self.since < self.stall_s, f"{self.group} stalled"
        return not now


Watched = tuple["subprocess.Popen[bytes]", Path]


class ProcessDied(AssertionError):
    """A worker or sink process ended while the test needed it."""


def assert_running(watched: Sequence[Watched]) -> None:
    """Every watched process is still running (else: how it ended, from its log)."""
    for process, log in watched:
        code = process.poll()
        if code is not None:
            tail = log.read_text(errors="replace")[-1500:]
            raise ProcessDied(f"{log.stem} exited with {code}; its log ends:\n{tail}")


def wait_running(
    condition: Callable[[], bool], what: str, timeout: float, watched: Sequence[Watched]
) -> None:
    """wait_for that fails at once when a watched process dies."""

    def check() -> bool:
        assert_running(watched)
        return condition()

    wait_for(check, what, timeout)


def settle(
    settings: Settings, expected: set[str], watched: Sequence[Watched], timeout: float = 90
) -> None:
    """Wait until the worker's group has consumed every record of every stage input
    (with the feed written, nothing is then in flight: a step's outputs commit with its
    input offset), then the sinks every record of theirs; then every event of the feed
    must be in a contact."""
    worker = [spec.full_name(settings) for spec in WORKER_INPUTS]
    groups = {settings.app_id: worker}
    for sink, spec in (("crm", CRM_COMMANDS), ("notify", NOTIFICATIONS)):
        if any(log.stem.startswith(f"sink-{sink}") for _, log in watched):
            groups[f"{settings.app_id}-sink-{sink}"] = [spec.full_name(settings)]
    try:
        for group, topics in groups.items():
            wait_running(Progress(settings, group, topics), f"{group} to settle", timeout, watched)
    except ProcessDied:
        raise
    except AssertionError as exc:
        missing = len(expected - set(events_in_contacts(settings)))
        lags = {group: behind(settings, group, topics) for group, topics in groups.items()}
        raise AssertionError(f"{exc}: {missing} events in no contact; behind: {lags}") from exc
    lost = sorted(expected - set(events_in_contacts(settings)))
    assert lost == [], f"{len(lost)} events consumed (offsets committed) but in no contact"
    assert_running(watched)


# The checks.


def serde(registry: SchemaRegistryClient, settings: Settings, spec: TopicSpec) -> AvroSerde:
    return AvroSerde(
        registry, spec.schema, spec.full_name(settings), discriminator=spec.discriminator
    )


def records(
    registry: SchemaRegistryClient, settings: Settings, spec: TopicSpec
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The decoded records of a topic, and the values that do not decode."""
    codec = serde(registry, settings, spec)
    good: list[dict[str, Any]] = []
    bad: list[bytes] = []
    for message in read_all(settings, codec.topic):
        try:
            good.append(codec.decode(message.value()))
        except UndecodableMessage:
            bad.append(message.value() or b"")
    return good, bad


def doubled(ids: list[str]) -> list[str]:
    return [i for i, n in Counter(ids).items() if n > 1]


@dataclass(frozen=True)
class Verified:
    contacts: int
    commands: int
    applied: int
    rejected: int
    by_type: Counter[str]


def assert_exactly_once(
    settings: Settings,
    registry: SchemaRegistryClient,
    store: SqlCrmStore,
    events: list[dict[str, Any]],
) -> Verified:
    """Nothing lost, nothing doubled: in the worker's state, its outputs, the CRM store."""
    expected = {e["event_id"] for e in events}
    # State: each event in exactly one contact, grouped as the feed's identifiers join them.
    contacts = live_contacts(settings)
    seen = Counter(e for c in contacts.values() for e in c.recent_event_ids)
    assert sorted(e for e, n in seen.items() if n > 1) == [], "events in two contacts"
    assert set(expected) - set(seen) == set(), "events lost"
    assert set(seen) - set(expected) == set(), "events not in the feed"
    assert {frozenset(c.recent_event_ids) for c in contacts.values()} == people(events)

    # Outputs: no decision written twice.
    commands, _ = records(registry, settings, CRM_COMMANDS)
    assert commands, "no CRM command at all"
    audit, _ = records(registry, settings, AUDIT)
    assert doubled([c["command_id"] for c in commands]) == [], "a CRM command written twice"
    assert doubled([a["audit_id"] for a in audit]) == [], "an audit entry written twice"
    notices, _ = records(registry, settings, NOTIFICATIONS)
    assert doubled([n["notification_id"] for n in notices]) == [], "a notification twice"

    # The CRM store: each command once, or dead-lettered with the store's reason.
    by_id = {c["command_id"]: c for c in commands}
    letters, _ = records(registry, settings, DEAD_LETTERS)
    crm_topic = CRM_COMMANDS.full_name(settings)
    sink_letters = [
        x for x in letters if x["stage"].startswith("sink-") and x["original_topic"] == crm_topic
    ]
    codec = serde(registry, settings, CRM_COMMANDS)
    rejected: dict[str, str] = {}
    for letter in sink_letters:
        if letter["error_type"] == "UndecodableMessage":
            continue  # not a command (the poison test checks these)
        # Only what the store refused: a transient failure must never cost a record.
        assert letter["error_type"] == "Rejected", letter
        assert letter["reason"], letter
        rejected[codec.decode(letter["original_value"])["command_id"]] = letter["reason"]
    applied_rows = store.rows("applied_commands")
    applied = [r["command_id"] for r in applied_rows]
    assert doubled(applied) == []
    assert set(applied) - set(by_id) == set(), "applied commands that are not in the topic"
    assert set(applied) & set(rejected) == set(), "commands both applied and dead-lettered"
    missing = set(by_id) - set(applied) - set(rejected)
    assert missing == set(), f"{len(missing)} commands neither applied nor dead-lettered"

    # Each table holds exactly the rows its applied commands make; a merged contact's rows
    # are its survivor's.
    done = [by_id[i] for i in applied]
    survivor = {a["contact_id"]: a["survivor_id"] for a in store.rows("contact_aliases")}
    made = {survivor.get(c["contact_id"], c["contact_id"]) for c in done}
    assert {r["contact_id"] for r in store.rows("contacts")} == made
    assert set(contacts) <= {r["contact_id"] for r in store.rows("contacts")}
    for table, kind, key in (
        ("deals", "CREATE_DEAL", "deal_id"),
        ("tasks", "CREATE_TASK", "task_id"),
        ("activities", "LOG_ACTIVITY", "activity_id"),
        ("notes", "ADD_NOTE", "note_id"),
    ):
        wanted = {c["payload"][key] for c in done if c["command_type"] == kind}
        assert {r[key] for r in store.rows(table)} == wanted, table
    owners = {c["command_id"] for c in done if c["command_type"] == "SET_OWNER"}
    assert {r["command_id"] for r in store.rows("owner_changes")} == owners
    return Verified(
        contacts=len(contacts),
        commands=len(by_id),
        applied=len(applied),
        rejected=len(rejected),
        by_type=Counter(c["command_type"] for c in commands),
    )


def worker_settings(settings: Settings, tmp_path: Path, name: str) -> Settings:
    """A second worker of the same app: its own web port and state directory."""
    return settings.model_copy(update={"web_port": free_port(), "data_dir": tmp_path / name})


# PostgreSQL, for the destination outage.


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server of these tests' own, run by infra/postgres/postgres.sh under
    its own run directory and port: stopping it stops nobody else's server."""

    run_dir: Path = ROOT / ".run" / "faults"

    @property
    def port(self) -> int:
        # Stable for a run directory, chosen free the first time.
        path = self.run_dir / "postgres.port"
        if not path.exists():
            self.run_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(str(free_port()))
        return int(path.read_text())

    def script(self, action: str) -> subprocess.CompletedProcess[str]:
        env = os.environ | {
            "SWITCHBOARD_RUN_DIR": str(self.run_dir),
            "POSTGRES_PORT": str(self.port),
        }
        return subprocess.run(
            ["bash", "infra/postgres/postgres.sh", action],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def run(self, action: str) -> str:
        done = self.script(action)
        assert done.returncode == 0, f"postgres.sh {action}: {done.stderr}"
        return done.stdout.strip()


@contextmanager
def postgres_schema(server: Postgres) -> Iterator[str]:
    """A URL whose connections work in an empty schema of their own on ``server``, which
    is stopped afterwards, whatever happened meanwhile."""
    server.run("start")
    base = server.run("url")
    schema = f"faults_{uuid.uuid4().hex[:10]}"
    admin = create_sql_engine(base)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        server.run("start")
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
        server.run("stop")


def coordinator(group: str) -> int:
    """The broker that coordinates consumer group ``group``."""
    admin = AdminClient({"bootstrap.servers": CLUSTER, "log_level": 3})
    found = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    return int(found.coordinator.id)


# The scenarios.


@pytest.mark.parametrize(
    "roster", [pytest.param(False, id="no-roster"), pytest.param(True, id="with-roster")]
)
def test_a_worker_killed_mid_stream_and_restarted_loses_and_doubles_nothing(
    on_cluster: Settings, registry: SchemaRegistryClient, tmp_path: Path, roster: bool
) -> None:
    """SIGKILL of the worker mid-stream, then a new one. ``no-roster``: leads stay
    unowned (the router decides 'unassigned'); ``with-roster``: three reps, so leads
    are assigned, and the worker is killed twice."""
    settings = on_cluster
    if roster:
        publish_roster(settings, registry)
    events = feed_events(SEED, COUNT)
    expected = {e["event_id"] for e in events}
    store = open_store(settings.crm_database_url)
    feed = Feed(settings, rate=40)
    sink_log, last_log = tmp_path / "sink-crm.log", tmp_path / "last.log"

    with running_sink(settings, "crm", sink_log) as sink:
        for n in range(2 if roster else 1):
            log = tmp_path / f"killed{n}.log"
            with running_worker(settings, log) as worker:
                if n == 0:
                    feed.start()
                share = 3 if n == 0 else 10  # the second one is killed in its backlog
                wait_running(
                    partial(reached, settings, len(expected) / share),
                    "progress before the kill",
                    90,
                    [(sink, sink_log), (worker, log)],
                )
                worker.kill()  # SIGKILL: no shutdown, its open transactions abandoned
                worker.wait()
            assert len(events_in_contacts(settings)) < len(expected), "done before the kill"
        with running_worker(settings, last_log) as last:
            feed.wait()
            settle(settings, expected, [(sink, sink_log), (last, last_log)])
            assert_exactly_once(settings, registry, store, events)


def leading_most(prefix: str, spare: set[int]) -> int:
    """Of the brokers not in ``spare``, the one leading most partitions of our topics."""
    admin = AdminClient({"bootstrap.servers": CLUSTER, "log_level": 3})
    leaders = Counter(
        p.leader
        for name, topic in admin.list_topics(timeout=10).topics.items()
        if name.startswith(prefix)
        for p in topic.partitions.values()
    )
    return max((n for n in NODES if n not in spare), key=lambda n: leaders[n])


@pytest.mark.parametrize("victim", ["partition-leader", "group-coordinator"])
def test_a_broker_killed_while_the_pipeline_runs_loses_and_doubles_nothing(
    on_cluster: Settings, registry: SchemaRegistryClient, tmp_path: Path, victim: str
) -> None:
    """SIGKILL of one of three brokers mid-stream: with replication factor 3 and
    min.insync.replicas 2 everything goes on. ``partition-leader`` kills the broker leading
    most of the test's partitions that coordinates neither group; ``group-coordinator``
    the one coordinating the worker's group (and so its group membership and commits)."""
    settings = on_cluster
    events = feed_events(SEED, COUNT)
    expected = {e["event_id"] for e in events}
    store = open_store(settings.crm_database_url)
    feed = Feed(settings, rate=25)
    sink_log, worker_log = tmp_path / "sink-crm.log", tmp_path / "worker.log"

    with (
        running_sink(settings, "crm", sink_log) as sink,
        running_worker(settings, worker_log) as worker,
    ):
        watched = [(sink, sink_log), (worker, worker_log)]
        feed.start()
        wait_running(lambda: processed(settings) >= len(expected) / 4, "progress", 90, watched)
        coordinators = {coordinator(settings.app_id), coordinator(f"{settings.app_id}-sink-crm")}
        if victim == "group-coordinator":
            node = coordinator(settings.app_id)
        else:
            node = leading_most(settings.topic_prefix, spare=coordinators)
        try:
            kill_node(node)
            assert feed.thread.is_alive(), "the feed ended before the broker died"
            feed.wait()
            settle(settings, expected, watched)
            assert node_pid(node) is None, "the broker came back by itself"
            assert_exactly_once(settings, registry, store, events)
        finally:
            start_cluster()
            wait_for(lambda: fully_replicated(settings.topic_prefix), "every replica in sync", 90)


@pytest.mark.parametrize(
    "leave",
    [
        pytest.param(False, id="join"),
        pytest.param(True, id="join-then-leave"),
    ],
)
def test_workers_joining_and_leaving_mid_stream_lose_and_double_nothing(
    on_cluster: Settings, registry: SchemaRegistryClient, tmp_path: Path, leave: bool
) -> None:
    """``join``: a second worker joins while the stream flows (a rebalance hands it
    partitions) and both carry on. ``join-then-leave``: each time a new worker has
    joined, the older one leaves gracefully (SIGTERM, another rebalance) while the new
    one still works off what the feed wrote during its start; twice."""
    rounds = 2 if leave else 1
    workers = [worker_settings(on_cluster, tmp_path, f"w{n}") for n in range(rounds + 1)]
    logs = [tmp_path / f"w{n}.log" for n in range(rounds + 1)]
    events = feed_events(SEED, COUNT)
    expected = {e["event_id"] for e in events}
    store = open_store(on_cluster.crm_database_url)
    # Slow enough that the stream still flows after the last join (a worker's start, the
    # rebalance and its table recovery take 20 to 30 s here).
    feed = Feed(on_cluster, rate=6 if leave else 10)
    sink_log = tmp_path / "sink-crm.log"

    with ExitStack() as stack:
        sink = stack.enter_context(running_sink(on_cluster, "crm", sink_log))
        current = stack.enter_context(running_worker(workers[0], logs[0]))
        watched: list[Watched] = [(sink, sink_log), (current, logs[0])]
        feed.start()
        wait_running(lambda: processed(workers[0]) >= len(expected) / 10, "progress", 90, watched)
        for n in range(1, rounds + 1):
            joined = stack.enter_context(running_worker(workers[n], logs[n]))  # a rebalance
            watched.append((joined, logs[n]))
            assert feed.thread.is_alive(), "the feed ended before the rebalance"
            if leave:
                current.terminate()  # SIGTERM: it leaves gracefully, another rebalance
                assert current.wait(60) == 0, logs[n - 1].read_text(errors="replace")[-1500:]
                watched.remove((current, logs[n - 1]))
                current = joined
        feed.wait()
        settle(on_cluster, expected, watched)
        survivors = workers[-1:] if leave else workers
        assert all(processed(w) > 0 for w in survivors), "a worker processed nothing"
        assert_exactly_once(on_cluster, registry, store, events)


OUTAGE_S = 60


def test_the_crm_database_down_for_a_minute_delays_but_loses_and_doubles_nothing(
    on_cluster: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """The CRM store is PostgreSQL here, stopped for a minute mid-stream: the sink's calls
    fail (connection refused, retryable), its circuit opens, it holds the records in
    Kafka and delivers each once PostgreSQL is back; the worker never waits for it."""
    events = feed_events(SEED, COUNT)
    expected = {e["event_id"] for e in events}
    sink_log, worker_log = tmp_path / "sink-crm.log", tmp_path / "worker.log"
    server = Postgres()
    with postgres_schema(server) as url:
        settings = on_cluster.model_copy(update={"crm_database_url": url})
        store = open_store(url)
        feed = Feed(settings, rate=25)
        with (
            running_sink(settings, "crm", sink_log) as sink,
            running_worker(settings, worker_log) as worker,
        ):
            watched = [(sink, sink_log), (worker, worker_log)]
            feed.start()
            wait_running(
                lambda: store.counts()["applied_commands"] >= 30,
                "the first commands in the store",
                90,
                watched,
            )
            applied_before = store.counts()["applied_commands"]
            store.engine.dispose()
            server.run("stop")
            down_at = time.monotonic()
            try:
                wait_running(
                    lambda: b"sql: circuit open" in sink_log.read_bytes(),
                    "the sink to open its circuit",
                    60,
                    watched,
                )
                feed.wait()
                inputs = [spec.full_name(settings) for spec in WORKER_INPUTS]
                wait_running(
                    lambda: caught_up(settings, settings.app_id, inputs),
                    "the worker to decide everything while the store is down",
                    90,
                    watched,
                )
                # The rest of the minute: the sink keeps trying and holding meanwhile.
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
                assert_running(watched)
            finally:
                server.run("start")
            settle(settings, expected, watched)
            assert b"sql: circuit closed" in sink_log.read_bytes()
            result = assert_exactly_once(settings, registry, open_store(url), events)
            assert result.rejected == 0
            assert result.applied > applied_before, "nothing waited for the store"


def poison(spec: TopicSpec) -> tuple[bytes, bytes]:
    """(key, value) of a record that is not Avro at all, for ``spec``'s topic."""
    key = {CONTACT_EVENTS: b"email:poison@example.com", ROUTING: b"router"}.get(
        spec, f"poison-{spec.name}".encode()
    )
    return key, json.dumps({"poison": spec.name}).encode()


# Every topic a stage or a sink reads, and who reads it.
READERS = {
    CONTACT_EVENTS: "identity",
    IDENTITY_CLAIMS: "identity",
    EVENTS_BY_CONTACT: "contact",
    CONTACT_MERGES: "contact",
    ASSIGNMENTS: "contact",
    TIMERS: "contact",
    REP_ROSTER: "roster",
    ROUTING: "routing",
    CRM_COMMANDS: "sink-crm",
    NOTIFICATIONS: "sink-notify",
}


def test_poison_in_every_topic_read_is_dead_lettered_and_the_pipeline_goes_on(
    on_cluster: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings = on_cluster
    assert set(READERS) == {*WORKER_INPUTS, CRM_COMMANDS, NOTIFICATIONS}
    publish_roster(settings, registry)  # leads get owners, reps get notifications
    events = feed_events(SEED, COUNT)
    expected = {e["event_id"] for e in events}
    store = open_store(settings.crm_database_url)
    feed = Feed(settings, rate=30)
    logs = {n: tmp_path / f"{n}.log" for n in ("sink-crm", "sink-notify", "worker")}
    headers: dict[str, str | bytes | None] = {"origin": b"test_faults"}

    with (
        running_sink(settings, "crm", logs["sink-crm"]) as crm,
        running_sink(settings, "notify", logs["sink-notify"]) as notify,
        running_worker(settings, logs["worker"]) as worker,
    ):
        watched = [(crm, logs["sink-crm"]), (notify, logs["sink-notify"]), (worker, logs["worker"])]
        feed.start()
        wait_running(lambda: processed(settings) >= len(expected) / 4, "progress", 90, watched)
        out = producer(settings)
        for spec in READERS:
            key, value = poison(spec)
            out.produce(spec.full_name(settings), key=key, value=value, headers=headers)
        assert out.flush(30) == 0
        assert feed.thread.is_alive(), "the feed ended before the poison"
        feed.wait()
        settle(settings, expected, watched)
        assert_exactly_once(settings, registry, store, events)

    letters, _ = records(registry, settings, DEAD_LETTERS)
    for spec, stage in READERS.items():
        key, value = poison(spec)
        found = [x for x in letters if x["original_value"] == value]
        assert len(found) == 1, f"{spec.name}: {len(found)} dead letters"
        [letter] = found
        assert (letter["original_topic"], letter["original_key"], letter["stage"]) == (
            spec.full_name(settings),
            key,
            stage,
        )
        assert letter["error_type"] == "UndecodableMessage"
        assert "not Confluent-framed Avro: first byte is 0x7b" in letter["reason"]
        assert letter["original_headers"] == headers
    assert len(letters) == len(READERS), "dead letters besides the poison"

    # The notifications went out once each, through the outbox.
    notices, _ = records(registry, settings, NOTIFICATIONS)
    assert notices, "no notification at all"
    outbox = [json.loads(line) for line in settings_outbox(settings).read_text().splitlines()]
    sent = [n["notification_id"] for n in outbox]
    assert doubled(sent) == []
    assert set(sent) == {n["notification_id"] for n in notices}


def settings_outbox(settings: Settings) -> Path:
    assert settings.notify_outbox is not None
    return settings.notify_outbox


TENANT: dict[str, Any] = {"name": "tenant_id", "type": ["null", "string"], "default": None}


def test_events_from_an_evolved_schema_beside_old_consumers_lose_nothing(
    on_cluster: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """A producer on contact_event + an optional ``tenant_id`` (registered as version 2
    of the topic's subject, BACKWARD compatible) writes beside the old one; the worker,
    started on version 1, reads both (the new field ignored) and loses nothing."""
    settings = on_cluster
    events = feed_events(SEED, COUNT)
    expected = {e["event_id"] for e in events}
    store = open_store(settings.crm_database_url)
    old = serde(registry, settings, CONTACT_EVENTS)
    subject = subject_for(old.topic)
    evolved = schemas.schema_json("contact_event")
    evolved["fields"].append(TENANT)
    evolved_text = json.dumps(evolved)
    writer = parse_schema(evolved)
    out = producer(settings)

    def send(batch: list[dict[str, Any]], new_id: int | None = None) -> None:
        for n, event in enumerate(batch):
            if new_id is not None and n % 2 == 0:
                body = io.BytesIO()
                body.write(b"\x00" + new_id.to_bytes(4, "big"))
                prepared = old.validate(event)  # the payload's union branch named
                schemaless_writer(body, writer, {**prepared, "tenant_id": "tenant-7"})
                value = body.getvalue()
            else:
                value = old.encode(event)
            out.produce(old.topic, key=strongest_key(event["identity"]), value=value)
        assert out.flush(30) == 0

    third = len(events) // 3
    sink_log, worker_log = tmp_path / "sink-crm.log", tmp_path / "worker.log"
    with (
        running_sink(settings, "crm", sink_log) as sink,
        running_worker(settings, worker_log) as worker,
    ):
        watched = [(sink, sink_log), (worker, worker_log)]
        send(events[:third])
        wait_running(lambda: processed(settings) >= third / 2, "progress", 90, watched)
        candidate = Schema(evolved_text, "AVRO")
        assert registry.test_compatibility(subject, candidate)
        new_id = registry.register_schema(subject, candidate)
        assert registry.get_latest_version(subject).version == 2
        send(events[third:], new_id)  # half of them with version 2
        settle(settings, expected, watched)
        assert_exactly_once(settings, registry, store, events)

    ids = [int.from_bytes((m.value() or b"")[1:5], "big") for m in read_all(settings, old.topic)]
    with_new = len(events[third:][::2])
    assert Counter(ids) == {old.schema_id(): len(events) - with_new, new_id: with_new}
    letters, _ = records(registry, settings, DEAD_LETTERS)
    assert letters == [], "dead letters"
