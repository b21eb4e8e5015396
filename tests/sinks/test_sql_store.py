"""The SQL CRM store against real SQLite and PostgreSQL: what each command writes,
exactly-once application across redeliveries and restarts, per-record rejection inside a
batch, and the migration runner."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select

from connectors.delivery import Destination, Outcome, Rejected, Retryable
from connectors.sinks.crm.migrations import CRM_MIGRATIONS, migrate_crm
from connectors.sinks.crm.sql import TABLES, SqlCrmStore, open_store
from connectors.sinks.database import create_sql_engine
from connectors.sinks.ledger import DeliveryLedger
from connectors.sinks.migrations import SCHEMA_MIGRATIONS
from tests.records import crm_command

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def command(
    command_id: str,
    command_type: str,
    contact_id: str,
    payload: dict[str, Any],
    *,
    at: datetime = T0,
) -> dict[str, Any]:
    """A CRM command as the Avro contract decodes it."""
    record = crm_command(command_type, contact_id, payload, command_id=command_id, issued_at=at)
    return record | {"causation_event_id": f"evt-{command_id}"}


def deliver(store: SqlCrmStore, records: Sequence[dict[str, Any]]) -> list[Outcome]:
    return asyncio.run(store.deliver(records))


@pytest.fixture
def store(sql_url: str) -> Iterator[SqlCrmStore]:
    opened = open_store(sql_url)
    yield opened
    asyncio.run(opened.close())


def contact_history(contact: str = "c-1") -> list[dict[str, Any]]:
    """One command of each type for ``contact``, a minute apart, in contact order."""
    at = [T0 + timedelta(minutes=n) for n in range(7)]
    return [
        command(
            "cmd-1",
            "UPSERT_CONTACT",
            contact,
            {
                "email": "ada@example.com",
                "phone": "+14155550100",
                "crm_id": None,
                "first_name": "Ada",
                "last_name": "Lovelace",
                "company": "Analytical Engines",
                "title": "CTO",
                "properties": {"source": "webform"},
            },
            at=at[0],
        ),
        command(
            "cmd-2",
            "SET_OWNER",
            contact,
            {"owner_id": "rep-7", "previous_owner_id": None, "reason": "round robin"},
            at=at[1],
        ),
        command(
            "cmd-3",
            "CREATE_DEAL",
            contact,
            {
                "deal_id": "deal-1",
                "name": "Engines x 3",
                "stage": "qualified",
                "pipeline": "sales",
                "amount_minor": 1_250_000,
                "currency": "EUR",
            },
            at=at[2],
        ),
        command(
            "cmd-4",
            "UPDATE_DEAL_STAGE",
            contact,
            {"deal_id": "deal-1", "stage": "proposal", "previous_stage": "qualified"},
            at=at[3],
        ),
        command(
            "cmd-5",
            "CREATE_TASK",
            contact,
            {
                "task_id": "task-1",
                "title": "Call back",
                "due_at": T0 + timedelta(days=1),
                "owner_id": "rep-7",
                "priority": "high",
                "notes": "asked for pricing",
            },
            at=at[4],
        ),
        command(
            "cmd-6",
            "LOG_ACTIVITY",
            contact,
            {
                "activity_id": "act-1",
                "activity_type": "call",
                "occurred_at": T0 + timedelta(minutes=3),
                "outcome": "connected",
                "duration_seconds": 312,
                "summary": "interested",
            },
            at=at[5],
        ),
        command("cmd-7", "ADD_NOTE", contact, {"note_id": "note-1", "body": "VIP"}, at=at[6]),
    ]


def snapshot(store: SqlCrmStore) -> dict[str, list[dict[str, Any]]]:
    return {name: store.rows(name) for name in TABLES}


def test_each_command_type_writes_exactly_its_rows(store: SqlCrmStore) -> None:
    history = contact_history()
    for record in history:  # one call each: the runtime sends one command per contact
        assert deliver(store, [record]) == [None]

    at = [T0 + timedelta(minutes=n) for n in range(7)]
    assert store.contact("c-1") == {
        "contact_id": "c-1",
        "email": "ada@example.com",
        "phone": "+14155550100",
        "crm_id": None,
        "first_name": "Ada",
        "last_name": "Lovelace",
        "company": "Analytical Engines",
        "title": "CTO",
        "owner_id": "rep-7",
        "properties": {"source": "webform"},
        "created_at": at[0],
        "updated_at": at[1],
    }
    assert store.rows("owner_changes") == [
        {
            "command_id": "cmd-2",
            "contact_id": "c-1",
            "owner_id": "rep-7",
            "previous_owner_id": None,
            "reason": "round robin",
            "changed_at": at[1],
        }
    ]
    assert store.rows("deals") == [
        {
            "deal_id": "deal-1",
            "contact_id": "c-1",
            "name": "Engines x 3",
            "stage": "proposal",
            "pipeline": "sales",
            "amount_minor": 1_250_000,
            "currency": "EUR",
            "created_at": at[2],
            "updated_at": at[3],
            "stage_changed_at": at[3],
        }
    ]
    assert store.rows("tasks") == [
        {
            "task_id": "task-1",
            "contact_id": "c-1",
            "title": "Call back",
            "due_at": T0 + timedelta(days=1),
            "owner_id": "rep-7",
            "priority": "high",
            "notes": "asked for pricing",
            "created_at": at[4],
            "updated_at": at[4],
        }
    ]
    assert store.rows("activities") == [
        {
            "activity_id": "act-1",
            "contact_id": "c-1",
            "activity_type": "call",
            "occurred_at": T0 + timedelta(minutes=3),
            "outcome": "connected",
            "duration_seconds": 312,
            "summary": "interested",
            "direction": None,
            "status": None,
            "handled_by": None,
            "recording_url": None,
            "title": None,
            "created_at": at[5],
            "updated_at": at[5],
        }
    ]
    assert store.rows("notes") == [
        {
            "note_id": "note-1",
            "contact_id": "c-1",
            "body": "VIP",
            "created_at": at[6],
            "updated_at": at[6],
        }
    ]
    applied = store.rows("applied_commands")
    assert [(r["command_id"], r["command_type"], r["contact_id"]) for r in applied] == [
        (r["command_id"], r["command_type"], "c-1") for r in history
    ]
    assert [r["causation_event_id"] for r in applied] == [f"evt-cmd-{n}" for n in range(1, 8)]
    assert store.counts() == {
        "contacts": 1,
        "owner_changes": 1,
        "deals": 1,
        "tasks": 1,
        "activities": 1,
        "notes": 1,
        "jobs": 0,
        "contact_aliases": 0,
        "applied_commands": 7,
    }


def test_upsert_contact_keeps_known_fields_and_merges_properties(store: SqlCrmStore) -> None:
    later = T0 + timedelta(hours=1)
    first = command(
        "u-1",
        "UPSERT_CONTACT",
        "c-1",
        {"email": "ada@example.com", "first_name": "Ada", "properties": {"a": "1", "b": "2"}},
    )
    second = command(
        "u-2",
        "UPSERT_CONTACT",
        "c-1",
        {"email": None, "company": "Babbage & Co", "properties": {"b": "3", "c": "4"}},
        at=later,
    )
    assert deliver(store, [first]) == [None]
    assert deliver(store, [second]) == [None]

    contact = store.contact("c-1")
    assert contact is not None
    assert contact["email"] == "ada@example.com"  # null means "not known", not "erase"
    assert contact["first_name"] == "Ada"
    assert contact["company"] == "Babbage & Co"
    assert contact["properties"] == {"a": "1", "b": "3", "c": "4"}
    assert (contact["created_at"], contact["updated_at"]) == (T0, later)


def test_commands_for_an_unknown_contact_make_a_bare_contact(store: SqlCrmStore) -> None:
    owner = {"owner_id": "rep-1", "previous_owner_id": None, "reason": "territory"}
    again = {"owner_id": "rep-2", "previous_owner_id": "rep-1", "reason": "rebalance"}
    assert deliver(store, [command("o-1", "SET_OWNER", "c-9", owner)]) == [None]
    assert deliver(store, [command("o-2", "SET_OWNER", "c-9", again)]) == [None]
    upsert = {"email": "new@example.com", "properties": {}}
    assert deliver(store, [command("o-3", "UPSERT_CONTACT", "c-9", upsert)]) == [None]

    contact = store.contact("c-9")
    assert contact is not None
    assert (contact["owner_id"], contact["email"]) == ("rep-2", "new@example.com")
    changes = store.rows("owner_changes", contact_id="c-9")
    assert [(c["owner_id"], c["previous_owner_id"]) for c in changes] == [
        ("rep-1", None),
        ("rep-2", "rep-1"),
    ]


def test_redelivery_and_restart_apply_each_command_once(sql_url: str) -> None:
    records = [r for contact in ("c-1", "c-2") for r in _renamed(contact_history(contact))]
    first = open_store(sql_url)
    for record in records:
        assert deliver(first, [record]) == [None]
    before = snapshot(first)

    # The same batch again (a crash before the offsets were committed), all at once.
    assert deliver(first, records) == [None] * len(records)
    # A redelivery is recognised by its key, not its content: a changed body is ignored.
    changed = _renamed(contact_history("c-1"))[0]
    changed["payload"] = {**changed["payload"], "email": "other@example.com"}
    assert deliver(first, [changed]) == [None]
    asyncio.run(first.close())

    restarted = open_store(sql_url)  # a new process: nothing remembered but the database
    assert deliver(restarted, records) == [None] * len(records)
    assert snapshot(restarted) == before
    counts = restarted.counts()
    assert counts["applied_commands"] == len(records) == 14
    assert counts["contacts"] == 2 and counts["deals"] == 2 and counts["notes"] == 2
    asyncio.run(restarted.close())


def _renamed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ids unique per contact, so two contacts' histories can share one database."""
    out = []
    for record in records:
        contact = record["contact_id"]
        payload = {
            k: f"{contact}/{v}" if k.endswith("_id") and k != "owner_id" and v else v
            for k, v in record["payload"].items()
        }
        out.append(
            {**record, "command_id": f"{contact}/{record['command_id']}", "payload": payload}
        )
    return out


def test_a_rejected_record_leaves_its_batch_mates_applied(store: SqlCrmStore) -> None:
    batch = [
        command("ok-1", "UPSERT_CONTACT", "c-1", {"email": "a@example.com", "properties": {}}),
        command("bad-1", "UPDATE_DEAL_STAGE", "c-2", {"deal_id": "deal-404", "stage": "won"}),
        command("bad-2", "CREATE_DEAL", "c-3", {"deal_id": "deal-3", "stage": "new"}),
        command(
            "bad-3",
            "LOG_ACTIVITY",
            "c-4",
            {"activity_id": "a-4", "activity_type": "fax", "occurred_at": T0},
        ),
        command("bad-4", "ADD_NOTE", "", {"note_id": "n-0", "body": "who?"}),
        command("ok-2", "ADD_NOTE", "c-5", {"note_id": "n-5", "body": "hello"}),
    ]
    outcomes = deliver(store, batch)

    assert outcomes[0] is None and outcomes[-1] is None
    rejected = outcomes[1:-1]
    assert all(isinstance(o, Rejected) for o in rejected), outcomes
    assert "deal-404" in str(rejected[0]) and "payload.deal_id" in str(rejected[0])
    assert "payload.name" in str(rejected[1])
    assert "payload.activity_type" in str(rejected[2])
    assert "contact_id" in str(rejected[3])

    counts = store.counts()
    assert (counts["contacts"], counts["notes"], counts["deals"], counts["activities"]) == (
        2,
        1,
        0,
        0,
    )
    assert [r["command_id"] for r in store.rows("applied_commands")] == ["ok-1", "ok-2"]
    # Not recorded as applied: the fixed-up replay from the dead-letter topic still works.
    assert isinstance(deliver(store, [batch[1]])[0], Rejected)
    deal = {"deal_id": "deal-404", "name": "Found", "stage": "new"}
    assert deliver(store, [command("fix-1", "CREATE_DEAL", "c-2", deal)]) == [None]
    assert deliver(store, [batch[1]]) == [None]
    assert store.rows("deals")[0]["stage"] == "won"


def test_a_deal_of_another_contact_is_refused(store: SqlCrmStore) -> None:
    deal = {
        "deal_id": "deal-1",
        "name": "Mine",
        "stage": "new",
        "amount_minor": 5,
        "currency": "USD",
    }
    assert deliver(store, [command("d-1", "CREATE_DEAL", "c-1", deal)]) == [None]

    stolen = command("d-2", "UPDATE_DEAL_STAGE", "c-2", {"deal_id": "deal-1", "stage": "won"})
    moved = command("d-3", "CREATE_DEAL", "c-2", {**deal, "name": "Yours"})
    no_currency = command("d-4", "CREATE_DEAL", "c-1", {**deal, "currency": None})
    outcomes = deliver(store, [stolen, moved, no_currency])

    assert isinstance(outcomes[0], Rejected) and isinstance(outcomes[2], Rejected), outcomes
    assert "belongs to contact 'c-1'" in str(outcomes[0])
    # A create of a deal that exists changes nothing, whoever's it is: nothing to refuse.
    assert outcomes[1] is None
    assert "currency" in str(outcomes[2])
    [row] = store.rows("deals")
    assert (row["contact_id"], row["name"], row["stage"]) == ("c-1", "Mine", "new")


def test_the_store_is_a_destination(store: SqlCrmStore) -> None:
    destination: Destination = store  # mypy checks the protocol; this checks the values
    assert (destination.name, destination.max_batch) == ("sql", 500)


def test_an_unreachable_database_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed: connection refused.
    store = SqlCrmStore(
        f"postgresql+psycopg://switchboard@127.0.0.1:{port}/switchboard", migrate=False
    )
    with pytest.raises(Retryable):
        deliver(store, contact_history()[:1])
    asyncio.run(store.close())


def test_migrations_run_twice_are_a_no_op(sql_url: str) -> None:
    engine = create_sql_engine(sql_url)
    try:
        assert migrate_crm(engine) == [m.version for m in CRM_MIGRATIONS]
        assert migrate_crm(engine) == []
        open_store(sql_url).engine.dispose()
        assert _migration_rows(sql_url) == [("crm", 1), ("crm", 2), ("crm", 3)]
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_one_the_store_uses(store: SqlCrmStore) -> None:
    inspector = inspect(store.engine)
    for name, table in TABLES.items():
        assert {c["name"] for c in inspector.get_columns(name)} == set(table.c.keys()), name


def test_concurrent_opens_apply_migrations_once(sql_url: str) -> None:
    workers = 4
    start = threading.Barrier(workers)

    def open_one(n: int) -> str:
        start.wait()  # all at once, on a database that has no tables yet
        if n % 2:
            ledger = DeliveryLedger(sql_url)
            asyncio.run(ledger.close())
            return "ledger"
        opened = open_store(sql_url)
        asyncio.run(opened.close())
        return "crm"

    with ThreadPoolExecutor(workers) as pool:
        assert sorted(pool.map(open_one, range(workers))) == ["crm", "crm", "ledger", "ledger"]
    assert _migration_rows(sql_url) == [("crm", 1), ("crm", 2), ("crm", 3), ("ledger", 1)]


def _migration_rows(url: str) -> list[tuple[str, int]]:
    engine = create_sql_engine(url)
    try:
        with engine.connect() as connection:
            query = select(SCHEMA_MIGRATIONS.c.component, SCHEMA_MIGRATIONS.c.version)
            return sorted((c, v) for c, v in connection.execute(query))
    finally:
        engine.dispose()


# ---- merges, the call's task and the paid deal (issue 18) ------------------------------


def test_a_merge_leaves_one_contact_owning_everything_and_redirects_later_commands(
    store: SqlCrmStore,
) -> None:
    for record in contact_history("c-retired"):
        assert deliver(store, [record]) == [None]
    survivor = command(
        "cmd-s", "UPSERT_CONTACT", "c-survivor", {"phone": "+14155550199", "title": None}
    )
    merge = command(
        "cmd-merge",
        "MERGE_CONTACTS",
        "c-survivor",
        {"retired_contact_id": "c-retired", "identifier": "email:ada@example.com"},
    )
    # Issued for the retired contact before the merge, delivered after it.
    late = command(
        "cmd-late",
        "UPDATE_DEAL_STAGE",
        "c-retired",
        {"deal_id": "deal-1", "stage": "closedwon", "previous_stage": "proposal"},
    )
    assert deliver(store, [survivor]) == [None]
    assert deliver(store, [merge]) == [None]
    assert deliver(store, [merge, late]) == [None, None]  # a redelivered merge is a no-op

    assert store.contact("c-retired") is None
    kept = store.contact("c-survivor")
    assert kept is not None
    # The survivor's own phone stays; what it lacked comes from the retired contact.
    assert (kept["phone"], kept["email"], kept["first_name"], kept["owner_id"]) == (
        "+14155550199",
        "ada@example.com",
        "Ada",
        "rep-7",
    )
    assert kept["properties"] == {"source": "webform"}
    for table in ("deals", "tasks", "activities", "notes", "owner_changes"):
        assert {r["contact_id"] for r in store.rows(table)} == {"c-survivor"}, table
    [deal] = store.rows("deals")
    assert deal["stage"] == "closedwon"
    [alias] = store.rows("contact_aliases")
    assert (alias["contact_id"], alias["survivor_id"], alias["identifier"]) == (
        "c-retired",
        "c-survivor",
        "email:ada@example.com",
    )


def test_a_merge_of_a_merge_points_every_old_id_at_the_last_survivor(store: SqlCrmStore) -> None:
    def merge(n: int, survivor: str, retired: str) -> dict[str, Any]:
        payload = {"retired_contact_id": retired, "identifier": None}
        return command(f"cmd-m{n}", "MERGE_CONTACTS", survivor, payload)

    note = {"note_id": "n-1", "body": "first"}
    assert deliver(store, [command("cmd-n", "ADD_NOTE", "c-c", note)]) == [None]
    assert deliver(store, [merge(1, "c-b", "c-c"), merge(2, "c-a", "c-b")]) == [None, None]
    later = command("cmd-n2", "ADD_NOTE", "c-c", {"note_id": "n-2", "body": "second"})
    assert deliver(store, [later]) == [None]
    assert {r["contact_id"] for r in store.rows("notes")} == {"c-a"}
    assert {(a["contact_id"], a["survivor_id"]) for a in store.rows("contact_aliases")} == {
        ("c-b", "c-a"),
        ("c-c", "c-a"),
    }


def busy_batch() -> list[dict[str, Any]]:
    """Five contacts' commands interleaved, as a busy feed brings them: c-b merged into
    c-a, c-c into c-d and then c-d into c-a (a merge of a merge), commands issued for
    retired ids before and after their merges, and a redelivery."""
    at = [T0 + timedelta(minutes=n) for n in range(20)]
    deal: dict[str, Any] = {"deal_id": "deal-c", "name": "Boiler", "stage": "qualified"}
    deal |= {"pipeline": "sales", "amount_minor": 90_000, "currency": "EUR"}

    def upsert(n: int, contact: str, **fields: Any) -> dict[str, Any]:
        payload = {"properties": {f"seen-{n}": contact}} | fields
        return command(f"u-{n}", "UPSERT_CONTACT", contact, payload, at=at[n])

    def merge(n: int, survivor: str, retired: str) -> dict[str, Any]:
        payload = {"retired_contact_id": retired, "identifier": f"email:{retired}@example.com"}
        return command(f"m-{n}", "MERGE_CONTACTS", survivor, payload, at=at[n])

    call = {"activity_type": "call", "occurred_at": at[1], "outcome": "connected"}
    return [
        upsert(0, "c-b", email="b@example.com", first_name="Bea"),
        command("a-1", "LOG_ACTIVITY", "c-b", {"activity_id": "act-b"} | call, at=at[1]),
        upsert(2, "c-c", phone="+14155550102", first_name="Cy"),
        command("d-3", "CREATE_DEAL", "c-c", deal, at=at[3]),
        upsert(4, "c-e", email="e@example.com"),
        merge(5, "c-a", "c-b"),
        upsert(6, "c-b", title="Owner"),  # issued for c-b before its merge
        merge(7, "c-d", "c-c"),
        command(
            "s-8",
            "UPDATE_DEAL_STAGE",
            "c-d",
            {"deal_id": "deal-c", "stage": "closedwon", "previous_stage": "qualified"},
            at=at[8],
        ),
        upsert(9, "c-a", first_name="Ada", company="Analytical"),
        command("o-10", "SET_OWNER", "c-e", {"owner_id": "rep-2", "reason": "round robin"}),
        upsert(11, "c-e", last_name="Eve"),
        merge(12, "c-a", "c-d"),
        command("n-13", "ADD_NOTE", "c-c", {"note_id": "n-c", "body": "call back"}, at=at[13]),
        upsert(0, "c-b", email="b@example.com", first_name="Bea"),  # redelivered
        command("o-14", "SET_OWNER", "c-b", {"owner_id": "rep-7", "reason": "round robin"}),
    ]


def test_a_busy_batch_lands_as_its_commands_one_by_one(store: SqlCrmStore, tmp_path: Path) -> None:
    """The store writes a batch in phases, a few statements each (crm/phases.py): the
    outcome must be what applying its commands one at a time in batch order gives."""
    assert deliver(store, busy_batch()) == [None] * len(busy_batch())

    one_by_one = open_store(f"sqlite:///{tmp_path / 'one-by-one.sqlite3'}")
    for record in busy_batch():
        assert deliver(one_by_one, [record]) == [None]

    def written(store: SqlCrmStore) -> dict[str, list[dict[str, Any]]]:
        rows = snapshot(store)
        for row in rows["applied_commands"]:
            del row["applied_at"]  # the clock of each store
        return rows

    assert written(store) == written(one_by_one)
    asyncio.run(one_by_one.close())
    # What a rep sees: one contact for c-a, c-b, c-c and c-d, with all of theirs.
    assert [c["contact_id"] for c in store.rows("contacts")] == ["c-a", "c-e"]
    ada = store.contact("c-a")
    assert ada is not None
    assert (ada["first_name"], ada["email"], ada["phone"]) == (
        "Ada",
        "b@example.com",
        "+14155550102",
    )
    assert (ada["title"], ada["company"], ada["owner_id"]) == ("Owner", "Analytical", "rep-7")
    assert set(ada["properties"]) == {"seen-0", "seen-2", "seen-6", "seen-9"}
    [deal] = store.rows("deals")
    assert (deal["contact_id"], deal["stage"]) == ("c-a", "closedwon")
    assert [(n["contact_id"], n["body"]) for n in store.rows("notes")] == [("c-a", "call back")]
    assert [a["contact_id"] for a in store.rows("activities")] == ["c-a"]
    assert {(a["contact_id"], a["survivor_id"]) for a in store.rows("contact_aliases")} == {
        ("c-b", "c-a"),
        ("c-c", "c-a"),
        ("c-d", "c-a"),
    }
    eve = store.contact("c-e")
    assert eve is not None
    assert (eve["email"], eve["last_name"], eve["owner_id"]) == ("e@example.com", "Eve", "rep-2")


def test_an_unknown_retired_contact_merges_as_a_no_op(store: SqlCrmStore) -> None:
    merge = command(
        "cmd-m", "MERGE_CONTACTS", "c-1", {"retired_contact_id": "c-never", "identifier": None}
    )
    assert deliver(store, [merge]) == [None]
    assert store.contact("c-1") is not None
    assert store.rows("deals") == []


def test_the_owner_gets_the_tasks_made_before_the_lead_was_routed(store: SqlCrmStore) -> None:
    task = {
        "task_id": "t-next",
        "title": "Send the quote",
        "due_at": T0 + timedelta(hours=1),
        "owner_id": None,
        "priority": "HIGH",
        "notes": None,
    }
    owner = {"owner_id": "rep-3", "previous_owner_id": None, "reason": "round robin"}
    assert deliver(store, [command("cmd-t", "CREATE_TASK", "c-1", task)]) == [None]
    assert deliver(store, [command("cmd-o", "SET_OWNER", "c-1", owner)]) == [None]
    [row] = store.rows("tasks")
    assert row["owner_id"] == "rep-3"


def test_a_payment_closing_the_deal_sets_its_amount(store: SqlCrmStore) -> None:
    history = contact_history()[:3]
    history[2]["payload"] |= {"amount_minor": None, "currency": None}
    paid = {
        "deal_id": "deal-1",
        "stage": "closedwon",
        "previous_stage": "qualified",
        "amount_minor": 480_000,
        "currency": "USD",
    }
    unpaid = {"deal_id": "deal-1", "stage": "closedwon", "previous_stage": "closedwon"}
    for record in [*history, command("cmd-paid", "UPDATE_DEAL_STAGE", "c-1", paid)]:
        assert deliver(store, [record]) == [None]
    assert deliver(store, [command("cmd-again", "UPDATE_DEAL_STAGE", "c-1", unpaid)]) == [None]
    [deal] = store.rows("deals")
    assert (deal["stage"], deal["amount_minor"], deal["currency"]) == ("closedwon", 480_000, "USD")
    no_currency = paid | {"currency": None}
    [outcome] = deliver(store, [command("cmd-bad", "UPDATE_DEAL_STAGE", "c-1", no_currency)])
    assert isinstance(outcome, Rejected)
    assert "currency is required" in outcome.reason


def _job(command_id: str, contact: str, at: datetime, **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "job_id": "job-1",
        "job_type": "service",
        "status": "pending",
        "title": None,
        "service": None,
        "address": None,
        "amount_minor": None,
        "currency": None,
        "scheduled_for": None,
        "completed_at": None,
        "technician": None,
        "external_id": None,
        "related_job_id": None,
    }
    return command(command_id, "UPSERT_JOB", contact, payload | fields, at=at)


def test_a_paid_job_is_made_then_completed_field_by_field(store: SqlCrmStore) -> None:
    paid = _job(
        "job-cmd-1",
        "c-1",
        T0,
        title="Boiler service for Ada",
        service="Boiler service",
        address="1 Engine Row, London, N1 9GU",
        amount_minor=45_000,
        currency="GBP",
    )
    done_at = T0 + timedelta(days=3, hours=2)
    completed = _job(
        "job-cmd-2",
        "c-1",
        T0 + timedelta(days=3),
        job_type="boiler_installation",
        status="completed",
        completed_at=done_at,
        technician="tech-12",
        external_id="FS-881",
    )
    assert deliver(store, [paid]) == [None]
    assert deliver(store, [completed, completed]) == [None, None]  # the second: a redelivery
    [job] = store.rows("jobs")
    assert job == {
        "job_id": "job-1",
        "contact_id": "c-1",
        "job_type": "boiler_installation",
        "status": "completed",
        "title": "Boiler service for Ada",  # a null in the update keeps what the payment said
        "service": "Boiler service",
        "address": "1 Engine Row, London, N1 9GU",
        "amount_minor": 45_000,
        "currency": "GBP",
        "scheduled_for": None,
        "completed_at": done_at,
        "technician": "tech-12",
        "external_id": "FS-881",
        "related_job_id": None,
        "created_at": T0,
        "updated_at": T0 + timedelta(days=3),
    }
    assert store.contact("c-1") is not None  # a job makes a bare contact, like a task does
    applied = [r["command_type"] for r in store.rows("applied_commands")]
    assert applied == ["UPSERT_JOB", "UPSERT_JOB"]


def test_a_scheduled_inspection_job_and_a_job_of_another_contact(store: SqlCrmStore) -> None:
    due = T0 + timedelta(days=30)
    inspection = _job(
        "job-cmd-3",
        "c-1",
        T0,
        job_id="job-insp",
        job_type="inspection",
        status="scheduled",
        scheduled_for=due,
        related_job_id="job-1",
    )
    stolen = _job("job-cmd-4", "c-2", T0, job_id="job-insp", status="cancelled")
    bad = _job("job-cmd-5", "c-1", T0, job_id="job-2", amount_minor=100)
    outcomes = deliver(store, [inspection, stolen, bad])
    assert outcomes[0] is None
    assert isinstance(outcomes[1], Rejected) and "payload.job_id" in str(outcomes[1])
    assert isinstance(outcomes[2], Rejected) and "currency is required" in str(outcomes[2])
    [job] = store.rows("jobs")
    assert (job["job_id"], job["contact_id"], job["job_type"], job["status"]) == (
        "job-insp",
        "c-1",
        "inspection",
        "scheduled",
    )
    assert (job["scheduled_for"], job["related_job_id"]) == (due, "job-1")


def test_a_merge_moves_the_retired_contacts_jobs(store: SqlCrmStore) -> None:
    assert deliver(store, [_job("job-cmd-6", "c-retired", T0, amount_minor=9, currency="USD")])
    merge = command(
        "cmd-merge-jobs",
        "MERGE_CONTACTS",
        "c-survivor",
        {"retired_contact_id": "c-retired", "identifier": "email:ada@example.com"},
    )
    # Issued for the retired contact before the merge, delivered after it.
    late = _job("job-cmd-7", "c-retired", T0 + timedelta(hours=1), status="scheduled")
    assert deliver(store, [merge, late]) == [None, None]
    [job] = store.rows("jobs")
    assert (job["contact_id"], job["status"], job["amount_minor"]) == ("c-survivor", "scheduled", 9)


# ---- a deal the survivor of a merge adopts (issue 19 follow-up) ------------------------

ADOPTED = {
    "deal_id": "deal-1",
    "name": "Ana Silva \u2014 meeting-booked",
    "stage": "appointmentscheduled",
    "pipeline": None,
    "amount_minor": None,
    "currency": None,
}


def _adopted_deal_story() -> dict[str, Any]:
    """c-a opens deal-1; c-a is merged into c-b, whose merge makes the deal again under
    c-b (processors.records.merge_outputs); then c-b's payment closes it won. c-a's create
    is keyed by c-a, so on another partition than c-b's commands: it may come at any
    point of c-b's order."""
    at = [T0 + timedelta(minutes=n) for n in range(3)]
    merged = {"retired_contact_id": "c-a", "identifier": "phone:+14155550177"}
    paid = {
        "deal_id": "deal-1",
        "stage": "closedwon",
        "previous_stage": "appointmentscheduled",
        "amount_minor": 480_000,
        "currency": "USD",
    }
    return {
        "created": command("a-create", "CREATE_DEAL", "c-a", ADOPTED, at=at[0]),
        "merge": [
            command("b-merge", "MERGE_CONTACTS", "c-b", merged, at=at[1]),
            command("b-upsert", "UPSERT_CONTACT", "c-b", {"first_name": "Ana"}, at=at[1]),
            command("b-create", "CREATE_DEAL", "c-b", ADOPTED, at=at[1]),
        ],
        "moved": command("b-move", "UPDATE_DEAL_STAGE", "c-b", paid, at=at[2]),
    }


@pytest.mark.parametrize("order", ["create first", "create last", "create with the move"])
def test_a_late_create_of_an_adopted_deal_leaves_the_survivors_move(
    store: SqlCrmStore, order: str
) -> None:
    story = _adopted_deal_story()
    created, merge, moved = story["created"], story["merge"], story["moved"]
    batches = {
        "create first": [[created], *([m] for m in merge), [moved]],
        # The bad order: c-b's move before c-a's create, once a call and in one call (the
        # sink's runtime delivers different contacts' commands together).
        "create last": [*([m] for m in merge), [moved], [created]],
        "create with the move": [*([m] for m in merge), [moved, created]],
    }[order]
    for batch in batches:
        assert deliver(store, batch) == [None] * len(batch), batch

    at = [T0 + timedelta(minutes=n) for n in range(3)]
    made = at[0] if order == "create first" else at[1]  # by c-a's create, or c-b's
    assert store.rows("deals") == [
        {
            "deal_id": "deal-1",
            "contact_id": "c-b",
            "name": "Ana Silva \u2014 meeting-booked",
            "stage": "closedwon",
            "pipeline": None,
            "amount_minor": 480_000,
            "currency": "USD",
            "created_at": made,
            "updated_at": at[2],
            "stage_changed_at": at[2],
        }
    ]
    applied = {r["command_id"] for r in store.rows("applied_commands")}
    assert applied == {"a-create", "b-merge", "b-upsert", "b-create", "b-move"}


def test_a_stage_change_of_a_deal_never_created_is_still_refused(store: SqlCrmStore) -> None:
    story = _adopted_deal_story()
    assert deliver(store, [story["merge"][0]]) == [None]
    [outcome] = deliver(store, [story["moved"]])
    assert isinstance(outcome, Rejected)
    assert "deal 'deal-1' does not exist (no CREATE_DEAL applied)" in str(outcome)
    assert store.rows("deals") == []


def test_a_chain_of_merges_makes_no_dead_letter_of_the_survivors_create(
    store: SqlCrmStore,
) -> None:
    """c-f opens deal-1; c-f is merged into c-e, then c-e into c-a, and each merge makes
    the deal again under its survivor. Three partitions: c-a's merge of c-e and its create
    can come before c-e's merge of c-f, while the store still has deal-1 as c-f's. The
    create changes nothing then (the deal exists, whoever's it is); c-e's merge brings the
    deal to c-a, and c-a's move lands (seen in bench_e2e: 11 of 20,000 events)."""
    at = [T0 + timedelta(minutes=n) for n in range(4)]
    opened = command("f-create", "CREATE_DEAL", "c-f", ADOPTED, at=at[0])
    into_e = command("e-merge", "MERGE_CONTACTS", "c-e", {"retired_contact_id": "c-f"}, at=at[1])
    e_create = command("e-create", "CREATE_DEAL", "c-e", ADOPTED, at=at[1])
    into_a = command("a-merge", "MERGE_CONTACTS", "c-a", {"retired_contact_id": "c-e"}, at=at[2])
    a_create = command("a-create", "CREATE_DEAL", "c-a", ADOPTED, at=at[2])
    move = {"deal_id": "deal-1", "stage": "contractsent", "previous_stage": None}
    moved = command("a-move", "UPDATE_DEAL_STAGE", "c-a", move, at=at[3])

    for record in [opened, into_a, a_create]:
        assert deliver(store, [record]) == [None], record["command_id"]
    [row] = store.rows("deals")
    assert (row["contact_id"], row["stage"]) == ("c-f", "appointmentscheduled")
    for record in [into_e, e_create, moved]:
        assert deliver(store, [record]) == [None], record["command_id"]

    [row] = store.rows("deals")
    assert (row["contact_id"], row["stage"], row["created_at"]) == ("c-a", "contractsent", at[0])
