"""The versioned schema migration runner the SQL-backed sinks share; each store keeps its
own list of migrations beside it (the CRM store's in connectors.sinks.crm.migrations, the
ledger's in connectors.sinks.ledger).

A migration is a numbered function of a Connection. ``migrate`` applies, in order, the
ones a database lacks, each in its own transaction together with its ``schema_migrations``
row, so a migration is either wholly applied and recorded or not at all; running it again
is a no-op. Several components (the CRM store, the delivery ledger) keep their own lists in
the one table, so they can share a database.

Two processes migrating at once apply each migration once: every migration transaction
first takes a lock (a transaction-scoped advisory lock on PostgreSQL; ``BEGIN IMMEDIATE``,
SQLite's one writer, on SQLite) and re-reads what is applied under it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select, text
from sqlalchemy.engine import Connection

from connectors.sinks.database import UtcDateTime, write_transaction

log = logging.getLogger("switchboard.sql")

# pg_advisory_xact_lock key of every migration transaction ("SWBD" in ASCII).
LOCK_KEY = 0x53574244


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
