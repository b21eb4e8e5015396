"""The delivery ledger against real SQLite and PostgreSQL: what was recorded is seen, by
this instance and by the next process, and the first record of a key stands."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from connectors.sinks.crm.sql import open_store
from connectors.sinks.ledger import DELIVERIES, DeliveryLedger
from connectors.sinks.runtime import Ledger

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
T1 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def test_recorded_keys_are_seen_across_instances(sql_url: str) -> None:
    async def first_process() -> None:
        ledger = DeliveryLedger(sql_url, clock=lambda: T0)
        assert await ledger.seen(["n-1", "n-2"]) == set()
        await ledger.record(["n-1", "n-2"], "smtp", "250 OK queued as 4F2A")
        assert await ledger.seen(["n-1", "n-3", "n-2", "n-1"]) == {"n-1", "n-2"}
        await ledger.close()

    async def second_process() -> None:
        ledger = DeliveryLedger(sql_url, clock=lambda: T1)
        assert await ledger.seen(["n-2", "n-3"]) == {"n-2"}
        # A repeat keeps the first entry: that is when the message really went out.
        await ledger.record(["n-2", "n-3"], "slack", "ok")
        assert await ledger.seen(["n-1", "n-2", "n-3", "n-4"]) == {"n-1", "n-2", "n-3"}
        await ledger.close()

    asyncio.run(first_process())
    asyncio.run(second_process())

    ledger = DeliveryLedger(sql_url)
    with ledger.engine.connect() as connection:
        rows = {r.key: r for r in connection.execute(DELIVERIES.select())}
    assert (rows["n-2"].destination, rows["n-2"].answer, rows["n-2"].delivered_at) == (
        "smtp",
        "250 OK queued as 4F2A",
        T0,
    )
    assert (rows["n-3"].destination, rows["n-3"].delivered_at) == ("slack", T1)
    asyncio.run(ledger.close())


def test_large_batches_and_empty_calls(sql_url: str) -> None:
    async def run() -> None:
        ledger: Ledger = DeliveryLedger(sql_url)  # what the sink runtime expects
        keys = [f"sms-{n:05d}" for n in range(1_234)]
        assert await ledger.seen([]) == set()
        await ledger.record([], "sms", "")
        await ledger.record(keys[::2], "sms", "queued")
        assert await ledger.seen(keys) == set(keys[::2])
        assert isinstance(ledger, DeliveryLedger)
        await ledger.close()

    asyncio.run(run())


def test_ledger_and_crm_store_share_a_database(sql_url: str) -> None:
    store = open_store(sql_url)
    ledger = DeliveryLedger(sql_url)
    asyncio.run(ledger.record(["k-1"], "webhook", "204"))
    assert asyncio.run(ledger.seen(["k-1"])) == {"k-1"}
    assert store.counts()["contacts"] == 0
    asyncio.run(ledger.close())
    asyncio.run(store.close())
