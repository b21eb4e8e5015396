"""Tables on disk (rocksdb://) outlive a worker only if it stopped cleanly: a killed one
may have left writes of aborted transactions in them."""

from __future__ import annotations

from pathlib import Path

from streams.app import create_app
from streams.settings import Settings


def test_tables_are_kept_after_a_clean_stop_and_discarded_after_a_kill(tmp_path: Path) -> None:
    # One app per process: create_app registers its metrics.
    app = create_app(Settings(data_dir=tmp_path, store="rocksdb://"))
    table = Path(app.conf.tabledir) / "contacts-0.db"
    table.mkdir(parents=True)

    app.mark_stopped_cleanly()
    assert app.discard_tables_unless_stopped_cleanly() is False
    assert table.exists()

    # The worker that kept them is killed: no mark this time.
    assert app.discard_tables_unless_stopped_cleanly() is True
    assert not table.exists()

    # memory:// leaves the directory empty: nothing to discard, nothing said.
    Path(app.conf.tabledir).mkdir(parents=True)
    assert app.discard_tables_unless_stopped_cleanly() is False
