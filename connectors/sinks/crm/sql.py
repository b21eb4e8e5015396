"""The SQL CRM store: CRM commands applied to tables in SQLite (the embedded default) or
PostgreSQL (production and the tests), as a Destination of the delivery runtime.

Each command is applied together with its ``applied_commands`` row (keyed by
``command_id``) in one transaction, so it is applied exactly once: a command found there
already is a no-op, which makes a redelivery after a crash harmless (invariant 2).

A deliver call is one transaction, written with a few statements per table rather than a
round trip per command: every command is validated first, then the batch is applied in
phases (connectors.sinks.crm.phases) with the result of applying it command by command.
A phase of commands claims them in ``applied_commands`` (one lookup, one insert), checks
in Python, in batch order, which records belong to whom, and writes each kind of command
with one executemany; it holds at most one command of a kind per contact, in the order
it writes the kinds, so each contact's commands take effect in their order. A phase of
merges (of distinct contacts) takes a statement per table for them all. A record the
checks refuse is rejected alone; a record the database refuses (an integrity or data
error) fails its statement, so then the batch is applied again one record at a time,
each in a SAVEPOINT, and only that record is rejected while its batch-mates are applied.

What each command does:

- UPSERT_CONTACT inserts or updates the contact. A null field leaves the stored value as it
  is (a command says what it knows, not what it does not); ``properties`` are merged in.
- SET_OWNER sets the contact's owner and records the change in ``owner_changes``, with
  the owner the store had before (the command's ``previous_owner_id`` is only the
  processor's view of it).
- SET_OWNER also gives the contact's unowned tasks to the new owner: a task made before
  the lead was routed (a call's next step) is the owner's as soon as there is one.
- CREATE_TASK, LOG_ACTIVITY, ADD_NOTE, UPSERT_JOB upsert by their own id. A record that
  belongs to another contact is rejected rather than moved.
- CREATE_DEAL makes the deal by its own id; on a deal that exists it changes nothing,
  whoever's it is (it moves nothing, so there is nothing to refuse). The survivor of a
  merge issues the create of each deal it adopts again, in its own order, so a create
  keyed by the retired contact, on another partition, may come after the survivor's
  stage changes: it must not move the stage back. And after a chain of merges (c-f into
  c-e, c-e into c-a) c-a's create may come while the deal is still c-f's here, before
  c-e's merge of c-f, which then brings it to c-a.
- UPDATE_DEAL_STAGE with an amount (a payment closing the deal) sets the deal's amount too.
- UPSERT_JOB inserts or updates the job by its own id; a null field leaves the stored
  value as it is (a status change knows no amount, a payment no technician).
- MERGE_CONTACTS moves the retired contact's deals, tasks, activities, notes, jobs and owner
  changes onto the survivor, fills the survivor's blank fields from it, deletes its row and
  keeps its id in ``contact_aliases``. Every command is applied to the contact its id
  resolves to there, so a command issued for the retired contact before the merge (on
  another partition, so possibly delivered after it) lands on the survivor.
- UPDATE_DEAL_STAGE on a deal that does not exist is rejected: a deal made from a stage
  alone would show a sales team a nameless deal with no amount in their pipeline. Its
  CREATE_DEAL comes earlier in the same contact's order (after a merge, the survivor's
  own), so a missing deal is an upstream fault that belongs in the dead-letter topic,
  where it can be replayed once fixed.
- Every command but UPDATE_DEAL_STAGE makes a bare contact row if the contact has none
  yet, so a task or an owner is never lost to a missing UPSERT_CONTACT; that UPSERT fills
  it in later.

Errors: a payload that fails validation, and an integrity or data error of one record,
answer Rejected naming the field; a lost connection, a lock timeout, a serialization
failure or a deadlock fail the whole call as Retryable (the transaction is rolled back,
so nothing of it was applied). Anything else is a bug and is raised as it is."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    any_,
    bindparam,
    case,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import ColumnElement

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.sinks.crm.migrations import migrate_crm
from connectors.sinks.crm.phases import Write, cut
from connectors.sinks.database import (
    Upsert,
    UtcDateTime,
    create_sql_engine,
    error_answer,
    insert_or,
    json_type,
    write_transaction,
)

DEFAULT_URL = "sqlite:///.run/crm.db"  # = Settings.crm_database_url
log = logging.getLogger("switchboard.sql")

# The current shape of the tables (connectors.sinks.crm.migrations creates them).
meta = MetaData()


def _when(name: str, nullable: bool = False) -> Column[datetime]:
    return Column(name, UtcDateTime, nullable=nullable)


CONTACTS = Table(
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
    _when("created_at"),
    _when("updated_at"),
)
OWNER_CHANGES = Table(
    "owner_changes",
    meta,
    Column("command_id", String(200), primary_key=True),
    Column("contact_id", String(200), nullable=False),
    Column("owner_id", String(200), nullable=False),
    Column("previous_owner_id", String(200)),
    Column("reason", Text, nullable=False),
    _when("changed_at"),
)
DEALS = Table(
    "deals",
    meta,
    Column("deal_id", String(200), primary_key=True),
    Column("contact_id", String(200), nullable=False),
    Column("name", String(500), nullable=False),
    Column("stage", String(200), nullable=False),
    Column("pipeline", String(200)),
    Column("amount_minor", BigInteger),
    Column("currency", String(3)),
    _when("created_at"),
    _when("updated_at"),
    _when("stage_changed_at"),
)
TASKS = Table(
    "tasks",
    meta,
    Column("task_id", String(200), primary_key=True),
    Column("contact_id", String(200), nullable=False),
    Column("title", String(500), nullable=False),
    _when("due_at"),
    Column("owner_id", String(200)),
    Column("priority", String(50)),
    Column("notes", Text),
    _when("created_at"),
    _when("updated_at"),
)
ACTIVITIES = Table(
    "activities",
    meta,
    Column("activity_id", String(200), primary_key=True),
    Column("contact_id", String(200), nullable=False),
    Column("activity_type", String(50), nullable=False),
    _when("occurred_at"),
    Column("outcome", String(200)),
    Column("duration_seconds", Integer),
    Column("summary", Text),
    Column("direction", String(200)),
    Column("status", String(200)),
    Column("handled_by", String(200)),
    Column("recording_url", Text),
    Column("title", Text),
    _when("created_at"),
    _when("updated_at"),
)
NOTES = Table(
    "notes",
    meta,
    Column("note_id", String(200), primary_key=True),
    Column("contact_id", String(200), nullable=False),
    Column("body", Text, nullable=False),
    _when("created_at"),
    _when("updated_at"),
)
JOBS = Table(
    "jobs",
    meta,
    Column("job_id", String(200), primary_key=True),
    Column("contact_id", String(200), nullable=False),
    Column("job_type", String(50), nullable=False),
    Column("status", String(50), nullable=False),
    Column("title", String(500)),
    Column("service", String(200)),
    Column("address", Text),
    Column("amount_minor", BigInteger),
    Column("currency", String(3)),
    _when("scheduled_for", nullable=True),
    _when("completed_at", nullable=True),
    Column("technician", String(200)),
    Column("external_id", String(200)),
    Column("related_job_id", String(200)),
    _when("created_at"),
    _when("updated_at"),
)
CONTACT_ALIASES = Table(
    "contact_aliases",
    meta,
    Column("contact_id", String(200), primary_key=True),
    Column("survivor_id", String(200), nullable=False),
    Column("identifier", String(500)),
    _when("merged_at"),
)
APPLIED_COMMANDS = Table(
    "applied_commands",
    meta,
    Column("command_id", String(200), primary_key=True),
    Column("command_type", String(50), nullable=False),
    Column("contact_id", String(200), nullable=False),
    Column("causation_event_id", String(200)),
    _when("issued_at"),
    _when("applied_at"),
)
TABLES: dict[str, Table] = {t.name: t for t in meta.sorted_tables}


# The command, validated. Field names are the Avro contract's (schemas/crm_command.avsc);
# unknown fields are ignored so that a newer compatible schema does not stop this sink.


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Instant = Annotated[datetime, AfterValidator(_utc)]
Id = Annotated[str, Field(min_length=1, max_length=200)]
Short = Annotated[str, Field(max_length=200)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class UpsertContact(_Payload):
    email: Annotated[str, Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")] | None = None
    phone: Annotated[str, Field(max_length=64)] | None = None
    crm_id: Short | None = None
    first_name: Short | None = None
    last_name: Short | None = None
    company: Annotated[str, Field(max_length=300)] | None = None
    title: Annotated[str, Field(max_length=300)] | None = None
    properties: dict[str, str] = Field(default_factory=dict)


class SetOwner(_Payload):
    owner_id: Id
    previous_owner_id: Short | None = None
    reason: str


Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class UpdateDealStage(_Payload):
    deal_id: Id
    stage: Id
    previous_stage: Short | None = None
    amount_minor: Annotated[int, Field(ge=0)] | None = None
    currency: Currency | None = None

    @model_validator(mode="after")
    def _amount_has_currency(self) -> UpdateDealStage:
        if self.amount_minor is not None and self.currency is None:
            raise ValueError("currency is required when amount_minor is set")
        return self


class CreateDeal(_Payload):
    deal_id: Id
    name: Annotated[str, Field(min_length=1, max_length=500)]
    stage: Id
    pipeline: Short | None = None
    amount_minor: Annotated[int, Field(ge=0)] | None = None
    currency: Currency | None = None

    @model_validator(mode="after")
    def _amount_has_currency(self) -> CreateDeal:
        if self.amount_minor is not None and self.currency is None:
            raise ValueError("currency is required when amount_minor is set")
        return self


class CreateTask(_Payload):
    task_id: Id
    title: Annotated[str, Field(min_length=1, max_length=500)]
    due_at: Instant
    owner_id: Short | None = None
    priority: Annotated[str, Field(max_length=50)] | None = None
    notes: str | None = None


class LogActivity(_Payload):
    activity_id: Id
    activity_type: Literal["call", "email", "meeting", "sms", "form", "payment"]
    occurred_at: Instant
    outcome: Short | None = None
    duration_seconds: Annotated[int, Field(ge=0)] | None = None
    summary: str | None = None
    direction: Literal["inbound", "outbound"] | None = None
    status: Short | None = None
    handled_by: Short | None = None
    recording_url: str | None = None
    title: str | None = None


class AddNote(_Payload):
    note_id: Id
    body: Annotated[str, Field(min_length=1)]


Status = Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[a-z][a-z0-9_ -]*$")]


class UpsertJob(_Payload):
    job_id: Id
    job_type: Annotated[str, Field(min_length=1, max_length=50)]
    status: Status
    title: Annotated[str, Field(max_length=500)] | None = None
    service: Short | None = None
    address: Annotated[str, Field(max_length=1000)] | None = None
    amount_minor: Annotated[int, Field(ge=0)] | None = None
    currency: Currency | None = None
    scheduled_for: Instant | None = None
    completed_at: Instant | None = None
    technician: Short | None = None
    external_id: Short | None = None
    related_job_id: Short | None = None

    @model_validator(mode="after")
    def _amount_has_currency(self) -> UpsertJob:
        if self.amount_minor is not None and self.currency is None:
            raise ValueError("currency is required when amount_minor is set")
        return self


class MergeContacts(_Payload):
    retired_contact_id: Id
    identifier: Annotated[str, Field(max_length=500)] | None = None


CommandType = Literal[
    "UPSERT_CONTACT",
    "SET_OWNER",
    "UPDATE_DEAL_STAGE",
    "CREATE_DEAL",
    "CREATE_TASK",
    "LOG_ACTIVITY",
    "ADD_NOTE",
    "MERGE_CONTACTS",
    "UPSERT_JOB",
]
PAYLOADS: dict[str, type[_Payload]] = {
    "UPSERT_CONTACT": UpsertContact,
    "SET_OWNER": SetOwner,
    "UPDATE_DEAL_STAGE": UpdateDealStage,
    "CREATE_DEAL": CreateDeal,
    "CREATE_TASK": CreateTask,
    "LOG_ACTIVITY": LogActivity,
    "ADD_NOTE": AddNote,
    "MERGE_CONTACTS": MergeContacts,
    "UPSERT_JOB": UpsertJob,
}


class Command(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    command_id: Id
    command_type: CommandType
    contact_id: Id
    issued_at: Instant
    causation_event_id: Short | None = None
    payload: dict[str, Any]


def parse_command(record: Mapping[str, Any]) -> tuple[Command, _Payload]:
    """The command and its payload, or Rejected naming every field that is wrong."""
    key = record.get("command_id") or "(no command_id)"
    kind = record.get("command_type") or "command"
    try:
        command = Command.model_validate(record)
    except ValidationError as exc:
        raise Rejected(f"invalid {kind} {key}: {_problems(exc, '')}") from None
    try:
        payload = PAYLOADS[command.command_type].model_validate(command.payload)
    except ValidationError as exc:
        raise Rejected(f"invalid {kind} {key}: {_problems(exc, 'payload.')}") from None
    return command, payload


def _problems(exc: ValidationError, prefix: str) -> str:
    return "; ".join(
        f"{prefix}{'.'.join(map(str, e['loc'])) or '(all)'}: {e['msg']}" for e in exc.errors()
    )


class SqlCrmStore:
    """CRM commands into SQL tables. Constructing it brings the schema up to date."""

    name = "sql"
    in_order = True  # each batch is applied as its commands one by one (crm/phases.py)

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        max_batch: int = 500,
        migrate: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.url = url
        self.max_batch = max_batch
        self._clock = clock
        self.engine: Engine = create_sql_engine(url)
        if migrate:
            migrate_crm(self.engine)

    async def deliver(self, records: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        # A sync engine in a worker thread: psycopg 3 and sqlite3 both, one code path.
        return await asyncio.to_thread(self.deliver_sync, records)

    def deliver_sync(self, records: Sequence[Mapping[str, Any]]) -> list[Outcome]:
        parsed = [_parsed(record) for record in records]
        try:
            try:
                with write_transaction(self.engine) as connection:
                    return self._apply_batch(connection, parsed)
            except (IntegrityError, DataError) as exc:
                # One record the database refuses fails a whole statement: apply the batch
                # again record by record, so that only this one is rejected.
                answer = error_answer(exc)
                log.info("batch of %d refused (%s): one record at a time", len(parsed), answer)
                with write_transaction(self.engine) as connection:
                    return [self._apply_alone(connection, item) for item in parsed]
        except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
            raise Retryable("database unavailable or busy", error_answer(exc)) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Retryable("database connection lost", error_answer(exc)) from exc
            raise

    def _apply_alone(self, connection: Connection, item: _Parsed) -> Outcome:
        if isinstance(item, Rejected):
            return item
        command = item[0]
        try:
            # A SAVEPOINT: a record that fails takes only its own writes back with it.
            with connection.begin_nested():
                return self._apply_batch(connection, [item])[0]
        except (IntegrityError, DataError) as exc:
            return Rejected(
                f"{command.command_type} {command.command_id} refused by the database",
                error_answer(exc),
            )

    def _apply_batch(self, connection: Connection, parsed: Sequence[_Parsed]) -> list[Outcome]:
        """Apply the valid commands of ``parsed`` phase by phase, a few statements per
        table and phase; the outcome of each, in order."""
        outcomes: list[Outcome] = [p if isinstance(p, Rejected) else None for p in parsed]
        valid = [(n, *item) for n, item in enumerate(parsed) if not isinstance(item, Rejected)]
        writes = []
        for _, command, payload in valid:
            named = _record_of(payload)
            writes.append(
                Write(
                    command.command_id,
                    command.contact_id,
                    _RANK.get(type(payload), 0),
                    None if named is None else (named[0].name, named[1]),
                    payload.retired_contact_id if isinstance(payload, MergeContacts) else None,
                )
            )
        ids = {w.contact_id for w in writes} | {w.retired_id for w in writes if w.retired_id}
        for phase in cut(writes, _survivors(connection, ids)):
            members = [valid[n] for n in phase.members]
            if phase.merges:
                self._merge_all(connection, [(c, p) for _, c, p in members])
            else:
                self._apply_run(connection, self._steps(connection, members), outcomes)
        return outcomes

    def _steps(
        self, connection: Connection, commands: list[tuple[int, Command, _Payload]]
    ) -> list[_Step]:
        """A phase's commands, each for the contact its id resolves to now."""
        survivors = _survivors(connection, {c.contact_id for _, c, _ in commands})
        return [
            _Step(index, command, payload, survivors.get(command.contact_id, command.contact_id))
            for index, command, payload in commands
        ]

    def _merge_all(self, connection: Connection, merges: list[tuple[Command, _Payload]]) -> None:
        """A phase of merges (of distinct contacts): those not applied before, each
        between the contacts its ids resolve to now."""
        claimed = self._claim(connection, [command for command, _ in merges])
        chosen = [(c, p) for c, p in merges if c.command_id in claimed]
        named = {c.contact_id for c, _ in chosen}
        named |= {p.retired_contact_id for _, p in chosen if isinstance(p, MergeContacts)}
        survivors = _survivors(connection, named)
        pairs = []
        for command, payload in chosen:
            assert isinstance(payload, MergeContacts)
            survivor = survivors.get(command.contact_id, command.contact_id)
            retired = survivors.get(payload.retired_contact_id, payload.retired_contact_id)
            if retired != survivor:
                pairs.append(_Merge(survivor, retired, payload.identifier, command.issued_at))
        if len({c for m in pairs for c in (m.survivor, m.retired)}) == 2 * len(pairs):
            _merge(connection, pairs)
        else:  # a concurrent writer merged meanwhile: they now share contacts
            for pair in pairs:
                _merge(connection, [pair])

    def _apply_run(self, connection: Connection, run: list[_Step], outcomes: list[Outcome]) -> None:
        claimed = self._claim(connection, [s.command for s in run])
        steps = [s for s in run if s.command.command_id in claimed]  # the rest: redeliveries
        if not steps:
            return
        # The owner of every record a step names, then each step checked in batch order
        # against it (a record created earlier in the run counts).
        keys: dict[Table, set[str]] = {}
        for step in steps:
            if (owned := _record_of(step.payload)) is not None:
                keys.setdefault(owned[0], set()).add(owned[1])
        owners = {table: _owners(connection, table, found) for table, found in keys.items()}
        accepted: list[_Step] = []
        refused: list[str] = []
        for step in steps:
            if (owned := _record_of(step.payload)) is not None:
                table, key = owned
                if isinstance(step.payload, CreateDeal) and owners[table].get(key) is not None:
                    continue  # the deal exists: its create changes nothing, whoever's it is
                try:
                    _check_owner(step.command, table, key, owners[table].get(key), step.contact)
                except Rejected as rejected:
                    outcomes[step.index] = rejected
                    refused.append(step.command.command_id)
                    continue
                owners[table][key] = step.contact
            accepted.append(step)
        if refused:  # not applied: the fixed-up replay from the dead-letter topic still works
            connection.execute(
                delete(APPLIED_COMMANDS).where(APPLIED_COMMANDS.c.command_id.in_(refused))
            )
        _write(connection, accepted)

    def _claim(self, connection: Connection, commands: list[Command]) -> set[str]:
        """Record ``commands`` as applied; the ids of those that were not already."""
        rows = [
            {
                "command_id": c.command_id,
                "command_type": c.command_type,
                "contact_id": c.contact_id,
                "causation_event_id": c.causation_event_id,
                "issued_at": c.issued_at,
                "applied_at": self._clock(),
            }
            for c in commands
        ]
        if len(rows) == 1:
            # One (as one by one): a concurrent delivery of it is waited for, then skipped.
            stmt = _claim_one(connection.dialect.name)
            return set(connection.execute(stmt, rows).scalars())
        # Many: a lookup and a plain insert, far cheaper than an upsert RETURNING each row.
        # A command that a concurrent delivery claims meanwhile fails the insert, and the
        # batch is applied again one by one (deliver_sync), which then skips it.
        ids = [c.command_id for c in commands]
        query = select(APPLIED_COMMANDS.c.command_id).where(
            _among(connection, APPLIED_COMMANDS.c.command_id, ids)
        )
        done = set(connection.execute(query).scalars())
        fresh = [row for row, id_ in zip(rows, ids, strict=True) if id_ not in done]
        if fresh:
            connection.execute(APPLIED_COMMANDS.insert(), fresh)
        return set(ids) - done

    # Read side, for the CLI and the tests (blocking).

    def contact(self, contact_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(CONTACTS).where(CONTACTS.c.contact_id == contact_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def rows(self, table: str, contact_id: str | None = None) -> list[dict[str, Any]]:
        """Rows of one of TABLES, optionally of one contact, in primary key order."""
        t = TABLES[table]
        query = select(t).order_by(*t.primary_key.columns)
        if contact_id is not None:
            query = query.where(t.c.contact_id == contact_id)
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(query)]

    def counts(self) -> dict[str, int]:
        """Rows per table."""
        with self.engine.connect() as connection:
            return {
                name: int(connection.execute(select(func.count()).select_from(t)).scalar_one())
                for name, t in TABLES.items()
            }

    async def close(self) -> None:
        self.engine.dispose()


def open_store(url: str = DEFAULT_URL, **options: Any) -> SqlCrmStore:
    """The store at ``url``, its schema migrated to the current version."""
    return SqlCrmStore(url, migrate=True, **options)


# A command, or why it is not one.
_Parsed = tuple[Command, _Payload] | Rejected


def _parsed(record: Mapping[str, Any]) -> _Parsed:
    try:
        return parse_command(record)
    except Rejected as rejected:
        return rejected


@dataclass(frozen=True)
class _Step:
    """A command of a run: the ``index``-th of its batch, for ``contact`` (its survivor)."""

    index: int
    command: Command
    payload: _Payload
    contact: str


# The order in which a run writes each kind of command (_write). A run holds at most one
# command of a kind per contact, in this order, so every contact's commands take effect in
# their own order; different contacts' commands write different rows.
_RANK: dict[type[_Payload], int] = {
    UpsertContact: 0,
    SetOwner: 1,
    CreateDeal: 2,
    UpdateDealStage: 3,
    CreateTask: 4,
    LogActivity: 5,
    AddNote: 6,
    UpsertJob: 7,
}


def _write(connection: Connection, steps: list[_Step]) -> None:
    """The writes of a run's accepted commands: a statement (executemany) per table and
    kind, in _RANK order."""
    by_kind: dict[type[_Payload], list[_Step]] = {}
    made: dict[str, datetime] = {}  # contact -> when its first command would make it
    for step in steps:
        by_kind.setdefault(type(step.payload), []).append(step)
        # A deal found means its contact exists; an UPSERT makes its own.
        if not isinstance(step.payload, UpdateDealStage):
            made.setdefault(step.contact, step.command.issued_at)
    for step in by_kind.get(UpsertContact, []):
        made.pop(step.contact, None)
    _ensure_contacts(connection, made)
    if upserts := by_kind.get(UpsertContact):
        _upsert_contacts(connection, upserts)
    if owners := by_kind.get(SetOwner):
        _set_owners(connection, owners)
    if deals := by_kind.get(CreateDeal):
        _create_deals(connection, deals)
    if stages := by_kind.get(UpdateDealStage):
        _update_stages(connection, stages)
    for kind, table in ((CreateTask, TASKS), (LogActivity, ACTIVITIES), (AddNote, NOTES)):
        if rows := by_kind.get(kind):
            _upsert_rows(connection, table, rows)
    if jobs := by_kind.get(UpsertJob):
        _upsert_jobs(connection, jobs)


def _among(
    connection: Connection, column: Column[str], values: Iterable[str]
) -> ColumnElement[bool]:
    """``column IN values``. On PostgreSQL as ``= ANY`` of one array parameter: hundreds
    of parameters cost more to send and plan than the lookup itself."""
    if connection.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=postgresql.ARRAY(String)))
    return column.in_(list(values))


def _survivors(connection: Connection, contact_ids: set[str]) -> dict[str, str]:
    """The contact each of ``contact_ids`` that was merged away is now (in one hop)."""
    if not contact_ids:
        return {}
    query = select(CONTACT_ALIASES.c.contact_id, CONTACT_ALIASES.c.survivor_id).where(
        _among(connection, CONTACT_ALIASES.c.contact_id, contact_ids)
    )
    return {alias: survivor for alias, survivor in connection.execute(query)}


# The tables whose rows belong to a contact and follow it into a merge.
_OWNED = (DEALS, TASKS, ACTIVITIES, NOTES, OWNER_CHANGES, JOBS)
# What the survivor takes from the retired contact where it has nothing itself.
_FILLED = ("email", "phone", "crm_id", "first_name", "last_name", "company", "title", "owner_id")


@dataclass(frozen=True)
class _Merge:
    survivor: str
    retired: str
    identifier: str | None
    at: datetime


def _merge(connection: Connection, merges: Sequence[_Merge]) -> None:
    """MERGE_CONTACTS, for contacts all distinct: a statement per table for them all."""
    if not merges:
        return
    _ensure_contacts(connection, {m.survivor: m.at for m in merges})
    named = {m.survivor for m in merges} | {m.retired for m in merges}
    query = select(CONTACTS).where(_among(connection, CONTACTS.c.contact_id, named))
    rows = {row.contact_id: row._mapping for row in connection.execute(query.with_for_update())}
    survivor, retired = bindparam("b_survivor", type_=String), bindparam("b_retired", type_=String)
    moved = [m for m in merges if m.retired in rows]
    if moved:
        pairs = [{"b_survivor": m.survivor, "b_retired": m.retired} for m in moved]
        for table in _OWNED:
            connection.execute(
                update(table).where(table.c.contact_id == retired).values(contact_id=survivor),
                pairs,
            )
        gone = [m.retired for m in moved]
        connection.execute(CONTACTS.delete().where(_among(connection, CONTACTS.c.contact_id, gone)))
        united = []
        for m in moved:
            kept, left = rows[m.survivor], rows[m.retired]
            row = {
                f"b_{name}": kept[name] if kept[name] is not None else left[name]
                for name in _FILLED
            }
            row["b_properties"] = {**left["properties"], **kept["properties"]}
            united.append(row | {"b_survivor": m.survivor, "b_updated_at": m.at})
        values = {
            name: bindparam(f"b_{name}", type_=CONTACTS.c[name].type)
            for name in (*_FILLED, "properties", "updated_at")
        }
        connection.execute(
            update(CONTACTS).where(CONTACTS.c.contact_id == survivor).values(values), united
        )
    # Ids that led to the retired contact now lead to the survivor, in one hop.
    connection.execute(
        update(CONTACT_ALIASES)
        .where(CONTACT_ALIASES.c.survivor_id == retired)
        .values(survivor_id=survivor),
        [{"b_survivor": m.survivor, "b_retired": m.retired} for m in merges],
    )
    connection.execute(
        CONTACT_ALIASES.insert(),
        [
            {
                "contact_id": m.retired,
                "survivor_id": m.survivor,
                "identifier": m.identifier,
                "merged_at": m.at,
            }
            for m in merges
        ],
    )


def _ensure_contacts(connection: Connection, made: Mapping[str, datetime]) -> None:
    """A bare row for each contact of ``made`` that has none, made at the time given."""
    if not made:
        return
    rows = [
        {"contact_id": contact, "properties": {}, "created_at": at, "updated_at": at}
        for contact, at in made.items()
    ]
    connection.execute(_insert_new(connection.dialect.name, CONTACTS), rows)


# UPSERT_CONTACT's fields but properties, which are merged rather than replaced.
_CONTACT_FIELDS = [name for name in UpsertContact.model_fields if name != "properties"]


def _upsert_contacts(connection: Connection, steps: list[_Step]) -> None:
    connection.execute(_contact_upsert(connection.dialect.name), _rows(steps))


def _rows(steps: list[_Step]) -> list[dict[str, Any]]:
    """The row each step's payload describes, for its contact, as of its command."""
    return [
        {
            "contact_id": s.contact,
            **s.payload.model_dump(),
            "created_at": s.command.issued_at,
            "updated_at": s.command.issued_at,
        }
        for s in steps
    ]


def _upsert_jobs(connection: Connection, steps: list[_Step]) -> None:
    """UPSERT_JOB: the job made, or changed by what the command knows (a status change
    carries no amount, a payment no technician: a null keeps the stored value)."""
    connection.execute(_job_upsert(connection.dialect.name), _rows(steps))


def _set_owners(connection: Connection, steps: list[_Step]) -> None:
    """SET_OWNER: the owner, the change with the owner the store had before, and the
    contact's unowned tasks. One step per contact (a run), so "before" is the stored one."""
    contacts = {s.contact for s in steps}
    query = (
        select(CONTACTS.c.contact_id, CONTACTS.c.owner_id)
        .where(_among(connection, CONTACTS.c.contact_id, contacts))
        .with_for_update()
    )
    previous = {contact_id: owner_id for contact_id, owner_id in connection.execute(query)}
    rows, changes = [], []
    for s in steps:
        assert isinstance(s.payload, SetOwner)
        at_ = s.command.issued_at
        rows.append({"b_contact": s.contact, "b_owner": s.payload.owner_id, "b_at": at_})
        changes.append(
            {
                "command_id": s.command.command_id,
                "contact_id": s.contact,
                "owner_id": s.payload.owner_id,
                "previous_owner_id": previous.get(s.contact),
                "reason": s.payload.reason,
                "changed_at": at_,
            }
        )
    contact, owner = bindparam("b_contact", type_=String), bindparam("b_owner", type_=String)
    at = bindparam("b_at", type_=UtcDateTime)
    connection.execute(
        update(CONTACTS)
        .where(CONTACTS.c.contact_id == contact)
        .values(owner_id=owner, updated_at=at),
        rows,
    )
    connection.execute(OWNER_CHANGES.insert(), changes)
    connection.execute(
        update(TASKS)
        .where(TASKS.c.contact_id == contact, TASKS.c.owner_id.is_(None))
        .values(owner_id=owner, updated_at=at),
        rows,
    )


def _create_deals(connection: Connection, steps: list[_Step]) -> None:
    """CREATE_DEAL: the deals that do not exist yet made; one that does is left as it is."""
    rows = [row | {"stage_changed_at": row["created_at"]} for row in _rows(steps)]
    connection.execute(_insert_new(connection.dialect.name, DEALS), rows)


def _update_stages(connection: Connection, steps: list[_Step]) -> None:
    """UPDATE_DEAL_STAGE on deals that exist (checked); an amount (a payment closing the
    deal) sets the amount and currency too."""
    deal, stage = bindparam("b_deal", type_=String), bindparam("b_stage", type_=String)
    at = bindparam("b_at", type_=UtcDateTime)
    changed: dict[str, Any] = {
        "stage": stage,
        "updated_at": at,
        "stage_changed_at": case((DEALS.c.stage != stage, at), else_=DEALS.c.stage_changed_at),
    }
    unpaid, paid = [], []
    for s in steps:
        assert isinstance(s.payload, UpdateDealStage)
        row = {"b_deal": s.payload.deal_id, "b_stage": s.payload.stage, "b_at": s.command.issued_at}
        if s.payload.amount_minor is None:
            unpaid.append(row)
        else:
            paid.append(
                row | {"b_amount": s.payload.amount_minor, "b_currency": s.payload.currency}
            )
    stmt = update(DEALS).where(DEALS.c.deal_id == deal)
    if unpaid:
        connection.execute(stmt.values(changed), unpaid)
    if paid:
        amount = {
            "amount_minor": bindparam("b_amount", type_=BigInteger),
            "currency": bindparam("b_currency", type_=String),
        }
        connection.execute(stmt.values(changed | amount), paid)


def _merge_json(
    dialect: str, stored: ColumnElement[Any], new: ColumnElement[Any]
) -> ColumnElement[Any]:
    """``stored`` with ``new``'s keys put over it (both JSON objects of strings)."""
    if dialect == "postgresql":
        return stored.op("||", return_type=json_type())(new)
    return func.json_patch(stored, new, type_=JSON)


# The record each kind of command names by its own id, and that id's field.
_RECORDS: dict[type[_Payload], tuple[Table, str]] = {
    CreateDeal: (DEALS, "deal_id"),
    UpdateDealStage: (DEALS, "deal_id"),
    CreateTask: (TASKS, "task_id"),
    LogActivity: (ACTIVITIES, "activity_id"),
    AddNote: (NOTES, "note_id"),
    UpsertJob: (JOBS, "job_id"),
}


def _record_of(payload: _Payload) -> tuple[Table, str] | None:
    """The table and id of the record ``payload`` writes, if it names one."""
    found = _RECORDS.get(type(payload))
    return None if found is None else (found[0], getattr(payload, found[1]))


def _owners(connection: Connection, table: Table, keys: set[str]) -> dict[str, str]:
    """The contact that each of ``keys``' rows belongs to (rows locked), where there is one."""
    pk = _key_column(table)
    query = select(pk, table.c.contact_id).where(_among(connection, pk, keys)).with_for_update()
    return {key: owner for key, owner in connection.execute(query)}


def _check_owner(
    command: Command, table: Table, key: str, owner: str | None, contact_id: str
) -> None:
    """Rejected when ``key``'s row is another contact's (a command never moves a record
    between them), or when the deal an UPDATE_DEAL_STAGE names does not exist."""
    pk = _key_column(table)
    if owner is None and command.command_type == "UPDATE_DEAL_STAGE":
        raise Rejected(
            f"UPDATE_DEAL_STAGE {command.command_id}: payload.deal_id: "
            f"deal {key!r} does not exist (no CREATE_DEAL applied)"
        )
    if owner is not None and owner != contact_id:
        raise Rejected(
            f"payload.{pk.name}: {pk.name.removesuffix('_id')} {key!r} belongs to "
            f"contact {owner!r}, not {contact_id!r}"
        )


def _key_column(table: Table) -> Column[Any]:
    return next(iter(table.primary_key.columns))


def _upsert_rows(connection: Connection, table: Table, steps: list[_Step]) -> None:
    """Insert or update, by its own id, the record each step's payload describes."""
    rows = _rows(steps)
    connection.execute(_record_upsert(connection.dialect.name, table, tuple(rows[0])), rows)


# The batch statements, built once per dialect: building one (its ON CONFLICT clause, its
# cache key) cost more than a batch of rows to bind.


@cache
def _claim_one(dialect: str) -> Executable:
    return (
        insert_or(dialect, APPLIED_COMMANDS)
        .on_conflict_do_nothing(index_elements=["command_id"])
        .returning(APPLIED_COMMANDS.c.command_id)
    )


@cache
def _insert_new(dialect: str, table: Table) -> Executable:
    """Rows inserted where their id is new; one that exists is left as it is."""
    return insert_or(dialect, table).on_conflict_do_nothing(
        index_elements=[_key_column(table).name]
    )


@cache
def _contact_upsert(dialect: str) -> Executable:
    stmt = insert_or(dialect, CONTACTS)
    changed = _kept_unless_given(stmt, CONTACTS, _CONTACT_FIELDS)
    changed["properties"] = _merge_json(dialect, CONTACTS.c.properties, stmt.excluded.properties)
    changed["updated_at"] = stmt.excluded.updated_at
    return stmt.on_conflict_do_update(index_elements=["contact_id"], set_=changed)


# UPSERT_JOB's fields that a null leaves as they are stored (all but the id).
_JOB_FIELDS = [name for name in UpsertJob.model_fields if name != "job_id"]


@cache
def _job_upsert(dialect: str) -> Executable:
    stmt = insert_or(dialect, JOBS)
    changed = _kept_unless_given(stmt, JOBS, _JOB_FIELDS)
    changed["updated_at"] = stmt.excluded.updated_at
    return stmt.on_conflict_do_update(index_elements=["job_id"], set_=changed)


def _kept_unless_given(stmt: Upsert, table: Table, names: list[str]) -> dict[str, Any]:
    """An update's SET for ``names``: the command's value, or the stored one where the
    command has none."""
    return {name: func.coalesce(stmt.excluded[name], table.c[name]) for name in names}


@cache
def _record_upsert(dialect: str, table: Table, columns: tuple[str, ...]) -> Executable:
    """A record's row (of ``columns``) inserted, or updated by its own id: all but its
    contact and its creation time."""
    stmt = insert_or(dialect, table)
    key = _key_column(table).name
    kept = {key, "contact_id", "created_at"}  # never changed by an update
    changed = {name: stmt.excluded[name] for name in columns if name not in kept}
    return stmt.on_conflict_do_update(index_elements=[key], set_=changed)
