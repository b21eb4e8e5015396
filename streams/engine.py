"""The exactly-once runtime of the stateful stages, on confluent-kafka.

One consumer and one transactional producer per worker process (KIP-447: input offsets go
into the transaction with the consumer's group metadata, so a worker that lost its
partitions is fenced by the group's generation). Input is read ``read_committed``, with
range assignment: partition p of every input topic, and of every table, is on the same
worker, which is what co-partitioned stages need.

A stage is a function of one decoded record that reads and writes tables
(streams.tables) and returns its outputs; the runtime does all I/O. Records are
processed in batches; a checkpoint (every ``commit_interval_s`` or ``checkpoint_records``
records) commits in one transaction the outputs of every record since the last one,
each dirty table key once on its changelog, and the input offsets. A record that cannot
be decoded, or whose stage raises, becomes a dead letter in the same transaction, and
its table writes and outputs are dropped.

After a commit each table's local store takes the changes, with the changelog offset
they reached; on an assignment the worker restores only the changelog past that offset.
The other partitions' stores follow their changelogs as standby copies, so a worker
that takes one over restores only the tail. An aborted transaction drops what it held
and rewinds the consumer to where it began."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import IO, Any, NamedTuple

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams import metrics
from streams.dlq import message_dead_letter
from streams.kafka import arrived, group_consumer_config, producer_config, watermarks
from streams.serde import AvroSerde, UndecodableMessage
from streams.settings import Settings
from streams.tables import Table

log = logging.getLogger("switchboard.worker")

# (output name, key, record): what a stage returns, for the runtime to write.
Output = tuple[str, str, dict[str, Any]]
# (output name, key, value): a record forwarded as it came, already in the output's contract.
Forwarded = tuple[str, str, bytes]


# Immutable as a frozen dataclass was, but built and read faster: there is one a record.
class Decoded(NamedTuple):
    key: bytes | None
    record: dict[str, Any] | None  # None: a tombstone, on a route that takes them
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None  # as it came, to forward unchanged


Handler = Callable[[Decoded], Sequence[Output | Forwarded]]


@dataclass(frozen=True)
class Route:
    stage: str
    serde: AvroSerde
    handle: Handler
    tombstones: bool = False
    urgent: bool = False


@dataclass(frozen=True)
class Tick:
    every_s: float
    run: Callable[[], Sequence[Output]]


class Refused(Exception):
    """A record its stage refuses (its data, not a fault of the stage): dead-lettered with
    this reason, logged in one line."""


class Rewound(Exception):
    """The transaction was aborted and the input rewound: drop the rest of the batch."""


class TransactionFailed(Exception):
    """Kafka refused a step of the transaction: it must be aborted."""


class ProducerStuck(Exception):
    """A transactional call does not return, or failed for good (a fatal error): the
    producer must be replaced."""


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


# Changelog keys and values are JSON strings, as Faust wrote them: a worker upgraded from
# the Faust runtime restores the tables it left (same topics, same consumer group).
def changelog_record(key: str, value: str | None) -> tuple[bytes, bytes | None]:
    # What json.dumps does with a str, without its two calls and checks of its options.
    quoted = encode_basestring_ascii
    return quoted(key).encode(), None if value is None else quoted(value).encode()


def from_changelog(key: bytes | None, value: bytes | None) -> tuple[str, str | None]:
    return _unquoted(key or b'""'), None if value is None else _unquoted(value)


def _unquoted(raw: bytes) -> str:
    # Most keys and many values need no unescaping: a restore reads millions of them.
    if raw[:1] == b'"' and raw[-1:] == b'"' and b"\\" not in raw:
        return raw[1:-1].decode()
    found: str = json.loads(raw)
    return found


# Records read at most per poll; a full batch means more was waiting.
BATCH = 1000
# The longest a worker with nothing to do waits for a record before its other chores.
IDLE_WAIT_S = 0.05
# Behind a backlog, a checkpoint every this many commit intervals (or checkpoint_records).
BACKLOG_INTERVALS = 5
# A partition this many records below its high watermark is behind a backlog (caught
# up, a partition holds what the open transactions wrote to it: a few dozen records).
BEHIND_RECORDS = 500
# Caught up, a checkpoint as soon as the transaction is this old: not at every poll, so
# a trickle of records does not cost a transaction each.
CAUGHT_UP_S = 0.02
# Behind a backlog, how often a worker looks for records waiting on its urgent inputs.
URGENT_CHECK_S = 0.5


class Engine:
    def __init__(self, settings: Settings, outputs: dict[str, tuple[str, AvroSerde]]) -> None:
        self.settings = settings
        self.outputs = outputs
        self.routes: dict[str, Route] = {}
        self.tables: list[Table] = []
        self.ticks: list[Tick] = []
        self.assigned_callbacks: list[Callable[[set[int]], None]] = []
        self.partitions: set[int] = set()
        self.checkpoint_records = 5000
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self._standby: Consumer | None = None
        self._slot_lock: IO[str] | None = None
        self.directory: Path | None = None
        self._dead_letters = outputs["dead_letters"]
        # Per input partition: the next offset to commit, and where the transaction began.
        self._positions: dict[tuple[str, int], int] = {}
        self._starts: dict[tuple[str, int], int] = {}
        self._committing = False
        self._doomed = False  # its partitions were lost: it must not commit
        # Records consumed while a checkpoint waited (see _keep_membership), to read again.
        self._skipped: dict[tuple[str, int], int] = {}
        self._paused = False
        self._backlog = False  # the last batch read was behind a backlog
        self._read_ahead = False  # the last batch was read from the urgent partitions only
        self._urgent_checked = 0.0
        # Urgent partitions not read since they were assigned: where the group left them.
        self._committed_at: dict[tuple[str, int], int] = {}
        self._in_callback = False
        # How long a checkpoint retries a coordinator that moves before it gives up.
        self.transaction_retry_s = 10.0
        self._in_transaction = False
        self._transaction_started = 0.0
        self._records = 0
        self._written: dict[tuple[str, int], int] = {}
        # Records written per topic in the open transaction: counted into RECORDS_SENT
        # when it commits (a metric update per record was a measurable part of a worker).
        self._written_per_topic: dict[str, int] = {}
        self._abandoned: list[Producer] = []  # stuck in a call: kept, never closed
        self._stopping = False
        self._ready = False
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.every(5.0, self._measure_tables)

    # -- composition -----------------------------------------------------------------------

    def table(self, name: str) -> Table:
        directory = self._state_directory() / name if self._on_disk() else None
        table = Table(name, changelog_topic(self.settings, name), directory)
        self.tables.append(table)
        return table

    def route(
        self,
        source: tuple[str, AvroSerde],
        stage: str,
        handle: Handler,
        tombstones: bool = False,
        urgent: bool = False,
    ) -> None:
        """Hand each record of ``source`` (a topic and its serde) to ``handle``. An
        ``urgent`` source is read ahead of a backlog on the others (see _read)."""
        topic, serde = source
        self.routes[topic] = Route(stage, serde, handle, tombstones, urgent)
        metrics.DEAD_LETTERS.labels(stage=stage, error_type=UndecodableMessage.__name__)

    def every(self, seconds: float, run: Callable[[], Sequence[Output]]) -> None:
        """Call ``run`` about every ``seconds``; what it returns is written in the transaction."""
        self.ticks.append(Tick(seconds, run))

    def on_assigned(self, callback: Callable[[set[int]], None]) -> None:
        """Call ``callback`` with this worker's partitions once its tables hold them."""
        self.assigned_callbacks.append(callback)

    def _measure_tables(self) -> list[Output]:
        for table in self.tables:
            metrics.TABLE_KEYS.labels(table=table.name).set(len(table))
        return []

    def internal_topics(self) -> dict[str, tuple[int, dict[str, str]]]:
        isr = {"min.insync.replicas": str(self.settings.min_insync_replicas)}
        return {
            table.changelog: (self.settings.partitions, {"cleanup.policy": "compact", **isr})
            for table in self.tables
        }

    # -- the worker's own directory and transactional id -------------------------------------

    def _on_disk(self) -> bool:
        return self.settings.store.startswith("rocksdb:")

    def _state_directory(self) -> Path:
        """A slot of data_dir that no other live worker on this host holds (a lock file;
        the OS releases it when a worker dies). Its number is part of the transactional id,
        so a worker restarted in the slot fences the transactions its predecessor left open."""
        if self.directory is None:
            base = Path(self.settings.data_dir) / self.settings.app_id
            slot = 0
            while True:
                directory = base / f"slot-{slot}"
                directory.mkdir(parents=True, exist_ok=True)
                lock = (directory / "lock").open("w")
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    lock.close()
                    slot += 1
                    continue
                self._slot_lock, self.directory = lock, directory
                break
        return self.directory

    def transactional_id(self) -> str:
        """Stable for a worker restarted on the same host and directory, unique among live
        workers: the host, the data directory and the slot in it."""
        directory = self._state_directory().resolve()
        where = hashlib.sha256(str(directory.parent).encode()).hexdigest()[:8]
        return f"{self.settings.app_id}-{socket.gethostname()}-{where}-{directory.name}"

    # -- running -----------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        self._stopping = True

    def run(self) -> None:
        settings = self.settings
        self.producer = self._new_producer()
        self.consumer = Consumer(
            group_consumer_config(
                settings,
                settings.app_id,
                **{
                    "partition.assignment.strategy": "range",
                    "session.timeout.ms": int(settings.session_timeout_s * 1000),
                    "heartbeat.interval.ms": int(settings.session_timeout_s * 250),
                    # Short idle fetches. (A waiting read_committed fetch is answered when a
                    # transaction commits, measured within 1 ms at 500 or 20: not the reason.)
                    "fetch.wait.max.ms": 20,
                    # A bounded fetch queue. Unbounded (1 MB a partition a fetch, 64 MB in
                    # all), a backlog of events-by-contact filled it, and the records the
                    # worker writes itself to a small topic (routing, assignments, claims)
                    # queued behind all of it: behind a backlog no lead was routed until
                    # the backlog was drained. The drain is no slower (bench_core).
                    "max.partition.fetch.bytes": 256 * 1024,
                    "queued.min.messages": 2_000,
                    "fetch.queue.backoff.ms": 10,
                    "client.id": self.transactional_id(),
                    "log_level": 4,
                },
            )
        )
        self._subscribe()
        last_tick = [time.monotonic()] * len(self.ticks)
        try:
            while not self._stopping:
                if self._paused:  # by a checkpoint that waited (librdkafka keeps a
                    # partition paused when it is assigned again: see _on_assign)
                    self.consumer.resume(self.consumer.assignment())
                    self._paused = False
                batch = self._read()
                # Where each partition of the batch starts, should its transaction abort.
                self._unread(batch, self._starts)
                try:
                    if self._doomed:
                        self._abort()
                        continue
                    for message in batch:
                        self.process(message)
                    self._poll_standby()
                    now = time.monotonic()
                    for n, tick in enumerate(self.ticks):
                        if now - last_tick[n] >= tick.every_s and self.partitions:
                            last_tick[n] = now
                            self._write(tick.run())
                    if not self._read_ahead:  # a few urgent records say nothing of a backlog
                        self._backlog = self._behind(batch)
                    if self._in_transaction and self._due(now, backlog=self._backlog):
                        self.checkpoint()
                except Rewound:
                    continue
            with contextlib.suppress(Rewound):
                self.checkpoint()
        finally:
            self.consumer.close()
            if self._standby is not None:
                self._standby.close()
            with contextlib.suppress(KafkaException):  # nothing is left to commit
                self.producer.flush(10)
            for table in self.tables:
                table.close()
            if self._slot_lock is not None:
                self._slot_lock.close()  # the slot is free for the next worker
            log.info("worker stopped")

    def _behind(self, batch: list[Message]) -> bool:
        """Whether the worker is behind a backlog: its read was a full batch, or a
        partition it read is still far below its high watermark (as the last fetch told:
        the fetch queue is short, so a batch is often less than full behind a backlog)."""
        if len(batch) == BATCH:
            return True
        assert self.consumer is not None
        last: dict[tuple[str, int], int] = {}
        for message in batch:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is not None and partition is not None and offset is not None:
                last[(topic, partition)] = offset
        for (topic, partition), offset in last.items():
            try:
                _, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:  # nothing known of it (yet): not taken as behind
                continue
            if high - offset > BEHIND_RECORDS:
                return True
        return False

    def _read(self) -> list[Message]:
        """What has arrived (streams.kafka.arrived: consume() alone cost every hop 50 ms
        of waiting); the wait never runs past when the open transaction is due.

        Behind a backlog, what the worker wrote to its urgent inputs (a lead's routing
        request, its assignment, a due notice, a merge step) waits in the fetch queue
        behind seconds of the backlog: 12 to 22% of bench_core's leads were routed only
        when the backlog was drained. So every URGENT_CHECK_S the worker looks whether
        an urgent partition holds records it has not read, and if one does, reads them
        first."""
        assert self.consumer is not None
        now = time.monotonic()
        wait = IDLE_WAIT_S
        if self._in_transaction:
            wait = max(0.0, min(wait, self._transaction_started + CAUGHT_UP_S - now))
        self._read_ahead = False
        if self._backlog and now - self._urgent_checked >= URGENT_CHECK_S:
            self._urgent_checked = now
            assigned = self.consumer.assignment()
            urgent = [tp for tp in assigned if self.routes[tp.topic].urgent]
            if urgent and self._urgent_waiting(urgent):
                self._read_ahead = True
                others = [tp for tp in assigned if not self.routes[tp.topic].urgent]
                return self._read_urgent(others, wait)
        return arrived(self.consumer, BATCH, wait)

    def _urgent_waiting(self, urgent: list[TopicPartition]) -> bool:
        """Whether one of the ``urgent`` partitions has records past where the worker
        read it, or where the group left it if the worker has not read it yet (as the
        last fetch told). A committed transaction leaves one marker after its records,
        so a single offset past that is no record."""
        assert self.consumer is not None
        positions = self.consumer.position(urgent)
        unread = [
            tp
            for tp in positions
            if tp.offset < 0 and (tp.topic, tp.partition) not in self._committed_at
        ]
        if unread:
            try:
                for tp in self.consumer.committed(unread, timeout=5):
                    self._committed_at[(tp.topic, tp.partition)] = tp.offset
            except KafkaException:  # asked again at the next check
                pass
        for tp in positions:
            try:
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:  # not fetched yet
                continue
            at = tp.offset if tp.offset >= 0 else self._committed_at.get((tp.topic, tp.partition))
            if at is None:  # asked again at the next check
                continue
            if at < 0:  # nothing committed either: read from the start (auto.offset.reset)
                if low < 0:
                    continue
                at = low
            if high - at > 1:
                return True
        return False

    def _read_urgent(self, others: list[TopicPartition], wait: float) -> list[Message]:
        """The records waiting on the urgent partitions, ahead of the queue: the ``others``
        are paused for the read, which drops what librdkafka had fetched of them, and
        resumed at once; their fetching starts again where the worker read them up to."""
        assert self.consumer is not None
        self.consumer.pause(others)
        try:
            return arrived(self.consumer, BATCH, max(wait, 0.01))
        finally:
            try:
                self.consumer.resume(others)
            except KafkaException:  # a rebalance took some: resume what is assigned
                self._paused = True

    def _subscribe(self) -> None:
        assert self.consumer is not None
        self.consumer.subscribe(
            list(self.routes),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _new_producer(self) -> Producer:
        transactional = {
            "transactional.id": self.transactional_id(),
            # A transaction left open by a worker that died and is not restarted holds
            # back read_committed readers until the broker aborts it.
            "transaction.timeout.ms": 30_000,
        }
        producer = Producer(
            producer_config(
                self.settings,
                **(transactional if self.exactly_once else {}),
                **{"linger.ms": 5, "queue.buffering.max.messages": 500_000},
            )
        )
        while self.exactly_once:
            try:
                # It fences an earlier producer of this id, aborting what it left open.
                producer.init_transactions(30)
                break
            except KafkaException as exc:
                if not exc.args[0].retriable():
                    raise
                log.warning("init transactions: %s; retrying", exc.args[0])
                if self.consumer is not None:
                    self._keep_membership()
        return producer

    def process(self, message: Message) -> None:
        """One consumed record, inside the open transaction: its stage's outputs sent, its
        table writes kept for the checkpoint, or the record set aside as a dead letter."""
        error = message.error()
        if error is not None:
            if error.fatal():
                raise KafkaException(error)
            log.warning("consumer: %s", error)
            return
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        route = self.routes[topic]
        self._begin()
        for table in self.tables:
            table.partition = partition  # focus(), without a call per table and record
        value = message.value()
        encoded: list[tuple[str, bytes, bytes]] = []
        letter: dict[str, Any] | None = None
        try:
            record = None if value is None and route.tombstones else route.serde.decode(value)
            _, timestamp = message.timestamp()
            decoded = Decoded(message.key(), record, topic, partition, offset, timestamp, value)
            # Encoded before anything is sent: an output the contract refuses fails its record.
            encoded = self._encoded(route.handle(decoded))
        except UndecodableMessage as exc:
            letter = message_dead_letter(message, stage=route.stage, error=exc)
        except Refused as exc:
            log.warning("%s refused %s[%d]@%d: %s", route.stage, topic, partition, offset, exc)
            letter = message_dead_letter(message, stage=route.stage, error=exc)
        except Exception as exc:
            # A stage's own fault: its record goes aside whole, the rest goes on.
            log.exception("%s failed on %s[%d]@%d", route.stage, topic, partition, offset)
            letter = message_dead_letter(message, stage=route.stage, error=exc)
        if letter is None:
            for table in self.tables:
                if table.pending:  # most records write one table or two
                    table.keep()
            for output in encoded:
                self._produce(*output)
        else:
            for table in self.tables:
                table.drop()
            dead_letters, serde = self._dead_letters
            self._produce(dead_letters, message.key(), serde.encode(letter))
        self._positions[(topic, partition)] = offset + 1
        self._records += 1

    # -- the transaction ---------------------------------------------------------------------

    def _due(self, now: float, backlog: bool) -> bool:
        """Whether to checkpoint now. Each checkpoint costs the worker a round of waits on
        the broker, and its outputs wait for it downstream. Caught up (the last read
        found less than a full batch), nothing is gained by waiting: commit at once.
        Behind a backlog, latency is the backlog's: commit less often, so that cost is
        spread over more records."""
        elapsed = now - self._transaction_started
        if self._records >= self.checkpoint_records:
            return True
        if backlog:
            return elapsed >= self.settings.commit_interval_s * BACKLOG_INTERVALS
        return elapsed >= min(self.settings.commit_interval_s, CAUGHT_UP_S)

    def _begin(self) -> None:
        if not self._in_transaction:
            assert self.producer is not None
            if self.exactly_once:
                self.producer.begin_transaction()
            self._in_transaction = True
            self._transaction_started = time.monotonic()
            self._records = 0

    def _encoded(self, outputs: Sequence[Output | Forwarded]) -> list[tuple[str, bytes, bytes]]:
        found = []
        for name, key, record in outputs:
            topic, serde = self.outputs[name]
            value = record if isinstance(record, bytes) else serde.encode(record)
            found.append((topic, key.encode(), value))
        return found

    def _write(self, outputs: Sequence[Output]) -> None:
        for output in self._encoded(outputs):
            self._begin()
            self._produce(*output)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        reported: bool = False,
    ) -> None:
        """Send a record; ``reported``: its delivery report updates ``_written``."""
        producer = self.producer
        assert producer is not None
        while True:
            try:
                if partition is None:  # a stage's output: no keyword arguments to build
                    producer.produce(topic, value, key)
                elif reported:
                    producer.produce(topic, value, key, partition, on_delivery=self._delivered)
                else:
                    producer.produce(topic, value, key, partition)
                break
            except BufferError:
                producer.poll(0.05)
        written = self._written_per_topic
        written[topic] = written.get(topic, 0) + 1

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        if error is None:
            where = (message.topic() or "", message.partition() or 0)
            self._written[where] = max(self._written.get(where, -1), message.offset() or 0)

    def checkpoint(self) -> None:
        """Commit what the transaction holds: outputs, each dirty key once on its
        changelog, and the input offsets; then the local stores take the changes. Raises
        Rewound when Kafka refused it: the transaction is aborted and the input rewound."""
        if not self._in_transaction:
            return
        assert self.producer is not None and self.consumer is not None
        producer = self.producer
        started = time.monotonic()
        settled = [(table, table.settle()) for table in self.tables]
        for table, dirty in settled:
            for partition, changes in dirty.items():
                # Only the last record's delivery is reported: a partition's records land
                # in order, so its offset is where the store's changes reach (a report per
                # record was a Python callback per record).
                last = len(changes) - 1
                for n, (key, value) in enumerate(changes.items()):
                    raw_key, raw_value = changelog_record(key, value)
                    self._produce(
                        table.changelog, raw_key, raw_value, partition, reported=n == last
                    )
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._positions.items()]
        self._committing = True
        try:
            if not self.exactly_once:  # at least once: outputs first, then the offsets
                producer.flush(60)
                if offsets:
                    self.consumer.commit(offsets=offsets, asynchronous=False)
            else:
                if offsets:
                    metadata = self.consumer.consumer_group_metadata()
                    self._retried(
                        lambda t: producer.send_offsets_to_transaction(offsets, metadata, t)
                    )
                self._retried(producer.commit_transaction)
        except TransactionFailed as exc:
            log.warning("checkpoint failed, its transaction is aborted: %s", exc)
            self._abort()
            raise Rewound() from exc
        except ProducerStuck as exc:
            self._replace_producer(str(exc))
            self._abort(on_broker=False)
            raise Rewound() from exc
        finally:
            self._committing = False
        producer.poll(0)  # delivery reports: where the changelog records landed
        for table, dirty in settled:
            for partition, changes in dirty.items():
                store = table.stores.get(partition)
                if store is None:
                    continue
                # Unknown where they landed (no delivery report yet): the store keeps its
                # offset, so a restore reads them again rather than missing them.
                offset = self._written.get((table.changelog, partition), store.offset)
                store.apply(changes, offset)
            table.dirty.clear()
        metrics.CHECKPOINT_SECONDS.observe(time.monotonic() - started)
        metrics.CHECKPOINT_RECORDS.observe(self._records)
        for topic, written in self._written_per_topic.items():
            metrics.labelled(metrics.RECORDS_SENT, topic).inc(written)
        self._written_per_topic.clear()
        self._positions.clear()
        self._starts.clear()
        self._in_transaction = False
        self._doomed = False  # partitions lost while it committed: it committed first
        if self._skipped:
            self._read_again(self._skipped)

    def _retried(self, call: Callable[[float], Any]) -> None:
        """``call(timeout)`` on the transactional producer, again while Kafka says it may
        succeed (a coordinator moving to another broker), for up to ``transaction_retry_s``;
        TransactionFailed when it must be aborted instead."""
        deadline = time.monotonic() + self.transaction_retry_s
        while True:
            try:
                self._bounded(call, deadline)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.fatal():
                    raise ProducerStuck(f"fatal: {error}") from exc
                if error.txn_requires_abort() or not error.retriable():
                    raise TransactionFailed(str(error)) from exc
                if time.monotonic() > deadline:
                    raise TransactionFailed(f"still failing after retries: {error}") from exc
                log.warning("transaction: %s; retrying", error)
                self._keep_membership()

    def _replace_producer(self, why: str) -> None:
        """A new producer of the same transactional id: it fences the current one (stuck,
        or failed for good), and the broker aborts what that one left open."""
        log.warning("%s: a new producer fences the current one", why)
        assert self.producer is not None
        self._abandoned.append(self.producer)  # closing a stuck one would block as well
        self.producer = self._new_producer()

    def _bounded(self, call: Callable[[float], Any], deadline: float) -> None:
        """``call(5 s)``, in a thread of its own while the consumer keeps its membership.
        librdkafka 2.16's send_offsets_to_transaction can block far past its timeout when
        the group coordinator's broker is gone (confluentinc/librdkafka#5456, #5511):
        after ``deadline`` (and a margin) the call is given up with ProducerStuck."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                call(5.0)
            except BaseException as exc:  # handed to the waiting thread
                failure.append(exc)

        thread = threading.Thread(target=run, name="transaction", daemon=True)
        thread.start()
        thread.join(0.5)  # most calls end here
        while thread.is_alive():
            if time.monotonic() > deadline + 5:
                raise ProducerStuck("a transactional call blocks past its timeout")
            self._keep_membership()
            thread.join(0.05)
        if failure:
            raise failure[0]

    def _keep_membership(self) -> None:
        """Wait a moment while the consumer keeps its group membership: rebalance
        callbacks run in consume(), whose messages are read again later (partitions are
        paused, and a record read meanwhile is sought back to)."""
        assert self.consumer is not None
        if self._in_callback:  # consume() must not be called from a rebalance callback
            time.sleep(0.2)
            return
        self.consumer.pause(self.consumer.assignment())
        self._paused = True
        self._unread(self.consumer.consume(100, 0.2), self._skipped)

    @staticmethod
    def _unread(messages: Sequence[Message], into: dict[tuple[str, int], int]) -> None:
        """Note the first offset of each partition in ``messages``, to read them again."""
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if message.error() is None and topic and partition is not None and offset is not None:
                into.setdefault((topic, partition), offset)

    def _read_again(self, *offsets: dict[tuple[str, int], int]) -> None:
        """Seek back to ``offsets`` (the lowest of each partition still assigned); the
        main loop resumes reading."""
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        held = {(tp.topic, tp.partition) for tp in assigned}
        lowest: dict[tuple[str, int], int] = {}
        for found in offsets:
            for where, offset in found.items():
                lowest[where] = min(offset, lowest.get(where, offset))
            found.clear()
        unsought = []
        for (topic, partition), offset in lowest.items():
            if (topic, partition) in held:
                try:
                    self.consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException as exc:  # a partition librdkafka is not fetching yet
                    unsought.append(f"{topic}[{partition}]@{offset}: {exc.args[0]}")
        if unsought and not self._in_callback:
            # Nothing past the committed offsets is committed: reading from them again is
            # what a new assignment does, so leave the group and join it again.
            log.warning("cannot seek %s; joining the group again", ", ".join(unsought))
            self.consumer.unsubscribe()
            self._subscribe()

    def _abort(self, on_broker: bool = True) -> None:
        """Abort the open transaction and read its input again: what it held is dropped,
        and the consumer seeks back to where the transaction started. ``on_broker``
        False: a new producer has fenced it already."""
        assert self.producer is not None and self.consumer is not None
        self._in_transaction = False
        self._doomed = False
        self._positions.clear()
        self._written_per_topic.clear()
        for table in self.tables:
            table.dirty.clear()
            table.drop()
        deadline = time.monotonic() + self.transaction_retry_s
        while self.exactly_once and on_broker:
            try:
                self._bounded(self.producer.abort_transaction, deadline)
                break
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError._STATE:
                    break  # no transaction left to abort
                if not error.fatal() and time.monotonic() < deadline:
                    log.warning("abort: %s; retrying", error)
                    self._keep_membership()
                    continue
                self._replace_producer(f"abort failed: {error}")
                break
            except ProducerStuck as exc:
                self._replace_producer(str(exc))
                break
        metrics.TRANSACTIONS_ABORTED.inc()
        self._read_again(self._starts, self._skipped)
        for callback in self.assigned_callbacks:
            callback(self.partitions)

    # -- rebalances --------------------------------------------------------------------------

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        # What was processed on them commits now, while this worker still owns them.
        self._in_callback = True
        try:
            if self._doomed:
                self._abort()
            elif not self._committing:
                with contextlib.suppress(Rewound):
                    self.checkpoint()
        finally:
            self._in_callback = False
        self.hold(set())

    def _on_lost(self, consumer: Consumer, lost: list[TopicPartition]) -> None:
        # Another worker may own them already: what the transaction holds must not commit.
        if self._in_transaction and not self._committing:  # a commit decides for itself
            self._doomed = True
        self.hold(set())

    def hold(self, partitions: set[int]) -> None:
        """The partitions this worker owns now, for itself and its tables."""
        self.partitions = partitions
        for table in self.tables:
            table.active = set(partitions)

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        started = time.monotonic()
        partitions = {tp.partition for tp in assigned}
        self._paused = True  # a partition paused before a rebalance may come back paused
        self._committed_at.clear()
        if self._standby is not None:
            self._standby.unassign()
        held = sum(len(table.store(p)) for table in self.tables for p in partitions)
        restored = self._restore(partitions)
        self.hold(partitions)
        self._follow_standby(set(range(self.settings.partitions)) - partitions)
        metrics.REBALANCES.inc()
        for callback in self.assigned_callbacks:
            callback(partitions)
        log.info(
            "assigned partitions %s: %d keys held, %d changelog records restored in %.2fs",
            sorted(partitions),
            held,
            restored,
            time.monotonic() - started,
        )
        if not self._ready:
            self._ready = True
            log.info("Worker ready")

    def _apply_changelog(self, messages: Sequence[Message]) -> int:
        """Write changelog ``messages`` to their tables' stores; how many there were."""
        if not messages:  # the standby reader, polled on every turn of the loop
            return 0
        by_changelog = {table.changelog: table for table in self.tables}
        pending: dict[tuple[str, int], tuple[dict[str, str | None], int]] = {}
        applied = 0
        for message in messages:
            if message.error():
                continue
            where = (message.topic() or "", message.partition() or 0)
            changes, _ = pending.get(where, ({}, -1))
            key, value = from_changelog(message.key(), message.value())
            changes[key] = value
            pending[where] = (changes, message.offset() or 0)
            applied += 1
        for (changelog, partition), (changes, offset) in pending.items():
            table = by_changelog[changelog]
            table.store(partition).apply(changes, offset)
            metrics.RESTORED_RECORDS.labels(table=table.name).inc(len(changes))
        return applied

    # -- standby copies ----------------------------------------------------------------------

    def _follow_standby(self, partitions: set[int]) -> None:
        """Keep the stores of ``partitions`` (those other workers own) following their
        changelogs, so taking one over (a worker dies or leaves) restores only the tail,
        and the views answer for every key."""
        if not partitions:
            return
        if self._standby is None:
            self._standby = self._changelog_reader("standby")
        # A store that has nothing asks for offset 0: below a compacted changelog's start,
        # the reader's reset (earliest) takes it to the first record there is.
        self._standby.assign(
            [
                TopicPartition(table.changelog, p, table.store(p).offset + 1)
                for table in self.tables
                for p in sorted(partitions)
            ]
        )

    def _poll_standby(self) -> None:
        if self._standby is not None and self._standby.assignment():
            self._apply_changelog(self._standby.consume(2000, 0))

    def _changelog_reader(self, purpose: str) -> Consumer:
        """A consumer of changelogs by assignment (its group id is never used to commit)."""
        group = f"{purpose}-{uuid.uuid4().hex}"
        return Consumer(group_consumer_config(self.settings, group, log_level=3))

    def _restore(self, partitions: set[int]) -> int:
        """Bring each table's stores of ``partitions`` up to their changelog's end."""
        reader = self._changelog_reader("restore")
        try:
            ends: dict[tuple[str, int], int] = {}
            starts: list[TopicPartition] = []
            for table in self.tables:
                for partition in partitions:
                    store = table.store(partition)
                    tp = TopicPartition(table.changelog, partition)
                    low, high = watermarks(reader, tp)
                    if store.offset >= high:  # the changelog is younger than the store
                        store.wipe()
                    start = max(store.offset + 1, low)
                    if start < high:
                        ends[(table.changelog, partition)] = high
                        starts.append(TopicPartition(table.changelog, partition, start))
            if not starts:
                return 0
            reader.assign(starts)
            restored = 0
            while True:
                restored += self._apply_changelog(reader.consume(10_000, 0.2))
                positions = reader.position(
                    [TopicPartition(topic, partition) for topic, partition in ends]
                )
                if all(tp.offset >= ends[(tp.topic, tp.partition)] for tp in positions):
                    return restored
        finally:
            reader.close()
