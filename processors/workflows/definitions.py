"""A workflow definition (``processors/rules/workflows/*.yaml``): the whole path of a
business event, not an action after a trigger. Each one declares:

- ``trigger``: the event that may start it (an event type and payload conditions), or
  a list of them;
- ``entry``: who may enter, judged on the contact's current state (conditions.py), and
  ``reentry``: whether a contact who already went through it may enter again (never,
  after_exit, or a duration after the last exit);
- ``steps``: timed actions, waits and branches (steps.py);
- ``exits``: the known state every path ends in (a tag, a stage, a notification, a
  hand-off into another workflow), and a ``goal`` that ends the run early when met;
- ``purpose`` and ``owner``: its documentation;
- collisions: ``group`` and ``priority`` (one workflow of a group at a time per contact),
  and versioning: ``on_new_version`` (runs ``finish`` on the version they started on, or
  ``migrate`` at their next step, through ``migrate_steps`` for renamed steps).

A definition that does not hang together (an unknown or unreachable step, a path without
an exit, a loop) is refused when it loads (lint.py)."""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from processors.durations import parse_duration
from processors.matching import EventMatch
from processors.workflows import lint
from processors.workflows.conditions import Condition
from processors.workflows.steps import NAME, Notify, Step
from streams.rules import RuleModel

# Exit states the engine itself may end a run in; a workflow may declare them to attach
# actions (a tag, a notification), and need not otherwise.
PREEMPTED = "preempted"  # a higher-priority workflow of its group took the contact
MERGED = "merged"  # the contact merged into one already in this workflow
VERSION_REMOVED = "version_removed"  # its version is gone and its step has no successor
BUILTIN_EXITS = (PREEMPTED, MERGED, VERSION_REMOVED)


class ExitState(RuleModel):
    """The known state a run leaves behind: at least one of these."""

    description: str | None = None
    tag: str | None = None
    lifecycle_stage: str | None = None
    deal_stage: str | None = None
    notify: Notify | None = None
    hand_off: str | None = Field(None, description="The workflow the contact enters next.")

    @model_validator(mode="before")
    @classmethod
    def _not_blank(cls, data: Any) -> Any:
        if data is None:  # `quiet:` with nothing after it
            raise ValueError(
                "an exit leaves a known state: give a tag, lifecycle_stage, deal_stage, "
                "notify or hand_off"
            )
        return data

    @model_validator(mode="after")
    def _leaves_state(self) -> ExitState:
        actions = (self.tag, self.lifecycle_stage, self.deal_stage, self.notify, self.hand_off)
        if all(a is None for a in actions):
            raise ValueError(
                "an exit leaves a known state: give a tag, lifecycle_stage, deal_stage, "
                "notify or hand_off"
            )
        return self


class Goal(RuleModel):
    """What the workflow is for: when one of ``events`` arrives or ``state`` holds, the
    run ends early in ``exit``."""

    events: list[EventMatch] = Field(default_factory=list)
    state: Condition | None = None
    exit: str

    @model_validator(mode="after")
    def _something(self) -> Goal:
        if not self.events and self.state is None:
            raise ValueError("a goal names events, a state, or both")
        return self


def _reentry(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(
            f"{value!r}: reentry is never, after_exit, or a duration after the last exit (like 30d)"
        )
    if value not in ("never", "after_exit"):
        try:
            parse_duration(value)
        except ValueError:
            raise ValueError(
                f"{value!r}: reentry is never, after_exit, or a duration after the last exit "
                "(like 30d)"
            ) from None
    return value


class Workflow(RuleModel):
    name: str = Field(pattern=NAME)
    version: int = Field(ge=1)
    purpose: str = Field(min_length=10, description="Why it exists, for the people who run it.")
    owner: str = Field(min_length=1, description="Who answers for it.")
    trigger: list[EventMatch] = Field(
        min_length=1, description="The event that may start it, or a list: any of them."
    )
    entry: Condition
    reentry: str = Field("never", description="never, after_exit, or a duration (30d).")
    group: str | None = Field(None, pattern=NAME)
    priority: int = 0
    on_new_version: Literal["finish", "migrate"] = "finish"
    migrate_steps: dict[str, str] = Field(default_factory=dict)
    goal: Goal
    steps: list[Step] = Field(min_length=1)
    exits: dict[str, ExitState] = Field(min_length=1)

    _reentry = field_validator("reentry", mode="before")(_reentry)

    @field_validator("trigger", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    def triggered_by(self, event: dict[str, Any]) -> bool:
        return any(match.matches(event) for match in self.trigger)

    @model_validator(mode="before")
    @classmethod
    def _not_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and True in data:  # YAML 1.1 reads the key `on` as true
            problem = "`on:` reads as true in YAML: write `trigger:`"
            raise ValidationError.from_exception_data(
                cls.__name__, [lint.error_detail(("on",), problem, None)]
            )
        return data

    @property
    def reentry_after(self) -> timedelta | None:
        """How long after an exit the contact may enter again; None: never, 0: at once."""
        if self.reentry == "never":
            return None
        if self.reentry == "after_exit":
            return timedelta(0)
        return parse_duration(self.reentry)

    def step(self, step_id: str) -> Step | None:
        return self._by_id.get(step_id)

    @cached_property
    def _by_id(self) -> dict[str, Step]:
        return {s.id: s for s in self.steps}

    @cached_property
    def heard(self) -> frozenset[str]:
        """The event types its goal or any of its steps' waits names: the only ones that
        may move a run through it, besides its goal's state."""
        matches = [*self.goal.events, *(m for s in self.steps for m in s.wait_for or [])]
        return frozenset(m.event for m in matches)

    def successor(self, step_id: str) -> str | None:
        """The step after ``step_id`` when it does not choose: ``next``, else the next in
        the file (None past the last: lint refuses that)."""
        steps = self.steps
        index = next(i for i, s in enumerate(steps) if s.id == step_id)
        explicit = steps[index].next
        if explicit is not None:
            return explicit
        return steps[index + 1].id if index + 1 < len(steps) else None

    def exit_names(self) -> set[str]:
        return set(self.exits) | set(BUILTIN_EXITS)

    def conditions(self) -> list[tuple[list[Any], Condition]]:
        """The entry filter and every branch case, with their locations."""
        found: list[tuple[list[Any], Condition]] = [(["entry"], self.entry)]
        for i, step in enumerate(self.steps):
            for j, case in enumerate(step.branch or []):
                found.append((["steps", i, "branch", j, "when"], case.when))
        if self.goal.state is not None:
            found.append((["goal", "state"], self.goal.state))
        return found

    @model_validator(mode="after")
    def _lint(self) -> Workflow:
        lint.check_workflow(self)
        return self
