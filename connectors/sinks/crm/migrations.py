"""Versioned schema migrations for Switchboard's SQL stores, and the engine they share.

A migration is a numbered function of a Connection. ``migrate`` applies, in order, the
ones a database lacks, each in its own transaction together with its ``schema_migrations``
row, so a migration is either wholly applied and recorded or not at all; running it again
is a no-op. Several components (the CRM store, the delivery ledger) keep their own lists in
the one table, so they can share a database.

Two processes migrating at once apply each migration once: every migration transaction
first takes a lock (a transaction-scoped advisory lock on PostgreSQL; ``BEGIN IMMEDIATE``,
SQLite's one writer, on SQLite) and re-reads what is applied under it.

URLs are SQLAlchemy's: ``sqlite:///path/to/file.sqlite3`` (the embedded default) or
``postgresql+psycopg://user@host:port/db`` (a bare ``postgresql://`` means psycopg 3)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator, TypeEngine

log = logging.getLogger("switchboard.sql")

# pg_advisory_xact_lock key of every migration transaction ("SWBD" in ASCII).
LOCK_KEY = 0x53574244
# Execution option that makes a SQLite transaction take the write lock at BEGIN: a
# deferred one that reads first may fail at its first write instead of waiting its turn.
WRITE = {"switchboard_write": True}
SQLITE_BUSY_TIMEOUT_S = 30.0


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
        # handed out to fail the next batch.
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


def insert_or(connection: Connection, table: Table) -> Upsert:
    """An INSERT that takes ON CONFLICT clauses (do nothing / do update), in the
    connection's dialect: the portable upsert."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def error_answer(exc: SQLAlchemyError) -> str:
    """The database's own message, first line, for the dead letter."""
    message = str(getattr(exc, "orig", None) or exc).strip()
    return message.splitlines()[0][:500] if message else type(exc).__name__


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    upgrade: Callable[[Connection], None]


SCHEMA_MIGRATIONS = Table(
    "schema_migrations",
    MetaData(),
    Column("component", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)


def _lock(connection: Connection) -> None:
    # SQLite: BEGIN IMMEDIATE (write_transaction) already holds the database's write lock.
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


def _applied(connection: Connection, component: str) -> set[int]:
    query = select(SCHEMA_MIGRATIONS.c.version).where(SCHEMA_MIGRATIONS.c.component == component)
    return set(connection.execute(query).scalars())


def applied_versions(engine: Engine, component: str) -> set[int]:
    with engine.connect() as connection:
        if not connection.dialect.has_table(connection, SCHEMA_MIGRATIONS.name):
            return set()
        return _applied(connection, component)


def migrate(engine: Engine, component: str, migrations: Sequence[Migration]) -> list[int]:
    """Apply ``component``'s missing migrations in version order; return the versions this
    call applied (empty when the database was up to date)."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"{component} migrations must have increasing versions: {versions}")
    with write_transaction(engine) as connection:
        _lock(connection)
        SCHEMA_MIGRATIONS.create(connection, checkfirst=True)
        done = _applied(connection, component)
    newer = done - set(versions)
    if newer:
        log.warning("%s: database has migrations %s that this code does not know", component, newer)
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        with write_transaction(engine) as connection:
            _lock(connection)
            # Another process may have applied it while this one waited for the lock.
            if migration.version in _applied(connection, component):
                continue
            migration.upgrade(connection)
            connection.execute(
                SCHEMA_MIGRATIONS.insert().values(
                    component=component,
                    version=migration.version,
                    name=migration.name,
                    applied_at=datetime.now(UTC),
                )
            )
        log.info("%s: applied migration %d (%s)", component, migration.version, migration.name)
        applied.append(migration.version)
    return applied


# The CRM schema. Each migration declares the tables as they were at its version, so that
# a later change to them is a new migration rather than an edit of an applied one.


def _crm_v1(connection: Connection) -> None:
    meta = MetaData()

    def when(name: str, nullable: bool = False) -> Column[datetime]:
        return Column(name, UtcDateTime, nullable=nullable)

    def contact_ref() -> Column[str]:
        return Column("contact_id", String(200), ForeignKey("contacts.contact_id"), nullable=False)

    Table(
        "contacts",
        meta,
        Column("contact_id", String(200), primary_key=True),
        Column("email", String(320)),
        Column("phone", String(64)),
        Column("crm_id", String(200)),
        Column("first_name", String(200)),
        Column("last_name", String(200)),
        Column("company", String(300)),
        Column("title", String(300)),
        Column("owner_id", String(200)),
        Column("properties", json_type(), nullable=False),
        when("created_at"),
        when("updated_at"),
        Index("ix_contacts_email", "email"),
        Index("ix_contacts_crm_id", "crm_id"),
    )
    Table(
        "owner_changes",
        meta,
        Column("command_id", String(200), primary_key=True),
        contact_ref(),
        Column("owner_id", String(200), nullable=False),
        Column("previous_owner_id", String(200)),
        Column("reason", Text, nullable=False),
        when("changed_at"),
        Index("ix_owner_changes_contact_id", "contact_id"),
    )
    Table(
        "deals",
        meta,
        Column("deal_id", String(200), primary_key=True),
        contact_ref(),
        Column("name", String(500), nullable=False),
        Column("stage", String(200), nullable=False),
        Column("pipeline", String(200)),
        Column("amount_minor", BigInteger),
        Column("currency", String(3)),
        when("created_at"),
        when("updated_at"),
        when("stage_changed_at"),
        Index("ix_deals_contact_id", "contact_id"),
    )
    Table(
        "tasks",
        meta,
        Column("task_id", String(200), primary_key=True),
        contact_ref(),
        Column("title", String(500), nullable=False),
        when("due_at"),
        Column("owner_id", String(200)),
        Column("priority", String(50)),
        Column("notes", Text),
        when("created_at"),
        when("updated_at"),
        Index("ix_tasks_contact_id", "contact_id"),
    )
    Table(
        "activities",
        meta,
        Column("activity_id", String(200), primary_key=True),
        contact_ref(),
        Column("activity_type", String(50), nullable=False),
        when("occurred_at"),
        Column("outcome", String(200)),
        Column("duration_seconds", Integer),
        Column("summary", Text),
        when("created_at"),
        when("updated_at"),
        Index("ix_activities_contact_id", "contact_id"),
    )
    Table(
        "notes",
        meta,
        Column("note_id", String(200), primary_key=True),
        contact_ref(),
        Column("body", Text, nullable=False),
        when("created_at"),
        when("updated_at"),
        Index("ix_notes_contact_id", "contact_id"),
    )
    # The idempotency record: a command_id here was applied, in the same transaction as
    # its rows, so its redelivery is skipped. No foreign key: it outlives any cleanup.
    Table(
        "applied_commands",
        meta,
        Column("command_id", String(200), primary_key=True),
        Column("command_type", String(50), nullable=False),
        Column("contact_id", String(200), nullable=False),
        Column("causation_event_id", String(200)),
        when("issued_at"),
        when("applied_at"),
        Index("ix_applied_commands_contact_id", "contact_id"),
    )
    meta.create_all(connection)


def _crm_v2(connection: Connection) -> None:
    """Calls and other activities say how they went; merged contacts leave an alias."""
    for column in ("direction", "status", "handled_by"):
        connection.execute(text(f"ALTER TABLE activities ADD COLUMN {column} VARCHAR(200)"))
    for column in ("recording_url", "title"):
        connection.execute(text(f"ALTER TABLE activities ADD COLUMN {column} TEXT"))
    meta = MetaData()
    # No foreign key: the retired contact's row is gone, and its id lives on here.
    Table(
        "contact_aliases",
        meta,
        Column("contact_id", String(200), primary_key=True),
        Column("survivor_id", String(200), nullable=False),
        Column("identifier", String(500)),
        Column("merged_at", UtcDateTime, nullable=False),
        Index("ix_contact_aliases_survivor_id", "survivor_id"),
    )
    meta.create_all(connection)


def _crm_v3(connection: Connection) -> None:
    """Field-service job records: made by a payment, changed by the field system, and a
    completed job's follow-up inspection."""
    meta = MetaData()
    # A table of the contacts table's shape, so the foreign key resolves.
    Table("contacts", meta, Column("contact_id", String(200), primary_key=True))
    Table(
        "jobs",
        meta,
        Column("job_id", String(200), primary_key=True),
        Column("contact_id", String(200), ForeignKey("contacts.contact_id"), nullable=False),
        Column("job_type", String(50), nullable=False),
        Column("status", String(50), nullable=False),
        Column("title", String(500)),
        Column("service", String(200)),
        Column("address", Text),
        Column("amount_minor", BigInteger),
        Column("currency", String(3)),
        Column("scheduled_for", UtcDateTime),
        Column("completed_at", UtcDateTime),
        Column("technician", String(200)),
        Column("external_id", String(200)),
        Column("related_job_id", String(200)),
        Column("created_at", UtcDateTime, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        Index("ix_jobs_contact_id", "contact_id"),
        Index("ix_jobs_external_id", "external_id"),
    )
    meta.tables["jobs"].create(connection)


CRM_COMPONENT = "crm"
CRM_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "CRM schema", _crm_v1),
    Migration(2, "activity details, contact aliases", _crm_v2),
    Migration(3, "job records", _crm_v3),
)


def migrate_crm(engine: Engine) -> list[int]:
    return migrate(engine, CRM_COMPONENT, CRM_MIGRATIONS)
