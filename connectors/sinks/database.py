"""The SQL database the SQL-backed sinks share (the CRM store, the delivery ledger): an
engine set up for their transactions on SQLite or PostgreSQL, timezone-aware UTC
timestamps, a JSON column, write transactions, the portable upsert, and the database's
own words for a dead letter.

URLs are SQLAlchemy's: ``sqlite:///path/to/file.sqlite3`` (the embedded default) or
``postgresql+psycopg://user@host:port/db`` (a bare ``postgresql://`` means psycopg 3)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator, TypeEngine

# Execution option that makes a SQLite transaction take the write lock at BEGIN: a
# deferred one that reads first may fail at its first write instead of waiting its turn.
WRITE = {"switchboard_write": True}
SQLITE_BUSY_TIMEOUT_S = 30.0
CUSTOM_PLANS = "-c plan_cache_mode=force_custom_plan"


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both backends: SQLite keeps no offset, so values
    are stored in UTC and come back tagged UTC; a naive value is taken to be UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC) if dialect.name != "sqlite" else value
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def json_type() -> TypeEngine[Any]:
    # JSONB on PostgreSQL: it has the `||` merge that UPSERT_CONTACT's properties use.
    return JSON().with_variant(JSONB(), "postgresql")


def create_sql_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL), set up for the stores' transactions."""
    sa_url = make_url(url)
    backend = sa_url.get_backend_name()
    if backend == "postgresql":
        if sa_url.drivername == "postgresql":
            sa_url = sa_url.set(drivername="postgresql+psycopg")
        # pre_ping: a pooled connection that a PostgreSQL restart closed is replaced, not
        # handed out to fail the next batch. Custom plans: psycopg prepares a statement run
        # five times, and the generic plan PostgreSQL then keeps for a batch's
        # `id = ANY(ids)` lookup was a sequential scan, planned while the table was small
        # (14 ms a lookup instead of 0.6; tests/bench/bench_sinks). The URL's own
        # options (a search_path) are kept.
        given = sa_url.query.get("options", "")
        options = f"{given if isinstance(given, str) else ' '.join(given)} {CUSTOM_PLANS}"
        sa_url = sa_url.update_query_dict({"options": options.strip()})
        return create_engine(sa_url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    if backend != "sqlite":
        raise ValueError(
            f"unsupported database URL {sa_url.render_as_string()!r}: use sqlite:///FILE "
            "or postgresql+psycopg://USER@HOST:PORT/DB"
        )
    database = sa_url.database or ""
    if database in ("", ":memory:") or database.startswith("file::memory:"):
        raise ValueError(
            f"{url!r}: an in-memory SQLite database is private to one connection; "
            "use a file, e.g. sqlite:///.run/crm.db"
        )
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        sa_url,
        # Pooled connections move between the threads that asyncio.to_thread uses, one
        # thread at a time.
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # The sqlite3 module's own transaction handling breaks SAVEPOINTs: switch it
        # off and let SQLAlchemy emit BEGIN (below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        _use_wal(cursor)
        # With WAL, NORMAL syncs at checkpoints instead of every commit: a commit survives
        # the process being killed, only a power cut may lose the last ones. SQLite is the
        # embedded default; production runs on PostgreSQL.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get("switchboard_write")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _use_wal(cursor: Any) -> None:
    """WAL: readers do not block the writer nor it them. The mode is kept in the file, so
    only the first connection to a new database switches; the switch needs the database to
    itself and does not wait for it (no busy handler), so it is retried here."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            # It answers the mode it is in afterwards: the old one if it could not switch.
            if cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError("database is locked: could not switch to WAL")
        time.sleep(0.01)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that writes: committed when the block ends, rolled
    back when it raises."""
    with engine.connect() as connection:
        connection.execution_options(**WRITE)
        with connection.begin():
            yield connection


Upsert = postgresql.Insert | sqlite.Insert


def insert_or(dialect: str, table: Table) -> Upsert:
    """An INSERT that takes ON CONFLICT clauses (do nothing / do update), in ``dialect``
    (a connection's ``dialect.name``): the portable upsert."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def error_answer(exc: SQLAlchemyError) -> str:
    """The database's own message, first line, for the dead letter."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0][:500] if message else type(exc).__name__
