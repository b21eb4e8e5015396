"""The delivery ledger: a durable record of the idempotency keys already delivered, for
destinations that cannot deduplicate by themselves (SMTP, Slack, SMS). The sink runtime
asks ``seen`` before delivering a batch and ``record``s what its destination confirmed, so
a record redelivered after a crash or a rebalance is skipped instead of sent twice.

It lives in SQL like the CRM store (same URL conventions, SQLite by default) and its table
is made by its own migration in the same runner (connectors.sinks.migrations), so it can
share the CRM store's database or have its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import ParamSpec, TypeVar

from sqlalchemy import Column, Engine, MetaData, String, Table, Text, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from connectors.delivery import Retryable
from connectors.sinks.database import (
    UtcDateTime,
    create_sql_engine,
    error_answer,
    insert_or,
    write_transaction,
)
from connectors.sinks.migrations import Migration, migrate

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_URL = "sqlite:///.run/sink-ledger.db"  # = Settings.sink_ledger_url
# Keys per statement: far below SQLite's and PostgreSQL's bound-parameter limits.
CHUNK = 500

DELIVERIES = Table(
    "deliveries",
    MetaData(),
    Column("key", String(200), primary_key=True),
    Column("destination", String(100), nullable=False),
    Column("delivered_at", UtcDateTime, nullable=False),
    Column("answer", Text, nullable=False),
)


def _ledger_v1(connection: Connection) -> None:
    Table(
        "deliveries",
        MetaData(),
        Column("key", String(200), primary_key=True),
        Column("destination", String(100), nullable=False),
        Column("delivered_at", UtcDateTime, nullable=False),
        Column("answer", Text, nullable=False),
    ).create(connection)


LEDGER_COMPONENT = "ledger"
LEDGER_MIGRATIONS: tuple[Migration, ...] = (Migration(1, "deliveries", _ledger_v1),)


class DeliveryLedger:
    """Delivered keys in ``deliveries``. Constructing it brings its table up to date.
    Database trouble is raised as Retryable: the batch is worth trying again."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.url = url
        self._clock = clock
        self.engine: Engine = create_sql_engine(url)
        migrate(self.engine, LEDGER_COMPONENT, LEDGER_MIGRATIONS)

    async def seen(self, keys: Sequence[str]) -> set[str]:
        """The ones among ``keys`` that were delivered before."""
        return await asyncio.to_thread(self._guarded, self._seen, keys)

    async def record(self, keys: Sequence[str], destination: str, answer: str) -> None:
        """Remember ``keys`` as delivered to ``destination``. A key recorded before keeps
        its first entry: that is when it was really delivered."""
        await asyncio.to_thread(self._guarded, self._record, keys, destination, answer)

    def _seen(self, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.engine.connect() as connection:
            for chunk in _chunks(sorted(set(keys))):
                query = select(DELIVERIES.c.key).where(DELIVERIES.c.key.in_(chunk))
                found.update(connection.execute(query).scalars())
        return found

    def _record(self, keys: Sequence[str], destination: str, answer: str) -> None:
        at = self._clock()
        # Sorted: two sinks recording overlapping keys take their row locks in one order.
        ordered = sorted(set(keys))
        with write_transaction(self.engine) as connection:
            for chunk in _chunks(ordered):
                stmt = insert_or(connection.dialect.name, DELIVERIES).on_conflict_do_nothing(
                    index_elements=["key"]
                )
                connection.execute(
                    stmt,
                    [
                        {"key": k, "destination": destination, "delivered_at": at, "answer": answer}
                        for k in chunk
                    ],
                )

    @staticmethod
    def _guarded(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return work(*args, **kwargs)
        except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
            raise Retryable("delivery ledger unavailable or busy", error_answer(exc)) from exc

    async def close(self) -> None:
        self.engine.dispose()


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]
