"""Workflow definitions (``processors/rules/workflows/*.yaml``) and their lint.

A workflow is the whole path of a business event, not an action after a trigger. Each
one declares:

- ``trigger``: the event that may start it (an event type and payload conditions), or
  a list of them;
- ``entry``: who may enter, judged on the contact's current state (stage, score, owner,
  consent, tags, other workflows), and ``reentry``: whether a contact who already went
  through it may enter again (never, after_exit, or a duration after the last exit);
- ``steps``: timed actions (send to the contact, notify a person, create a CRM task,
  update a field or stage), waits (a duration, until a time of day in the contact's
  time zone, or for events with a timeout) and branches (on any state condition);
- ``exits``: the known state every path ends in (a tag, a stage, a notification, a
  hand-off into another workflow), and a ``goal`` that ends the run early when met;
- ``purpose`` and ``owner``: its documentation;
- collisions: ``group`` and ``priority`` (one workflow of a group at a time per contact),
  and versioning: ``on_new_version`` (runs ``finish`` on the version they started on, or
  ``migrate`` at their next step, through ``migrate_steps`` for renamed steps).

``load_library(dir)`` loads every workflow file in a directory with the shared policies
(``policies.yaml``: frequency caps, quiet hours, lifecycle stage order) and lints the
set: an unknown or unreachable step, a path that ends without an exit state, a loop, a
hand-off to an unknown workflow or a hand-off cycle is refused with FILE:LINE and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from processors.area import facts as area_facts
from processors.durations import Duration, format_duration, parse_duration
from processors.hours import WEEKDAYS, Weekday, known_zone
from processors.matching import EventMatch, payload_matches
from processors.state import ContactState
from streams import rules as rule_files
from streams.rules import RuleFileError, RuleModel

DEFAULT_LIBRARY = Path(__file__).parent / "rules" / "workflows"
POLICIES_FILE = "policies.yaml"

_NAME = r"^[a-z0-9][a-z0-9-]*$"  # kebab-case: names label metrics and key timers
ContactChannel = Literal["EMAIL", "SMS"]
PersonChannel = Literal["EMAIL", "SLACK", "SMS", "WEBHOOK", "LOG"]

# Exit states the engine itself may end a run in; a workflow may declare them to attach
# actions (a tag, a notification), and need not otherwise.
PREEMPTED = "preempted"  # a higher-priority workflow of its group took the contact
MERGED = "merged"  # the contact merged into one already in this workflow
VERSION_REMOVED = "version_removed"  # its version is gone and its step has no successor
BUILTIN_EXITS = (PREEMPTED, MERGED, VERSION_REMOVED)


# ---- conditions on the contact's state --------------------------------------------------


class Condition(RuleModel):
    """Every condition given holds. Used as the entry filter, in branches and as a goal.
    ``in_workflow``/``not_in_workflow`` look at the contact's other running workflows."""

    everyone: bool | None = Field(
        None, description="An entry filter that lets every contact in says so explicitly."
    )
    lifecycle_stage_in: list[str] | None = None
    lifecycle_stage_not_in: list[str] | None = None
    band_in: list[str] | None = None
    min_score: float | None = None
    max_score: float | None = None
    has_owner: bool | None = None
    has_open_deal: bool | None = None
    deal_stage_in: list[str] | None = None
    can_receive: ContactChannel | None = Field(
        None, description="The contact has an address on the channel and consents to it."
    )
    has_tag: list[str] | None = None
    lacks_tag: list[str] | None = None
    in_workflow: list[str] | None = None
    not_in_workflow: list[str] | None = None
    has_run: list[str] | None = Field(None, description="Went through any of these before.")
    has_not_run: list[str] | None = Field(None, description="Never entered any of these.")
    profile: dict[str, str | list[str]] | None = None
    service_area_in: list[Literal["in", "out", "unknown"]] | None = Field(
        None, description="Where the contact is against the service areas (processors/area.py)."
    )
    trigger: dict[str, str | list[str]] | None = Field(
        None, description="Conditions on the payload of the event that started the run."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Condition:
        given = self.model_dump(exclude_none=True)
        if not given:
            raise ValueError("an empty condition: give one, or `everyone: true`")
        if self.everyone is False:
            raise ValueError("`everyone: false` lets nobody in: remove the workflow instead")
        if self.everyone and len(given) > 1:
            raise ValueError("`everyone: true` with other conditions: remove one or the other")
        return self

    def workflows(self) -> list[str]:
        named = (self.in_workflow, self.not_in_workflow, self.has_run, self.has_not_run)
        return [name for names in named for name in names or []]

    def evaluate(
        self,
        state: ContactState,
        running: set[str],
        trigger: dict[str, str],
        ran: set[str] | None = None,
    ) -> tuple[bool, dict[str, str]]:
        """Whether it holds, and the value each condition saw (for the audit entry).
        ``running``: the contact's workflows now; ``ran``: those it ever entered."""
        seen: dict[str, str] = {}
        held = True

        def check(name: str, value: Any, ok: bool) -> None:
            nonlocal held
            seen[name] = str(value)
            held = held and ok

        deal_stages = sorted({d.stage for d in state.open_deals.values()})
        if self.everyone:
            check("everyone", True, True)
        if self.lifecycle_stage_in is not None:
            stage = state.lifecycle_stage
            check("lifecycle_stage", stage, stage in self.lifecycle_stage_in)
        if self.lifecycle_stage_not_in is not None:
            stage = state.lifecycle_stage
            check("lifecycle_stage", stage, stage not in self.lifecycle_stage_not_in)
        if self.band_in is not None:
            check("band", state.band, state.band in self.band_in)
        if self.min_score is not None:
            check("score", f"{state.score:g}", state.score >= self.min_score)
        if self.max_score is not None:
            check("score", f"{state.score:g}", state.score <= self.max_score)
        if self.has_owner is not None:
            check("owner", state.owner_id, (state.owner_id is not None) == self.has_owner)
        if self.has_open_deal is not None:
            check("open_deals", len(deal_stages), bool(deal_stages) == self.has_open_deal)
        if self.deal_stage_in is not None:
            check(
                "deal_stages",
                ",".join(deal_stages),
                any(s in self.deal_stage_in for s in deal_stages),
            )
        if self.can_receive is not None:
            address, problem = state.address(self.can_receive)
            check(f"can_receive.{self.can_receive}", problem or "yes", address is not None)
        if self.has_tag is not None:
            check("tags", ",".join(state.tags), all(t in state.tags for t in self.has_tag))
        if self.lacks_tag is not None:
            check("tags", ",".join(state.tags), not any(t in state.tags for t in self.lacks_tag))
        if self.in_workflow is not None:
            check(
                "workflows",
                ",".join(sorted(running)),
                any(w in running for w in self.in_workflow),
            )
        if self.not_in_workflow is not None:
            check(
                "workflows",
                ",".join(sorted(running)),
                not any(w in running for w in self.not_in_workflow),
            )
        entered = ran or set()
        if self.has_run is not None:
            shown = ",".join(sorted(entered))
            check("ran", shown, any(w in entered for w in self.has_run))
        if self.has_not_run is not None:
            shown = ",".join(sorted(entered))
            check("ran", shown, not any(w in entered for w in self.has_not_run))
        if self.profile is not None:
            for key in self.profile:
                seen[f"profile.{key}"] = str(state.profile.get(key))
            held = held and payload_matches(state.profile, self.profile)
        if self.service_area_in is not None:
            where = area_facts(state.area).get("service_area", "unknown")
            shown = where + (f" ({state.area.reason})" if state.area else "")
            check("service_area", shown, where in self.service_area_in)
        if self.trigger is not None:
            for key in self.trigger:
                seen[f"trigger.{key}"] = str(trigger.get(key))
            held = held and payload_matches(trigger, self.trigger)
        return held, seen


# ---- actions ------------------------------------------------------------------------------


class Send(RuleModel):
    """A message to the contact, if they consent, outside quiet hours, under the cap."""

    channel: ContactChannel
    template: str = Field(min_length=1)
    subject: str | None = None


class Notify(RuleModel):
    """A message to a person: the contact's ``owner`` or their ``manager`` (by e-mail),
    or an address on ``channel`` (a Slack webhook name, an e-mail, a phone)."""

    to: str = Field(min_length=1)
    channel: PersonChannel = "EMAIL"
    template: str = Field(min_length=1)

    @model_validator(mode="after")
    def _addressable(self) -> Notify:
        if self.to in ("owner", "manager") and self.channel != "EMAIL":
            raise ValueError(
                f"the {self.to} is reached by e-mail: use channel EMAIL, or give an address"
            )
        return self


class CreateTask(RuleModel):
    """A CRM task for the contact's owner."""

    title: str = Field(min_length=1)
    due_in: Duration
    priority: Literal["LOW", "MEDIUM", "HIGH"] | None = None
    notes: str | None = None
    # A job record of this type scheduled beside the task, due when it is (a follow-up
    # inspection is a job for the field team, not only a reminder for the owner).
    job: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]{0,49}$")


class Update(RuleModel):
    """CRM fields to set, and stages to move to (never backwards)."""

    properties: dict[str, str] = Field(default_factory=dict)
    lifecycle_stage: str | None = None
    deal_stage: str | None = None

    @model_validator(mode="after")
    def _something(self) -> Update:
        if not self.properties and self.lifecycle_stage is None and self.deal_stage is None:
            raise ValueError("give properties, lifecycle_stage or deal_stage")
        return self


class WaitUntil(RuleModel):
    """The next time the contact's clock shows ``time`` (on one of ``days``)."""

    time: time
    days: list[Weekday] | None = None

    @field_validator("time", mode="before")
    @classmethod
    def _wall_clock(cls, value: Any) -> Any:
        if not isinstance(value, str | time):  # YAML reads an unquoted 9:00 as 540
            raise ValueError(f'{value!r} is not a time of day: write it in quotes, like "09:00"')
        return value


class Listen(EventMatch):
    """An event a ``wait_for`` step waits for, and the step it leads to."""

    goto: str


class Branch(RuleModel):
    when: Condition
    goto: str


# ---- steps --------------------------------------------------------------------------------

StepKind = Literal[
    "send", "notify", "task", "update", "wait", "wait_until", "wait_for", "branch", "exit"
]
# The kinds of step a run can stay at; the others are taken at once.
WAITING_KINDS: tuple[StepKind, ...] = ("send", "wait", "wait_until", "wait_for")
ACTIONS: tuple[StepKind, ...] = (
    "send",
    "notify",
    "task",
    "update",
    "wait",
    "wait_until",
    "wait_for",
    "branch",
    "exit",
)


class Step(RuleModel):
    """One step, of exactly one kind. Steps run in file order unless one says ``next``;
    ``wait_for`` and ``branch`` choose their own next step, ``exit`` ends the run."""

    id: str = Field(pattern=_NAME)
    description: str | None = None
    send: Send | None = None
    notify: Notify | None = None
    task: CreateTask | None = None
    update: Update | None = None
    wait: Duration | None = None
    wait_until: WaitUntil | None = None
    wait_for: list[Listen] | None = None
    timeout: Duration | None = None
    on_timeout: str | None = None
    branch: list[Branch] | None = None
    otherwise: str | None = None
    exit: str | None = None
    next: str | None = None
    expected: Duration | None = Field(
        None,
        description="How long a run is expected to stay at this step; a run waiting longer "
        "is stalled (`switchboard journeys`). Default: the step's own wait (see expected_time).",
    )

    @property
    def kind(self) -> StepKind:
        return next(a for a in ACTIONS if getattr(self, a) is not None)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [a for a in ACTIONS if getattr(self, a) is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"a step does exactly one of {', '.join(ACTIONS)} (found: {found})")
        kind = kinds[0]
        if kind == "wait_for":
            if not self.wait_for:
                raise ValueError("wait_for lists the events to wait for")
            if self.timeout is None or self.on_timeout is None:
                raise ValueError(
                    "a wait_for needs `timeout` and `on_timeout` (add both: a contact who "
                    "never answers must still reach an exit)"
                )
        elif self.timeout is not None or self.on_timeout is not None:
            raise ValueError("timeout and on_timeout belong to a wait_for step")
        if kind == "branch":
            if not self.branch:
                raise ValueError("branch lists its cases")
            if self.otherwise is None:
                raise ValueError("a branch needs `otherwise`: the step when no case holds")
        elif self.otherwise is not None:
            raise ValueError("otherwise belongs to a branch step")
        if self.next is not None and kind in ("wait_for", "branch", "exit"):
            raise ValueError(
                f"an {kind} step chooses its own next step: remove next"
                if kind == "exit"
                else f"a {kind} step chooses its own next step: remove next"
            )
        if kind == "wait" and self.wait is not None and self.wait <= timedelta(0):
            raise ValueError("a wait must be longer than zero")
        if self.expected is not None:
            self._check_expected(kind, self.expected)
        return self

    def _check_expected(self, kind: StepKind, expected: timedelta) -> None:
        if kind not in WAITING_KINDS:
            raise ValueError(
                f"expected: a {kind} step is taken at once, so no run stays at it: expected "
                "belongs to wait, wait_until, wait_for and send steps (a send may wait out "
                "quiet hours); remove it"
            )
        if expected <= timedelta(0):
            raise ValueError("expected must be longer than zero (like 2d), or left out")
        if kind == "wait" and self.wait is not None and expected < self.wait:
            raise ValueError(
                f"expected {format_duration(expected)} is shorter than the step's wait "
                f"{format_duration(self.wait)}: every run would stall; give at least "
                f"{format_duration(self.wait)}, or leave expected out"
            )

    def targets(self) -> list[tuple[tuple[Any, ...], str]]:
        """The steps this one names, each with its location in the step."""
        found: list[tuple[tuple[Any, ...], str]] = []
        for i, listen in enumerate(self.wait_for or []):
            found.append((("wait_for", i, "goto"), listen.goto))
        if self.on_timeout is not None:
            found.append((("on_timeout",), self.on_timeout))
        for i, case in enumerate(self.branch or []):
            found.append((("branch", i, "goto"), case.goto))
        if self.otherwise is not None:
            found.append((("otherwise",), self.otherwise))
        if self.next is not None:
            found.append((("next",), self.next))
        return found


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
    name: str = Field(pattern=_NAME)
    version: int = Field(ge=1)
    purpose: str = Field(min_length=10, description="Why it exists, for the people who run it.")
    owner: str = Field(min_length=1, description="Who answers for it.")
    trigger: list[EventMatch] = Field(
        min_length=1, description="The event that may start it, or a list: any of them."
    )
    entry: Condition
    reentry: str = Field("never", description="never, after_exit, or a duration (30d).")
    group: str | None = Field(None, pattern=_NAME)
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
                cls.__name__, [_error(("on",), problem, None)]
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
        errors: list[tuple[tuple[Any, ...], str]] = []
        ids = [s.id for s in self.steps]
        for i, step_id in enumerate(ids):
            if step_id in ids[:i]:
                errors.append((("steps", i, "id"), f"step {step_id!r} is defined twice"))
        known = set(ids)
        exits = self.exit_names()
        for i, step in enumerate(self.steps):
            for loc, target in step.targets():
                if target not in known:
                    errors.append(
                        (
                            ("steps", i, *loc),
                            f"no step {target!r} (steps: {', '.join(ids)})",
                        )
                    )
            if step.exit is not None and step.exit not in exits:
                errors.append(
                    (
                        ("steps", i, "exit"),
                        f"no exit state {step.exit!r}: declare it under exits "
                        f"(declared: {', '.join(sorted(self.exits))})",
                    )
                )
            chooses = step.kind in ("exit", "wait_for", "branch")
            if not chooses and step.next is None and i + 1 == len(self.steps):
                errors.append(
                    (
                        ("steps", i),
                        f"step {step.id!r} is the last and ends no path: every path ends "
                        "in an exit step (add `- id: ...` with `exit: <state>` after it, "
                        "or give it `next:`)",
                    )
                )
        if self.goal.exit not in exits:
            errors.append(
                (
                    ("goal", "exit"),
                    f"no exit state {self.goal.exit!r}: declare it under exits",
                )
            )
        for old, new in self.migrate_steps.items():
            if new not in known:
                errors.append((("migrate_steps", old), f"no step {new!r} in this version"))
        if not errors:  # the graph is only meaningful with every target known
            errors += self._graph_errors()
        if errors:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [_error(loc, message, None) for loc, message in errors],
            )
        return self

    def _graph_errors(self) -> list[tuple[tuple[Any, ...], str]]:
        index = {s.id: i for i, s in enumerate(self.steps)}
        follows: dict[str, list[str]] = {}
        for step in self.steps:
            named = [target for _, target in step.targets()]
            if step.kind in ("exit", "wait_for", "branch"):
                follows[step.id] = named
            else:
                nxt = self.successor(step.id)
                follows[step.id] = [nxt] if nxt is not None else []
        errors: list[tuple[tuple[Any, ...], str]] = []
        reached: set[str] = set()
        pending = [self.steps[0].id]
        while pending:
            current = pending.pop()
            if current not in reached:
                reached.add(current)
                pending += follows[current]
        for step in self.steps:
            if step.id not in reached:
                errors.append(
                    (
                        ("steps", index[step.id], "id"),
                        f"step {step.id!r} is unreachable: no step leads to it (name it in a "
                        "goto, next or on_timeout, or remove it)",
                    )
                )
        loop = _find_cycle(follows, self.steps[0].id)
        if loop:
            errors.append(
                (
                    ("steps", index[loop[0]], "id"),
                    f"steps loop: {' -> '.join(loop)}: a run moves forward to an exit (point "
                    "the last of them at a later step or an exit)",
                )
            )
        return errors


def _find_cycle(follows: dict[str, list[str]], start: str) -> list[str]:
    """A loop reachable from ``start`` (its nodes, the first repeated at the end), or []."""
    on_path: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str]:
        if node in on_path:
            return [*on_path[on_path.index(node) :], node]
        if node in done:
            return []
        on_path.append(node)
        for nxt in follows.get(node, []):
            found = visit(nxt)
            if found:
                return found
        on_path.pop()
        done.add(node)
        return []

    return visit(start)


def _error(loc: tuple[Any, ...], message: str, value: Any) -> InitErrorDetails:
    return {
        "type": PydanticCustomError("workflow", "{problem}", {"problem": message}),
        "loc": loc,
        "input": value,
    }


# ---- shared policies ----------------------------------------------------------------------


class Cap(RuleModel):
    max: int = Field(ge=1)
    per: Duration


class QuietHours(RuleModel):
    """No message to a contact between ``start`` and ``end`` on their clock; a send that
    falls inside waits for the end."""

    start: time
    end: time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _wall_clock(cls, value: Any) -> Any:
        if not isinstance(value, str | time):
            raise ValueError(f'{value!r} is not a time of day: write it in quotes, like "21:00"')
        return value


def expected_time(step: Step, quiet: QuietHours | None) -> timedelta | None:
    """How long a run is expected to stay at ``step`` before it is stalled: the step's
    ``expected``, else what its own wait allows: a ``wait`` its duration, a ``wait_for`` its
    timeout, a ``wait_until`` the longest gap between the days it may end on (1d on any
    day), a ``send`` the quiet hours it may wait out; None for steps taken at once."""
    if step.expected is not None:
        return step.expected
    if step.wait is not None:
        return step.wait
    if step.wait_for is not None:
        return step.timeout
    if step.wait_until is not None:
        days = step.wait_until.days
        if not days:
            return timedelta(days=1)
        on = sorted({WEEKDAYS.index(d) for d in days})
        gaps = [(b - a) % 7 or 7 for a, b in zip(on, on[1:] + on[:1], strict=True)]
        return timedelta(days=max(gaps))
    if step.send is not None and quiet is not None:
        start = timedelta(hours=quiet.start.hour, minutes=quiet.start.minute)
        end = timedelta(hours=quiet.end.hour, minutes=quiet.end.minute)
        return (end - start) % timedelta(days=1) or None
    return None


# HubSpot's lifecycle stages, in order: a workflow never moves a contact back along them.
LIFECYCLE_STAGES = [
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
]


class Policies(RuleModel):
    """What every workflow shares (``policies.yaml`` beside the workflows)."""

    version: int = 1
    timezone: str = Field("UTC", description="The contact's time zone when their profile has none.")
    quiet_hours: QuietHours | None = None
    frequency_caps: dict[ContactChannel, Cap] = Field(default_factory=dict)
    lifecycle_stages: list[str] = Field(default_factory=lambda: list(LIFECYCLE_STAGES))
    max_trigger_age: Duration = Field(
        timedelta(days=1),
        description="An older triggering event (a backfill, a replay) enrols nobody.",
    )

    _zone = field_validator("timezone")(known_zone)


# ---- the library: every workflow and version, linted as a set ------------------------------


@dataclass(repr=False)
class Library:
    """Every loaded workflow by name and version; the highest version is the current one
    (new contacts enter it), older ones stay loaded for the runs still inside them."""

    policies: Policies
    versions: dict[str, dict[int, Workflow]] = field(default_factory=dict)
    files: dict[tuple[str, int], Path] = field(default_factory=dict)
    _expected: dict[tuple[str, int, str], timedelta | None] = field(
        default_factory=dict, init=False
    )

    def __repr__(self) -> str:
        loaded = ", ".join(f"{n} v{sorted(v)}" for n, v in sorted(self.versions.items()))
        return f"Library({loaded})"

    def current(self, name: str) -> Workflow | None:
        found = self.versions.get(name)
        return found[max(found)] if found else None

    def version(self, name: str, version: int) -> Workflow | None:
        return self.versions.get(name, {}).get(version)

    def of(self, run: Any) -> Workflow | None:
        """The definition a run (anything with workflow and version) is on, else the
        current version of its workflow."""
        return self.version(run.workflow, run.version) or self.current(run.workflow)

    def expected(self, workflow: Workflow, step_id: str) -> timedelta | None:
        """How long a run is expected to stay at a step of ``workflow`` (expected_time);
        asked at every wait, so kept."""
        key = (workflow.name, workflow.version, step_id)
        if key not in self._expected:
            step = workflow.step(step_id)
            quiet = self.policies.quiet_hours
            self._expected[key] = None if step is None else expected_time(step, quiet)
        return self._expected[key]

    def workflows(self) -> list[Workflow]:
        """The current version of each workflow, highest priority first, then by name."""
        current = [self.current(name) for name in sorted(self.versions)]
        return sorted((w for w in current if w), key=lambda w: -w.priority)


def load_workflow(path: Path) -> Workflow:
    return rule_files.load(path, Workflow)


def load_library(*paths: Path) -> Library:
    """The workflows in ``paths`` (directories of ``*.yaml``, or files), with the
    ``policies.yaml`` found among them. Raises RuleFileError listing every problem."""
    files: list[Path] = []
    for path in paths or (DEFAULT_LIBRARY,):
        files += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    problems: list[str] = []
    policies = Policies()
    library = Library(policies)
    for file in files:
        try:
            if file.name == POLICIES_FILE:
                library.policies = rule_files.load(file, Policies)
                continue
            workflow = load_workflow(file)
        except RuleFileError as exc:
            problems.append(str(exc))
            continue
        versions = library.versions.setdefault(workflow.name, {})
        if workflow.version in versions:
            other = library.files[(workflow.name, workflow.version)]
            problems.append(
                f"{rule_files.where(file, ['version'])}: field version: {workflow.name} "
                f"version {workflow.version} is also in {other} (give the new one a higher "
                "version)"
            )
            continue
        versions[workflow.version] = workflow
        library.files[(workflow.name, workflow.version)] = file
    if not problems:
        problems += _set_problems(library)
    if problems:
        raise RuleFileError("\n".join(problems))
    return library


def _set_problems(library: Library) -> list[str]:
    """What only the whole set shows: references between workflows, hand-off cycles,
    stages the policies do not know, group priorities, migrations."""
    problems: list[str] = []
    names = set(library.versions)
    stages = library.policies.lifecycle_stages
    hand_offs: dict[str, list[str]] = {}

    def problem(workflow: Workflow, loc: list[Any], message: str) -> None:
        where = rule_files.where(library.files[(workflow.name, workflow.version)], loc)
        problems.append(f"{where}: field {'.'.join(map(str, loc))}: {message}")

    groups: dict[tuple[str, int], str] = {}
    for workflow in (w for v in library.versions.values() for w in v.values()):
        current = workflow is library.current(workflow.name)
        for key, exit_state in workflow.exits.items():
            if exit_state.hand_off is not None:
                if exit_state.hand_off not in names:
                    problem(
                        workflow,
                        ["exits", key, "hand_off"],
                        f"no workflow {exit_state.hand_off!r} (known: {', '.join(sorted(names))})",
                    )
                elif current:
                    hand_offs.setdefault(workflow.name, []).append(exit_state.hand_off)
            if exit_state.lifecycle_stage is not None and exit_state.lifecycle_stage not in stages:
                problem(
                    workflow,
                    ["exits", key, "lifecycle_stage"],
                    f"{exit_state.lifecycle_stage!r} is not a lifecycle stage "
                    f"(policies.yaml lists: {', '.join(stages)})",
                )
        for i, step in enumerate(workflow.steps):
            stage = step.update.lifecycle_stage if step.update else None
            if stage is not None and stage not in stages:
                problem(
                    workflow,
                    ["steps", i, "update", "lifecycle_stage"],
                    f"{stage!r} is not a lifecycle stage (policies.yaml lists: "
                    f"{', '.join(stages)})",
                )
        known = ", ".join(sorted(names))
        for loc, condition in workflow.conditions():
            for key in ("in_workflow", "not_in_workflow", "has_run", "has_not_run"):
                for other in getattr(condition, key) or []:
                    if other not in names:
                        problem(workflow, [*loc, key], f"no workflow {other!r} (known: {known})")
        if workflow.group is not None and current:
            taken = groups.setdefault((workflow.group, workflow.priority), workflow.name)
            if taken != workflow.name:
                problem(
                    workflow,
                    ["priority"],
                    f"{taken} has the same priority in group {workflow.group}: give each "
                    "workflow of a group its own priority, so a collision has one winner",
                )
        newest = library.current(workflow.name)
        if not current and newest is not None and newest.on_new_version == "migrate":
            for step in workflow.steps:
                target = newest.migrate_steps.get(step.id, step.id)
                if newest.step(target) is None and step.kind in ("wait", "wait_until", "wait_for"):
                    problem(
                        newest,
                        ["migrate_steps" if newest.migrate_steps else "on_new_version"],
                        f"runs waiting at {step.id!r} (version {workflow.version}) have no step "
                        f"to migrate to: add `{step.id}: <step>` to migrate_steps",
                    )
    cycle = _hand_off_cycle(hand_offs)
    if cycle:
        first = library.current(cycle[0])
        assert first is not None
        key = next(k for k, e in first.exits.items() if e.hand_off == cycle[1])
        problem(
            first,
            ["exits", key, "hand_off"],
            f"hand-off cycle: {' -> '.join(cycle)}: a contact would go round forever "
            "(end one of them in a tag or stage instead)",
        )
    return problems


def _hand_off_cycle(hand_offs: dict[str, list[str]]) -> list[str]:
    for start in sorted(hand_offs):
        found = _find_cycle(hand_offs, start)
        if found:
            return found
    return []
