"""Table stores: a RocksDB store reopens with what it held and the changelog offset it
reached; staged writes of a record are kept or dropped whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.tables import PartitionStore, Table


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
