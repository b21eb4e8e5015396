"""The steps a workflow file declares: timed actions (send to the contact, notify a
person, create a CRM task, update a field or stage), waits (a duration, until a time of
day on the contact's clock, or for events with a timeout), branches and exits; each
step's own checks, and how long a run is expected to stay at it."""

from __future__ import annotations

from datetime import time, timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from processors.durations import Duration, format_duration
from processors.hours import WEEKDAYS, Weekday
from processors.matching import EventMatch
from processors.workflows.conditions import Condition, ContactChannel
from processors.workflows.policies import QuietHours
from streams.rules import RuleModel

NAME = r"^[a-z0-9][a-z0-9-]*$"  # kebab-case: names label metrics and key timers
PersonChannel = Literal["EMAIL", "SLACK", "SMS", "WEBHOOK", "LOG"]

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

    id: str = Field(pattern=NAME)
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
