"""Exactly-once that holds when a worker is killed: every input message is one *step*, and
a step's outputs, its table writes and its input offset commit in one Kafka transaction.

Faust (faust-streaming 0.15.3) keeps one transactional producer per input partition and
commits each one's transaction with that partition's acknowledged offsets, on a timer that
runs beside the agents. Its gaps, and what closes each here:

- A send joins the transaction of the *destination* partition's producer, and table
  changelog writes wait in a buffer the commit does not wait for. A step sends everything
  (changelog writes included, collected instead of buffered) in its source partition's
  transaction.
- The commit timer can fire in the middle of a message, and reads the acknowledged
  offsets before it waits for the producers. A step holds the app's step lock, which a
  commit holds from choosing the partitions and reading their offsets to committing, and
  acknowledges its message before releasing it: a commit sees each message whole or not
  at all.
- Faust's offset bookkeeping fills gaps in delivery as if done and moves a read offset
  even for a message it did not deliver; its fetch loop drops records of a partition
  paused meanwhile (and aiokafka hands over every partition's records when the set of
  active ones is empty), the positions already past them; and it empties the agents'
  queues on every resume of the flow, even after the seek that follows a rebalance.
  Across rebalances and restarts these let an offset commit over messages nobody
  processed, or stop a partition's commits for good. ``_Consumer`` replaces them: a
  partition's committable offset is the one after its last processed message, every
  fetched record is delivered or fetched again, and only a revocation empties queues.
- At a rebalance Faust forgets the acknowledged offsets of every revoked partition (with
  the eager protocol, all of them) before its last commit, and its flow keeps
  delivering meanwhile. Here the revocation first stops delivery, then commits
  everything processed and starts a new epoch: a message fetched before it is skipped
  (``step`` gives False), as its partition is sought back to the committed offset and
  it comes again.
- After a rebalance Faust resumes the input partitions, its flow running since table
  recovery, and only then seeks them to their committed offsets. What was fetched from
  the positions before that seek was processed, and a record the seek brought back was
  then skipped as delivered. From a revocation on, inputs are resumed only once sought.
- aiokafka seeks a partition to its committed offset only if that is above 0, so a
  partition without one went on from wherever it had been fetching. It is sought to its
  start.
- With transactions, table recovery asked aiokafka for the last stable offset it saw in a
  fetch, which a fresh process has not made yet, so a restarted worker started with
  empty tables; the consumer asks the broker instead.
- Tables on disk (rocksdb://) keep the writes of transactions a kill aborted, which
  replaying the changelogs does not undo: a worker that did not stop cleanly leaves its
  tables to be rebuilt from the changelogs.

tests/integration/test_faults.py kills, joins and stops workers mid-stream and checks
that nothing is lost or doubled."""

from __future__ import annotations

import asyncio
import shutil
import weakref
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import IllegalStateError
from faust.transport.consumer import TransactionManager
from faust.transport.drivers import aiokafka as driver
from faust.types import TP, AppT, EventT, FutureMessage, Message, RecordMetadata
from faust.types.tuples import ack_lock
from mode import ServiceT
from mode.utils.futures import notify
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent


@dataclass
class _Step:
    transactional_id: str | None
    changelog: list[FutureMessage] = field(default_factory=list)


_current_step: ContextVar[_Step | None] = ContextVar("switchboard_step", default=None)


class App(faust.App):
    """A Faust app whose transport keeps each step in one transaction."""

    _step_lock: asyncio.Lock | None = None

    @property
    def step_lock(self) -> asyncio.Lock:
        if self._step_lock is None:
            self._step_lock = asyncio.Lock()
        return self._step_lock

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return _FlowControl(loop=self.loop)

    @property
    def _stopped_cleanly(self) -> Path:
        return Path(self.conf.tabledir).with_name("tables-stopped-cleanly")

    def discard_tables_unless_stopped_cleanly(self) -> bool:
        """Before the worker starts: tables on disk (rocksdb://) are kept only if the last
        worker stopped cleanly, its last commit covering every write. A killed one may have
        left writes of transactions that were aborted, which replaying the changelogs
        from the persisted offsets would not undo; the tables are rebuilt from the
        changelogs instead. True if they were discarded."""
        tables = Path(self.conf.tabledir)
        clean = self._stopped_cleanly.exists()
        self._stopped_cleanly.unlink(missing_ok=True)  # until this worker stops cleanly
        if clean or not tables.exists() or not any(tables.iterdir()):
            return False  # kept, or nothing on disk (memory://)
        shutil.rmtree(tables)
        return True

    def mark_stopped_cleanly(self) -> None:
        self._stopped_cleanly.parent.mkdir(parents=True, exist_ok=True)
        self._stopped_cleanly.touch()


class _FlowControl(FlowControlEvent):
    """Faust empties the agents' queues whenever it resumes their flow, not only at a
    revocation. After a rebalance it resumes the partitions, seeks them and only then
    resumes the flow, so messages delivered in between were dropped while later ones were
    processed, and the offset committed over them. Here only a revocation (or a
    shutdown) empties the queues; what a revocation leaves behind, steps skip (see
    ``_Consumer.is_current``)."""

    def resume(self) -> None:
        self._suspend.clear()
        self._resume.set()


@asynccontextmanager
async def step(event: EventT[Any]) -> AsyncIterator[bool]:
    """Process ``event`` as one step: nothing it sends commits without its offset.

    Gives False for a message fetched before the latest revocation, which the body must
    skip: its partition was sought back to the committed offset, so it comes again."""
    app = event.app
    if not isinstance(app, App):
        raise TypeError("steps need streams.transactions.App (use streams.app.create_app)")
    message = event.message
    transactional_id = None
    if app.in_transaction:
        transactional_id = _transactional_id(app, message.topic, message.partition)
    current = _Step(transactional_id)
    async with app.step_lock:
        consumer = app.consumer
        if isinstance(consumer, _Consumer) and not consumer.is_current(message):
            yield False
            event.ack()  # for Faust's own count of messages in flight; the offset waits
            return
        token = _current_step.set(current)
        try:
            yield True
            for fut in current.changelog:
                await fut.message.channel.publish_message(fut, wait=False)
            event.ack()
        finally:
            _current_step.reset(token)


def _transactional_id(app: AppT, topic: str, partition: int) -> str:
    """The transactional producer of an input partition, named as Faust names it."""
    return f"{app.conf.id}-{app.assignor.group_for_topic(topic)}-{partition}"


class _Producer(driver.Producer):
    def send_soon(self, fut: FutureMessage) -> None:
        current = _current_step.get()
        if current is None:
            super().send_soon(fut)
        else:  # sent by the step before it acknowledges its message
            current.changelog.append(fut)


class _TransactionManager(TransactionManager):
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        current = _current_step.get()
        if current is None or current.transactional_id is None:
            return await super().send(topic, key, value, partition, timestamp, headers)
        return await self.producer.send(
            topic,
            key,
            value,
            self.consumer.key_partition(topic, key, partition),
            timestamp,
            headers,
            transactional_id=current.transactional_id,
        )

    async def commit(self, offsets: Mapping[TP, int], start_new_transaction: bool = True) -> bool:
        if not start_new_transaction:
            # The last commit, at shutdown. A periodic commit cancelled by the shutdown
            # between ending its transaction and beginning the next one leaves that
            # producer outside any transaction, with nothing to commit: skip it rather
            # than fail the whole shutdown commit.
            offsets = {tp: o for tp, o in offsets.items() if self._in_transaction(tp)}
        return await super().commit(offsets, start_new_transaction)

    def _in_transaction(self, tp: TP) -> bool:
        tid = _transactional_id(self.app, tp.topic, tp.partition)
        producer = self.producer._transaction_producers.get(tid)  # type: ignore[attr-defined]
        return producer is None or bool(producer._txn_manager.is_in_transaction())


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        # Under read_committed the broker answers with the last stable offset.
        offsets: Mapping[TP, int] = await self._ensure_consumer().end_offsets(partitions)
        return offsets

    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # Faust passes its live set of active partitions, which a rebalance or the end of
        # table recovery can empty meanwhile; for an empty set aiokafka hands over the
        # records of *every* partition, paused ones included, its positions past them.
        if active_partitions is not None:  # None: a client-only app, every partition
            active_partitions = set(active_partitions)
            if not active_partitions:
                return {}
        return await super()._fetch_records(consumer, active_partitions, timeout, max_records)


class _Consumer(driver.Consumer):
    """Faust's consumer with offset bookkeeping a step can trust (see the module
    docstring). Every partition is processed in order, one step at a time, so a
    partition's committable offset is the one after its last processed message. An epoch
    starts at each revocation: what was fetched before it is not processed, and delivery
    skips only what it already delivered in the epoch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0  # moves at each revocation, under the step lock
        self._fetched_in: weakref.WeakKeyDictionary[Message, int] = weakref.WeakKeyDictionary()
        self._delivered: dict[TP, int] = {}  # next offset to deliver, this epoch
        self._processed: dict[TP, int] = {}  # next offset to commit
        self._revoking = False
        self._revocations = 0  # begun: the fetch loop cannot wait for the lock
        # From a revocation until the new assignment's seek to the committed offsets,
        # inputs are not fetched: their positions may be past records never delivered.
        self._awaiting_seek = True
        self._held: set[TP] = set()  # inputs Faust resumed before that seek

    def _new_consumer_thread(self) -> driver.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def is_current(self, message: Message) -> bool:
        """Whether ``message`` was not fetched before the latest revocation (one that did
        not come from the broker, as in an agent's test context, is current)."""
        return self._fetched_in.get(message, self._epoch) == self._epoch

    def ack(self, message: Message) -> bool:
        with ack_lock:
            if message.acked:
                return False
            message.acked = True
            self._unacked_messages.discard(message)
            fetched_now = self._fetched_in.get(message) == self._epoch
            if fetched_now and self.app.topics.acks_enabled_for(message.topic):
                tp = message.tp
                self._processed[tp] = max(self._processed.get(tp, 0), message.offset + 1)
            notify(self._waiting_for_ack)
            return True

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        # Every partition, whatever ``topics`` asks: the partitions that share a
        # transaction commit together or the transaction holds work without its offset.
        return iter([tp for tp in self._processed if self._uncommitted(tp)])

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        return {tp: self._processed[tp] for tp in tps if self._uncommitted(tp)}

    def _uncommitted(self, tp: TP) -> bool:
        committed = self._committed_offset.get(tp)
        return tp in self._processed and (committed is None or self._processed[tp] > committed)

    async def _commit_tps(self, tps: Iterable[TP], start_new_transaction: bool) -> bool:
        # From reading the processed offsets to committing: no step may finish between.
        # Faust chose ``tps`` before the lock, so a step that finished while the commit
        # waited for it would be left out: its partition's producer would commit the
        # step's outputs without its offset. Choose again under the lock.
        async with self.app.step_lock:  # type: ignore[attr-defined]
            pending = list(self._filter_tps_with_pending_acks())
            committed: bool = await super()._commit_tps(pending, start_new_transaction)
            return committed

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Nothing is delivered from here on: while the commit below waits for the broker
        # the flow still runs, and what it delivered would be dropped when Faust empties
        # the queues, yet counted as delivered.
        self._revoking = True
        self._revocations += 1
        self._awaiting_seek = True
        self._held.clear()
        try:
            async with self.app.step_lock:  # type: ignore[attr-defined]
                # After the step under way: nothing fetched so far is processed any more.
                self._epoch += 1
                self._delivered.clear()
                if not self.app.should_stop:
                    pending = list(self._filter_tps_with_pending_acks())
                    await super()._commit_tps(pending, start_new_transaction=True)
                for tp in revoked:
                    self._processed.pop(tp, None)
            await super().on_partitions_revoked(revoked)
        finally:
            self._revoking = False

    def _is_input(self, tp: TP) -> bool:
        """An input partition of a step (a changelog is not one)."""
        return bool(self.app.topics.acks_enabled_for(tp.topic))

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        # Faust's recovery resumes the inputs, with its flow running since it read the
        # changelogs, and only then seeks them to their committed offsets: they are
        # resumed after that seek instead.
        tps = set(tps)
        if self._awaiting_seek:
            held = {tp for tp in tps if self._is_input(tp)}
            self._held |= held
            tps -= held
        super().resume_partitions(tps)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        revocations = self._revocations
        committed: Mapping[TP, int] = await super().seek_to_committed()
        # aiokafka seeks only to a committed offset above 0, and leaves a partition with
        # none wherever it was fetching: seek those inputs to their start explicitly.
        unseen = [tp for tp, offset in committed.items() if not offset and self._is_input(tp)]
        if unseen:
            for tp, offset in (await self.earliest_offsets(*unseen)).items():
                await self._seek(tp, offset)
        if revocations == self._revocations:  # else the next assignment seeks again
            self._awaiting_seek = False
            held, self._held = self._held, set()
            super().resume_partitions(held)
        return committed

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        # When a rebalance comes in the middle of table recovery, Faust can ask to seek a
        # standby changelog partition to None (no offset read yet), which aiokafka
        # refuses, crashing the worker: read such a partition from its start.
        unknown = [tp for tp, offset in partitions.items() if offset is None or offset < 0]
        if unknown:
            partitions = {**partitions, **(await self.earliest_offsets(*unknown))}
        await super().seek_wait(partitions)

    async def on_stop(self) -> None:
        await super().on_stop()  # the last commit, of everything processed
        if self.app.crash_reason is None and isinstance(self.app, App):
            self.app.mark_stopped_cleanly()

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        # Faust's loop and its getmany, without gap filling and read offsets, and with no
        # silent drop: a fetched record not delivered (its partition paused, the flow
        # stopped) is fetched again, its partition sought back to it.
        fetcher_stopped = fetcher._stopped.is_set  # type: ignore[attr-defined]
        try:
            while not (self._stopped.is_set() or fetcher_stopped()):
                epoch, revocations = self._epoch, self._revocations
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    continue
                undelivered: dict[TP, int] = {}
                for tp, record in self.scheduler.iterate(records):
                    if tp in undelivered:
                        continue
                    deliverable = (
                        revocations == self._revocations  # so the epoch is unchanged too
                        and not self._revoking
                        and self.flow_active
                        and (active is None or tp in active or tp in self._buffered_partitions)
                    )
                    if not deliverable:
                        undelivered[tp] = record.offset
                        continue
                    if record.offset < self._delivered.get(tp, -1):
                        continue  # fetched again after a seek
                    message = self._to_message(tp, record)
                    self._fetched_in[message] = epoch
                    self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                    delivery = self.callback(message)
                    waited = await self.wait_first(delivery, self.suspend_flow.wait())
                    if delivery in waited.done:
                        self._delivered[tp] = message.offset + 1
                    else:
                        undelivered[tp] = message.offset
                if revocations == self._revocations:  # else the new assignment seeks them
                    for tp, offset in undelivered.items():
                        with suppress(IllegalStateError):  # no longer assigned: nothing lost
                            await self._seek(tp, offset)
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise


class _Transport(driver.Transport):
    Consumer = _Consumer
    Producer = _Producer
    TransactionManager = _TransactionManager
