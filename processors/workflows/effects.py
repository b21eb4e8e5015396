"""What one call into the workflow engine decides, in order: audit entries, messages,
CRM commands, and the outcome that carries them with the contact's new book and state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from processors.state import ContactState
from processors.workflows.runbook import RunBook

SuppressedBecause = Literal[
    "trigger_too_old",
    "already_in",
    "reentry",
    "group",
    "entry_filter",
    "consent",
    "frequency_cap",
    "backwards",
    "no_recipient",
]


@dataclass(frozen=True)
class Audit:
    workflow: str
    decision: str  # workflow_entered, workflow_step, workflow_branch, workflow_exited, ...
    reason: str
    inputs: dict[str, Any]
    audit_id: str
    cause: str
    suppressed: SuppressedBecause | None = None


@dataclass(frozen=True)
class Message:
    """A notification: to the contact (a ``send``) or to a person (a ``notify``)."""

    notification_id: str
    channel: str
    recipient: str
    template: str
    subject: str | None
    context: dict[str, str]
    cause: str
    to_contact: bool


@dataclass(frozen=True)
class Upsert:
    command_id: str
    properties: dict[str, str]
    cause: str


@dataclass(frozen=True)
class Task:
    task_id: str
    title: str
    due_at: datetime
    priority: str | None
    notes: str | None
    cause: str
    job_type: str | None = None  # a job record of this type is scheduled beside it
    related_job_id: str | None = None  # the trigger's job, which the new one follows


@dataclass(frozen=True)
class DealStage:
    command_id: str
    deal_id: str
    stage: str
    previous_stage: str
    cause: str


Effect = Audit | Message | Upsert | Task | DealStage


@dataclass
class Outcome:
    book: RunBook
    state: ContactState
    effects: list[Effect] = field(default_factory=list)
    changed: bool = False  # the book or the state is not what it was
