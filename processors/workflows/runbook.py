"""A contact's workflow runs as the ``workflow-runs`` table keeps them: each run's place
(workflow, version, step), its wait, and the contact's history and recent sends.

A run's waits (a duration, a time of day, the timeout of a wait for events, the end of
quiet hours) are durable timers: ``waiting_until`` and ``seq`` are the timer's due time
and level, and a due notice that no longer matches them is ignored."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from processors.state import PlainModel

TIMER_PREFIX = "workflow/"  # a workflow wait's timer id: workflow/<name> (SLA ids have no /)


def timer_key(workflow: str) -> str:
    return TIMER_PREFIX + workflow


class Run(BaseModel):
    """A contact's run through one workflow. ``seq`` counts the steps taken: the level of
    the run's timer, so a due notice for an earlier wait is recognised as stale."""

    workflow: str
    version: int
    run_id: str
    step: str
    seq: int = 0
    entered_at: datetime
    cause: str  # the event that started it
    waiting_until: datetime | None = None
    # When the run began to wait at its step (a wait, or a send held for quiet hours):
    # its time in the step when it moves on (journey KPIs).
    since: datetime | None = None
    # The triggering event's scalar payload fields: branch conditions (`trigger:`) and
    # message templates read them.
    trigger: dict[str, str] = Field(default_factory=dict)


class History(BaseModel):
    """How a contact went through a workflow before: for its re-entry policy."""

    runs: int = 0
    last_exit: str | None = None
    exited_at: datetime | None = None


class RunBook(PlainModel):
    """A contact's workflow state (the value of the workflow table), and the partition it
    lives on, so a worker rebuilds its schedule of waits without hashing keys."""

    partition: int = -1
    runs: dict[str, Run] = Field(default_factory=dict)
    history: dict[str, History] = Field(default_factory=dict)
    sends: dict[str, list[datetime]] = Field(default_factory=dict)  # per channel, in the cap
