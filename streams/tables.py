"""The tables of the stateful stages: string keys and values, partitioned like the stage's
inputs, each backed by a compacted changelog topic (the truth) and a local store per
partition (memory, or RocksDB on disk) that caches it.

A store is written only after the transaction that wrote its changelog committed, in one
batch with the changelog offset it then reflects. So a store never holds an aborted write,
and a worker that gets a partition (at start, after a crash, on a rebalance) restores only
the changelog past that offset: nothing for a clean restart with RocksDB.

Writes of the record being processed are staged (``pending``) and either kept for the
next checkpoint (``keep``) or dropped (``drop``, when the record fails), so a record is
applied whole or not at all. A value may be written as an object (``Deferred``): its text
is made at the checkpoint (``settle``), once per dirty key however often it was written."""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from rocksdict import Options, Rdict, WriteBatch, WriteBufferManager

# Where a RocksDB store keeps the changelog offset it reflects; no table key starts with NUL.
_OFFSET_KEY = b"\x00changelog-offset"

# A worker opens a store per table and partition (dozens); without one shared limit each
# may hold 64 MB of write buffers, most of a worker's memory after a restore.
_WRITE_BUFFERS = WriteBufferManager(256 * 1024 * 1024, False)


_Value = TypeVar("_Value")


def _options() -> Options:
    options = Options(raw_mode=True)
    options.set_write_buffer_manager(_WRITE_BUFFERS)
    return options


class Deferred(Generic[_Value]):
    """A value written as an object, dumped to its text only when the text is needed (at
    the checkpoint): a contact written by several records between two checkpoints is
    dumped once. The object must not change after it is written (values are changed by
    copy)."""

    __slots__ = ("_dump", "_text", "value")

    def __init__(self, value: _Value, dump: Callable[[_Value], str]) -> None:
        self.value = value
        self._dump = dump
        self._text: str | None = None

    def text(self) -> str:
        if self._text is None:
            self._text = self._dump(self.value)
        return self._text

    def known(self) -> str | None:
        """The text, if it was made already."""
        return self._text


# What a table holds for a key before the checkpoint: text, an object, or None (deleted).
Entry = str | Deferred[Any] | None


def _text(entry: Entry) -> str | None:
    return entry.text() if isinstance(entry, Deferred) else entry


class PartitionStore:
    """One partition of one table: its values, and the last changelog offset applied."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._memory: dict[str, str] = {}
        self._db: Rdict | None = None
        self.offset = -1
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            self._db = Rdict(str(path), _options())
            stored = self._db.get(_OFFSET_KEY)
            self.offset = int(stored) if stored is not None else -1

    def get(self, key: str) -> str | None:
        if self._db is None:
            return self._memory.get(key)
        found = self._db.get(key.encode())
        return None if found is None else bytes(found).decode()

    def apply(self, changes: dict[str, str | None], offset: int) -> None:
        """Write ``changes`` (None deletes) as of changelog ``offset``, atomically."""
        if self._db is None:
            for key, value in changes.items():
                if value is None:
                    self._memory.pop(key, None)
                else:
                    self._memory[key] = value
        else:
            batch = WriteBatch(raw_mode=True)
            for key, value in changes.items():
                if value is None:
                    batch.delete(key.encode())
                else:
                    batch.put(key.encode(), value.encode())
            batch.put(_OFFSET_KEY, str(offset).encode())
            self._db.write(batch)
        self.offset = max(self.offset, offset)

    def items(self) -> Iterator[tuple[str, str]]:
        if self._db is None:
            yield from list(self._memory.items())
            return
        for key, value in self._db.items():
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(b"\x00"):
                yield key.decode(), value.decode()

    def __len__(self) -> int:
        if self._db is None:
            return len(self._memory)
        # RocksDB's own estimate: counting would read every key.
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def wipe(self) -> None:
        """Forget everything (the changelog is restored from its start)."""
        self._memory.clear()
        self.offset = -1
        if self._db is not None and self.path is not None:
            self._db.close()
            Rdict.destroy(str(self.path))
            shutil.rmtree(self.path, ignore_errors=True)
            self.path.mkdir(parents=True, exist_ok=True)
            self._db = Rdict(str(self.path), _options())

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class Table:
    """A stage's table. The runtime focuses it on the partition of the record being
    processed; ``get`` and ``set`` then act on that partition."""

    def __init__(self, name: str, changelog: str, directory: Path | None) -> None:
        self.name = name
        self.changelog = changelog
        self.directory = directory  # None: in memory
        self.stores: dict[int, PartitionStore] = {}
        self.active: set[int] = set()
        self.dirty: dict[int, dict[str, Entry]] = {}
        self.pending: dict[str, Entry] = {}
        self.partition = -1

    # -- what stages use -----------------------------------------------------------------

    def get(self, key: str) -> str | None:
        return _text(self.entry(key))

    def entry(self, key: str) -> Entry:
        """``key``'s value as written: text, or an object not dumped yet (Deferred)."""
        if key in self.pending:
            return self.pending[key]
        dirty = self.dirty.get(self.partition)
        if dirty is not None and key in dirty:
            return dirty[key]
        return self.stores[self.partition].get(key)

    def __setitem__(self, key: str, value: str | Deferred[Any]) -> None:
        self.pending[key] = value

    def __delitem__(self, key: str) -> None:
        self.pending[key] = None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.entry(key) is not None

    def items(self, partitions: set[int] | None = None) -> Iterator[tuple[str, str]]:
        """Committed values and checkpoint-pending ones of ``partitions`` (default: the
        active ones)."""
        for partition in sorted(self.active if partitions is None else partitions):
            store = self.stores.get(partition)
            if store is None:
                continue
            dirty = self.dirty.get(partition, {})
            for key, value in store.items():
                if key not in dirty:
                    yield key, value
            for key, dirty_value in dirty.items():
                text = _text(dirty_value)
                if text is not None:
                    yield key, text

    def lookup(self, key: str) -> str | None:
        """``key``'s value in any partition this worker holds, for views outside a record
        (from another thread: committed values only)."""
        for store in list(self.stores.values()):
            value = store.get(key)
            if value is not None:
                return value
        return None

    # -- what the runtime does -----------------------------------------------------------

    def focus(self, partition: int) -> None:
        self.partition = partition

    def keep(self) -> None:
        """The record succeeded: its writes wait for the next checkpoint."""
        if self.pending:
            self.dirty.setdefault(self.partition, {}).update(self.pending)
            self.pending = {}

    def drop(self) -> None:
        self.pending = {}

    def settle(self) -> dict[int, dict[str, str | None]]:
        """The checkpoint's changes per partition, as text: each object is dumped now."""
        return {
            partition: {
                # _text(value) inlined: a call per dirty key at every checkpoint
                key: value.text() if isinstance(value, Deferred) else value
                for key, value in changes.items()
            }
            for partition, changes in self.dirty.items()
        }

    def store(self, partition: int) -> PartitionStore:
        if partition not in self.stores:
            path = None if self.directory is None else self.directory / str(partition)
            self.stores[partition] = PartitionStore(path)
        return self.stores[partition]

    def release(self, partition: int) -> None:
        store = self.stores.pop(partition, None)
        if store is not None:
            store.close()
        self.dirty.pop(partition, None)
        self.active.discard(partition)

    def close(self) -> None:
        for partition in list(self.stores):
            self.release(partition)

    def __len__(self) -> int:
        """Keys this worker holds, in its active and standby partitions."""
        return sum(len(store) for store in self.stores.values())


class Parsed(Generic[_Value]):
    """A table's values as objects, parsed once and dumped once per checkpoint: a
    contact's next event usually comes while its state is still here, and parsing and
    dumping its JSON is a good part of a stage's work. Objects are written as they are
    (``Deferred``); a parsed entry keeps the text it came from and is used only while the
    table still holds that text, so a dropped write or a restore is never hidden. Objects
    handed out are shared: change them by copy (``model_copy``), never in place."""

    def __init__(
        self,
        table: Table,
        parse: Callable[[str], _Value],
        dump: Callable[[_Value], str],
        size: int = 4096,
    ) -> None:
        self.table = table
        self._parse = parse
        self._dump = dump
        self._size = size
        # key -> (what the table was given, or the text parsed; the object)
        # An OrderedDict: a dict's oldest key, after many deletions at its front, is found
        # by a scan past every deleted slot (about a hundredth of a worker's time).
        self._recent: OrderedDict[str, tuple[str | Deferred[_Value], _Value]] = OrderedDict()

    def get(self, key: str) -> _Value | None:
        found = self.table.entry(key)
        if found is None:
            return None
        if isinstance(found, Deferred):  # written since the checkpoint: the object itself
            written: _Value = found.value
            return written
        hit = self._recent.get(key)
        if hit is not None:
            source = hit[0]
            if (source.known() if isinstance(source, Deferred) else source) == found:
                return hit[1]
        value = self._parse(found)
        self._remember(key, found, value)
        return value

    def __setitem__(self, key: str, value: _Value) -> None:
        # Dumped at the checkpoint, once, however often the key is written before it.
        deferred = Deferred(value, self._dump)
        self.table[key] = deferred
        self._remember(key, deferred, value)

    def __delitem__(self, key: str) -> None:
        del self.table[key]
        self._recent.pop(key, None)

    def _remember(self, key: str, source: str | Deferred[_Value], value: _Value) -> None:
        self._recent[key] = (source, value)
        self._recent.move_to_end(key)  # the oldest go first
        if len(self._recent) > self._size:
            self._recent.popitem(last=False)
