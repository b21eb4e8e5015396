"""Table stores: a RocksDB store reopens with what it held and the changelog offset it
reached; staged writes of a record are kept or dropped whole; parsed values are reused
only while the table holds the text they came from, and dumped once per checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streams.tables import Parsed, PartitionStore, Table


def test_a_rocksdb_store_reopens_with_its_values_and_offset(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "0")
    store.apply({"a": "1", "b": "2"}, offset=7)
    store.apply({"b": None, "c": "3"}, offset=9)
    store.close()

    reopened = PartitionStore(tmp_path / "0")
    assert reopened.offset == 9
    assert dict(reopened.items()) == {"a": "1", "c": "3"}  # the offset is not a key
    reopened.wipe()
    assert reopened.offset == -1 and dict(reopened.items()) == {}
    reopened.close()
    assert PartitionStore(tmp_path / "0").offset == -1


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_records_writes_are_kept_or_dropped_whole(tmp_path: Path, on_disk: bool) -> None:
    table = Table("t", "t-changelog", tmp_path if on_disk else None)
    table.store(0).apply({"kept": "old"}, offset=0)
    table.active = {0}
    table.focus(0)

    table["kept"] = "new"
    table["fresh"] = "x"
    assert table.get("kept") == "new"  # a record reads its own writes
    table.keep()
    table["fresh"] = "doomed"
    del table["kept"]
    assert "kept" not in table
    table.drop()  # the second record failed

    assert table.get("kept") == "new" and table.get("fresh") == "x"
    assert table.dirty == {0: {"kept": "new", "fresh": "x"}}
    assert dict(table.items()) == {"kept": "new", "fresh": "x"}
    # Views from another thread see committed values only.
    assert table.lookup("kept") == "old" and table.lookup("fresh") is None
    table.close()


def test_parsed_values_are_reused_only_while_the_table_holds_their_text() -> None:
    table = Table("t", "t-changelog", None)
    table.store(0).apply({"a": '{"n": 1}'}, offset=0)
    table.active = {0}
    table.focus(0)
    parses: list[str] = []

    def parse(text: str) -> dict[str, int]:
        parses.append(text)
        return dict(json.loads(text))

    values = Parsed(table, parse, json.dumps, size=2)
    first = values.get("a")
    assert first == {"n": 1} and values.get("a") is first and len(parses) == 1

    values["a"] = {"n": 2}
    table.drop()  # the record that wrote it failed: the old text, parsed again
    assert values.get("a") == {"n": 1} and len(parses) == 2
    values["a"] = {"n": 3}
    table.keep()
    assert values.get("a") == {"n": 3} and len(parses) == 2  # its own write, not parsed
    table.store(0).apply({"a": '{"n": 4}'}, offset=1)  # a restore under it
    table.dirty.clear()
    assert values.get("a") == {"n": 4}

    del values["a"]
    assert values.get("a") is None
    for key in ("b", "c", "d"):  # at most ``size`` kept
        values[key] = {"n": 0}
    assert len(values._recent) == 2
    table.close()


def test_a_value_written_often_between_checkpoints_is_dumped_once() -> None:
    table = Table("t", "t-changelog", None)
    table.store(0)
    table.active = {0}
    table.focus(0)
    dumps: list[dict[str, int]] = []

    def dump(value: dict[str, int]) -> str:
        dumps.append(value)
        return json.dumps(value)

    parses: list[str] = []

    def parse(text: str) -> dict[str, int]:
        parses.append(text)
        return dict(json.loads(text))

    values = Parsed(table, parse, dump)
    for n in range(3):  # three records write it
        values["a"] = {"n": n}
        table.keep()
    assert values.get("a") == {"n": 2} and dumps == []
    assert table.settle() == {0: {"a": '{"n": 2}'}} and dumps == [{"n": 2}]
    table.store(0).apply(table.settle()[0], offset=0)  # the checkpoint committed
    table.dirty.clear()
    assert values.get("a") == {"n": 2} and dumps == [{"n": 2}] and parses == []
