"""The SQL CRM store: CRM commands applied to tables in SQLite (the embedded default) or
PostgreSQL (production and the tests), as a Destination of the delivery runtime.

Each command is applied together with its ``applied_commands`` row (keyed by
``command_id``) in one transaction, so it is applied exactly once: a command found there
already is a no-op, which makes a redelivery after a crash harmless (invariant 2). A
deliver call is one transaction for throughput; each record runs in a SAVEPOINT, so a
rejected record leaves its batch-mates applied.

What each command does:

- UPSERT_CONTACT inserts or updates the contact. A null field leaves the stored value as it
  is (a command says what it knows, not what it does not); ``properties`` are merged in.
- SET_OWNER sets the contact's owner and records the change in ``owner_changes``, with
  the owner the store had before (the command's ``previous_owner_id`` is only the
  processor's view of it).
- SET_OWNER also gives the contact's unowned tasks to the new owner: a task made before
  the lead was routed (a call's next step) is the owner's as soon as there is one.
- CREATE_DEAL, CREATE_TASK, LOG_ACTIVITY, ADD_NOTE upsert by their own id. A record that
  belongs to another contact is rejected rather than moved.
- UPDATE_DEAL_STAGE with an amount (a payment closing the deal) sets the deal's amount too.
- MERGE_CONTACTS moves the retired contact's deals, tasks, activities, notes and owner
  changes onto the survivor, fills the survivor's blank fields from it, deletes its row and
  keeps its id in ``contact_aliases``. Every command is applied to the contact its id
  resolves to there, so a command issued for the retired contact before the merge (on
  another partition, so possibly delivered after it) lands on the survivor.
- UPDATE_DEAL_STAGE on a deal that does not exist is rejected: a deal made from a stage
  alone would show a sales team a nameless deal with no amount in their pipeline. Its
  CREATE_DEAL comes earlier in the same contact's order, so a missing deal is an upstream
  fault that belongs in the dead-letter topic, where it can be replayed once fixed.
- Every command but UPDATE_DEAL_STAGE makes a bare contact row if the contact has none
  yet, so a task or an owner is never lost to a missing UPSERT_CONTACT; that UPSERT fills
  it in later.

Errors: a payload that fails validation, and an integrity or data error of one record,
answer Rejected naming the field; a lost connection, a lock timeout, a serialization
failure or a deadlock fail the whole call as Retryable (the transaction is rolled back,
so nothing of it was applied). Anything else is a bug and is raised as it is."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
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
    case,
    func,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.sql.elements import ColumnElement

from connectors.sinks.crm.migrations import (
    UtcDateTime,
    create_sql_engine,
    error_answer,
    insert_or,
    json_type,
    migrate_crm,
    write_transaction,
)
from connectors.sinks.delivery import Outcome, Rejected, Retryable

DEFAULT_URL = "sqlite:///.run/crm.db"  # = Settings.crm_database_url

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
        outcomes: list[Outcome] = []
        try:
            with write_transaction(self.engine) as connection:
                for record in records:
                    outcomes.append(self._apply_one(connection, record))
        except (OperationalError, InterfaceError, PoolTimeoutError) as exc:
            raise Retryable("database unavailable or busy", error_answer(exc)) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Retryable("database connection lost", error_answer(exc)) from exc
            raise
        return outcomes

    def _apply_one(self, connection: Connection, record: Mapping[str, Any]) -> Outcome:
        try:
            command, payload = parse_command(record)
        except Rejected as rejected:
            return rejected
        try:
            # A SAVEPOINT: a record that fails takes only its own writes back with it.
            with connection.begin_nested():
                self._apply(connection, command, payload)
        except Rejected as rejected:
            return rejected
        except (IntegrityError, DataError) as exc:
            return Rejected(
                f"{command.command_type} {command.command_id} refused by the database",
                error_answer(exc),
            )
        return None

    def _apply(self, connection: Connection, command: Command, payload: _Payload) -> None:
        first = insert_or(connection, APPLIED_COMMANDS).values(
            command_id=command.command_id,
            command_type=command.command_type,
            contact_id=command.contact_id,
            causation_event_id=command.causation_event_id,
            issued_at=command.issued_at,
            applied_at=self._clock(),
        )
        claimed = connection.execute(
            first.on_conflict_do_nothing(index_elements=["command_id"]).returning(
                APPLIED_COMMANDS.c.command_id
            )
        ).first()
        if claimed is None:
            return  # applied before: a redelivery changes nothing
        at = command.issued_at
        contact = _survivor(connection, command.contact_id)
        match payload:
            case UpsertContact():
                _upsert_contact(connection, contact, payload, at)
            case SetOwner():
                _ensure_contact(connection, contact, at)
                previous = connection.execute(
                    select(CONTACTS.c.owner_id)
                    .where(CONTACTS.c.contact_id == contact)
                    .with_for_update()
                ).scalar_one()
                connection.execute(
                    update(CONTACTS)
                    .where(CONTACTS.c.contact_id == contact)
                    .values(owner_id=payload.owner_id, updated_at=at)
                )
                connection.execute(
                    OWNER_CHANGES.insert().values(
                        command_id=command.command_id,
                        contact_id=contact,
                        owner_id=payload.owner_id,
                        previous_owner_id=previous,
                        reason=payload.reason,
                        changed_at=at,
                    )
                )
                connection.execute(
                    update(TASKS)
                    .where(TASKS.c.contact_id == contact, TASKS.c.owner_id.is_(None))
                    .values(owner_id=payload.owner_id, updated_at=at)
                )
            case UpdateDealStage():
                current = _owned_by(connection, DEALS, payload.deal_id, contact)
                if current is None:
                    raise Rejected(
                        f"UPDATE_DEAL_STAGE {command.command_id}: payload.deal_id: "
                        f"deal {payload.deal_id!r} does not exist (no CREATE_DEAL applied)"
                    )
                paid = (
                    {"amount_minor": payload.amount_minor, "currency": payload.currency}
                    if payload.amount_minor is not None
                    else {}
                )
                connection.execute(
                    update(DEALS)
                    .where(DEALS.c.deal_id == payload.deal_id)
                    .values(
                        stage=payload.stage,
                        updated_at=at,
                        stage_changed_at=case(
                            (DEALS.c.stage != payload.stage, at), else_=DEALS.c.stage_changed_at
                        ),
                        **paid,
                    )
                )
            case CreateDeal():
                _ensure_contact(connection, contact, at)
                _owned_by(connection, DEALS, payload.deal_id, contact)
                values = payload.model_dump()
                stmt = insert_or(connection, DEALS).values(
                    contact_id=contact,
                    **values,
                    created_at=at,
                    updated_at=at,
                    stage_changed_at=at,
                )
                changed: dict[str, Any] = {
                    k: stmt.excluded[k] for k in [*values, "updated_at"] if k != "deal_id"
                }
                changed["stage_changed_at"] = case(
                    (DEALS.c.stage != stmt.excluded.stage, stmt.excluded.stage_changed_at),
                    else_=DEALS.c.stage_changed_at,
                )
                connection.execute(
                    stmt.on_conflict_do_update(index_elements=["deal_id"], set_=changed)
                )
            case CreateTask():
                _ensure_contact(connection, contact, at)
                _owned_by(connection, TASKS, payload.task_id, contact)
                _upsert_row(connection, TASKS, "task_id", contact, payload.model_dump(), at)
            case LogActivity():
                _ensure_contact(connection, contact, at)
                _owned_by(connection, ACTIVITIES, payload.activity_id, contact)
                values = payload.model_dump()
                _upsert_row(connection, ACTIVITIES, "activity_id", contact, values, at)
            case AddNote():
                _ensure_contact(connection, contact, at)
                _owned_by(connection, NOTES, payload.note_id, contact)
                _upsert_row(connection, NOTES, "note_id", contact, payload.model_dump(), at)
            case MergeContacts():
                retired = _survivor(connection, payload.retired_contact_id)
                if retired != contact:
                    _merge(connection, contact, retired, payload.identifier, at)
            case _:  # pragma: no cover - PAYLOADS covers every command type
                raise AssertionError(type(payload))

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


def _survivor(connection: Connection, contact_id: str) -> str:
    """The contact that ``contact_id`` is now: itself, or the one it was merged into."""
    survivor = connection.execute(
        select(CONTACT_ALIASES.c.survivor_id).where(CONTACT_ALIASES.c.contact_id == contact_id)
    ).scalar_one_or_none()
    return survivor or contact_id


# The tables whose rows belong to a contact and follow it into a merge.
_OWNED = (DEALS, TASKS, ACTIVITIES, NOTES, OWNER_CHANGES)
# What the survivor takes from the retired contact where it has nothing itself.
_FILLED = ("email", "phone", "crm_id", "first_name", "last_name", "company", "title", "owner_id")


def _merge(
    connection: Connection, survivor: str, retired: str, identifier: str | None, at: datetime
) -> None:
    _ensure_contact(connection, survivor, at)
    gone = connection.execute(
        select(CONTACTS).where(CONTACTS.c.contact_id == retired).with_for_update()
    ).first()
    if gone is not None:
        kept = connection.execute(
            select(CONTACTS).where(CONTACTS.c.contact_id == survivor).with_for_update()
        ).one()
        filled: dict[str, Any] = {
            name: gone._mapping[name]
            for name in _FILLED
            if kept._mapping[name] is None and gone._mapping[name] is not None
        }
        properties = {**gone._mapping["properties"], **kept._mapping["properties"]}
        for table in _OWNED:
            connection.execute(
                update(table).where(table.c.contact_id == retired).values(contact_id=survivor)
            )
        connection.execute(CONTACTS.delete().where(CONTACTS.c.contact_id == retired))
        connection.execute(
            update(CONTACTS)
            .where(CONTACTS.c.contact_id == survivor)
            .values(**filled, properties=properties, updated_at=at)
        )
    # Ids that led to the retired contact now lead to the survivor, in one hop.
    connection.execute(
        update(CONTACT_ALIASES)
        .where(CONTACT_ALIASES.c.survivor_id == retired)
        .values(survivor_id=survivor)
    )
    connection.execute(
        CONTACT_ALIASES.insert().values(
            contact_id=retired, survivor_id=survivor, identifier=identifier, merged_at=at
        )
    )


def _ensure_contact(connection: Connection, contact_id: str, at: datetime) -> None:
    stmt = insert_or(connection, CONTACTS).values(
        contact_id=contact_id, properties={}, created_at=at, updated_at=at
    )
    connection.execute(stmt.on_conflict_do_nothing(index_elements=["contact_id"]))


def _upsert_contact(
    connection: Connection, contact_id: str, payload: UpsertContact, at: datetime
) -> None:
    fields = payload.model_dump(exclude={"properties"})
    stmt = insert_or(connection, CONTACTS).values(
        contact_id=contact_id, **fields, properties=payload.properties, created_at=at, updated_at=at
    )
    changed: dict[str, Any] = {
        name: func.coalesce(stmt.excluded[name], CONTACTS.c[name]) for name in fields
    }
    changed["properties"] = _merge_json(connection, CONTACTS.c.properties, stmt.excluded.properties)
    changed["updated_at"] = stmt.excluded.updated_at
    connection.execute(stmt.on_conflict_do_update(index_elements=["contact_id"], set_=changed))


def _merge_json(
    connection: Connection, stored: ColumnElement[Any], new: ColumnElement[Any]
) -> ColumnElement[Any]:
    """``stored`` with ``new``'s keys put over it (both JSON objects of strings)."""
    if connection.dialect.name == "postgresql":
        return stored.op("||", return_type=json_type())(new)
    return func.json_patch(stored, new, type_=JSON)


def _owned_by(connection: Connection, table: Table, key: str, contact_id: str) -> str | None:
    """The contact that ``key``'s row belongs to (None when there is no such row), or
    Rejected when it is another contact's: a command never moves a record between them."""
    pk = next(iter(table.primary_key.columns))
    owner = connection.execute(
        select(table.c.contact_id).where(pk == key).with_for_update()
    ).scalar_one_or_none()
    if owner is not None and owner != contact_id:
        raise Rejected(
            f"payload.{pk.name}: {pk.name.removesuffix('_id')} {key!r} belongs to "
            f"contact {owner!r}, not {contact_id!r}"
        )
    return owner


def _upsert_row(
    connection: Connection,
    table: Table,
    key: str,
    contact_id: str,
    values: dict[str, Any],
    at: datetime,
) -> None:
    stmt = insert_or(connection, table).values(
        contact_id=contact_id, **values, created_at=at, updated_at=at
    )
    changed = {k: stmt.excluded[k] for k in [*values, "updated_at"] if k != key}
    connection.execute(stmt.on_conflict_do_update(index_elements=[key], set_=changed))
