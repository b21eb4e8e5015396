"""The CRM store's schema, as versioned migrations (component ``crm``) that the shared
runner (connectors.sinks.migrations) applies."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.engine import Connection

from connectors.sinks.database import UtcDateTime, json_type
from connectors.sinks.migrations import Migration, migrate

# Each migration declares the tables as they were at its version, so that
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
