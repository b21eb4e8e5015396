"""The workflow engine: what a contact's workflow runs do when something happens to the
contact, and when one of their waits is over.

Pure: ``Engine.on_event`` and ``Engine.on_due`` take the contact's ``RunBook`` (its runs,
its workflow history and its recent sends) and state, and return the new book, the new
state and the effects (messages, CRM commands, audit entries) in order. The contact stage
keeps the book in a table and sends the effects; ``switchboard workflows simulate`` runs
the same engine over a scripted timeline without Kafka.

Shared state across workflows, so that collisions cannot happen:
- a contact is in a workflow at most once at a time, and enters again only as its
  ``reentry`` allows;
- of a ``group``, one workflow at a time: a higher ``priority`` takes the contact (the
  other run exits ``preempted``), an equal or lower one does not enter;
- before every send to the contact: consent and address, quiet hours on their clock (the
  send waits for the end), and the frequency cap per channel across all workflows;
- stages only move forward (lifecycle stages in the policies' order, deal stages in the
  pipeline's), and every message has an id fixed by its run and step, so a replay or a
  retry sends nothing twice.

A run's waits (a duration, a time of day, the timeout of a wait for events, the end of
quiet hours) are durable timers: ``waiting_until`` and ``seq`` are the timer's due time
and level, and a due notice that no longer matches them is ignored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from string import Template
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, Field

from processors.durations import format_duration
from processors.hours import WEEKDAYS, known_zone
from processors.ids import decision_id
from processors.journeys import CONVERTED, DIVERTED, FINISHED, OPT_OUTS, PROGRESSED, UNSUBSCRIBED
from processors.matching import scalars
from processors.pipeline import PipelineRules, current_deal
from processors.sla import EPOCH, to_ms, whole_ms
from processors.state import CLOSED_STAGES, ContactState, PlainModel
from processors.workflows.definitions import (
    BUILTIN_EXITS,
    MERGED,
    PREEMPTED,
    VERSION_REMOVED,
    Workflow,
)
from processors.workflows.library import Library
from processors.workflows.policies import QuietHours
from processors.workflows.steps import Notify, Step, Update

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


# ---- effects ------------------------------------------------------------------------------

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


# ---- time on the contact's clock ----------------------------------------------------------


def contact_zone(state: ContactState, default: str) -> ZoneInfo:
    """The contact's time zone (their profile's ``timezone``), else ``default``."""
    named = state.profile.get("timezone")
    if named:
        try:
            return ZoneInfo(known_zone(named))
        except ValueError:
            pass  # a CRM's free-text zone we cannot read: the default serves
    return ZoneInfo(default)


def next_local(now: datetime, at: time, zone: ZoneInfo, days: Sequence[str] | None) -> datetime:
    """The first instant after ``now`` when the contact's clock shows ``at`` on one of
    ``days`` (any day if None)."""
    local = now.astimezone(zone)
    for ahead in range(8):
        day = local.date() + timedelta(days=ahead)
        candidate = datetime.combine(day, at, tzinfo=zone)
        if candidate > local and (days is None or WEEKDAYS[day.weekday()] in days):
            return whole_ms(candidate.astimezone(now.tzinfo))
    raise ValueError("no day to wait for")  # unreachable: a week has every weekday


def quiet_until(now: datetime, quiet: QuietHours, zone: ZoneInfo) -> datetime | None:
    """When the quiet hours around ``now`` end on the contact's clock; None outside them."""
    local = now.astimezone(zone).time()
    if quiet.start <= quiet.end:
        inside = quiet.start <= local < quiet.end
    else:  # across midnight
        inside = local >= quiet.start or local < quiet.end
    return next_local(now, quiet.end, zone, None) if inside else None


# ---- the engine ---------------------------------------------------------------------------


class Engine:
    def __init__(
        self,
        library: Library,
        pipeline: PipelineRules | None = None,
        triggered: set[str] | None = None,
    ) -> None:
        self.library = library
        self.pipeline = pipeline  # the deal stage order; None: any move is forward
        self.triggered = triggered  # the workflows events may start (None: all)

    def on_event(
        self, book: RunBook, state: ContactState, event: dict[str, Any], now: datetime
    ) -> Outcome:
        """``event`` happened to the contact (``state`` is after it): goals, waits for
        events, and the workflows it triggers."""
        triggered = [
            w
            for w in self.library.workflows()
            if (self.triggered is None or w.name in self.triggered) and w.triggered_by(event)
        ]
        if not triggered and not any(self._concerns(r, event) for r in book.runs.values()):
            return Outcome(book, state)  # most events: nothing to copy, nothing to do
        run = _Pass(self, book, state, now, event["event_id"])
        for name in sorted(run.book.runs):
            current = run.book.runs.get(name)
            if current is not None:
                run.wake(current, event)
        for workflow in triggered:
            run.enrol(workflow, event["event_time"], event)
        return run.finish()

    def _concerns(self, run: Run, event: dict[str, Any]) -> bool:
        """Whether ``event`` may move ``run``: its goal, what its step waits for, or a
        goal on the contact's state (which the event may have changed)."""
        flow = self.library.of(run)
        if flow is None or flow.goal.state is not None:
            return True
        if any(m.matches(event) for m in flow.goal.events):
            return True
        step = flow.step(run.step)
        return step is not None and any(m.matches(event) for m in step.wait_for or [])

    def on_due(
        self,
        book: RunBook,
        state: ContactState,
        workflow: str,
        due_at: datetime,
        seq: int,
        now: datetime,
    ) -> Outcome:
        """A wait of the contact's run through ``workflow`` is over. A notice that no
        longer matches the run (a duplicate, or the run moved on) changes nothing."""
        current = book.runs.get(workflow)
        stale = (
            current is None
            or current.seq != seq
            or current.waiting_until is None
            or to_ms(current.waiting_until) != to_ms(due_at)
        )
        if stale or current is None:
            return Outcome(book, state)
        run = _Pass(self, book, state, now, current.cause)
        run.resume(run.book.runs[workflow], due_at)
        return run.finish()

    def adopt(
        self, book: RunBook, state: ContactState, retired: RunBook, retired_id: str, now: datetime
    ) -> Outcome:
        """The survivor of a merge takes over the retired contact's runs. Where both are
        in one workflow, the run that started first goes on; the other exits ``merged``."""
        run = _Pass(self, book, state, now, f"merge:{retired_id}")
        for name, theirs in sorted(retired.runs.items()):
            ours = run.book.runs.get(name)
            if ours is not None and ours.entered_at <= theirs.entered_at:
                run.audit_for(
                    theirs,
                    "workflow_exited",
                    f"{name}: {MERGED}: {state.contact_id} was already in it",
                    {
                        "exit": MERGED,
                        "from": retired_id,
                        "step": theirs.step,
                        "outcome": DIVERTED,
                        "why": MERGED,
                        **run.in_step(theirs),
                    },
                )
                continue
            if ours is not None:
                run.exit(ours, MERGED, f"{retired_id} had been in it longer")
            run.book.runs[name] = theirs.model_copy()
            run.audit_for(
                theirs,
                "workflow_adopted",
                f"{name}: the run of {retired_id} goes on here (merged)",
                {"from": retired_id, "step": theirs.step},
            )
        for name, theirs_h in retired.history.items():
            ours_h = run.book.history.get(name)
            if ours_h is None:
                run.book.history[name] = theirs_h.model_copy()
                continue
            last = max((ours_h, theirs_h), key=lambda h: h.exited_at or EPOCH)
            run.book.history[name] = History(
                runs=ours_h.runs + theirs_h.runs, last_exit=last.last_exit, exited_at=last.exited_at
            )
        for channel, sent in retired.sends.items():
            run.book.sends[channel] = sorted({*run.book.sends.get(channel, []), *sent})
        run.settle_groups(retired_id)
        return run.finish()


class _Pass:
    """One call into the engine: copies of the book and state it changes, and the
    effects in the order they happen."""

    def __init__(
        self, engine: Engine, book: RunBook, state: ContactState, now: datetime, cause: str
    ) -> None:
        self.library = engine.library
        self.policies = engine.library.policies
        self.pipeline = engine.pipeline
        self.before = (book, state)
        self.book = book.model_copy(deep=True)
        self.state = state.model_copy(deep=True)
        self.now = now
        self.cause = cause
        self.effects: list[Effect] = []

    def finish(self) -> Outcome:
        mirror = {n: f"v{r.version} {r.step}" for n, r in sorted(self.book.runs.items())}
        if mirror != self.state.workflows:
            self.state = self.state.model_copy(update={"workflows": mirror})
        changed = bool(self.effects) or (self.book, self.state) != self.before
        return Outcome(self.book, self.state, self.effects, changed)

    # -- audit --------------------------------------------------------------------------

    def audit_for(
        self,
        run: Run,
        decision: str,
        reason: str,
        inputs: dict[str, Any],
        suppressed: SuppressedBecause | None = None,
    ) -> None:
        audit_id = decision_id("wf-audit", run.run_id, str(run.seq), decision, reason)
        full = {"workflow": run.workflow, "version": run.version, "run_id": run.run_id, **inputs}
        self.effects.append(
            Audit(run.workflow, decision, reason, full, audit_id, self.cause, suppressed)
        )

    def refuse(
        self, workflow: Workflow, because: SuppressedBecause, reason: str, inputs: dict[str, Any]
    ) -> None:
        audit_id = decision_id("wf-refused", workflow.name, self.cause, because)
        self.effects.append(
            Audit(
                workflow.name,
                "workflow_not_entered",
                f"{workflow.name}: not entered: {reason}",
                {
                    "workflow": workflow.name,
                    "version": workflow.version,
                    "because": because,
                    **inputs,
                },
                audit_id,
                self.cause,
                because,
            )
        )

    # -- entering -----------------------------------------------------------------------

    def enrol(
        self,
        workflow: Workflow,
        triggered_at: datetime,
        event: dict[str, Any] | None,
        handed_from: str | None = None,
    ) -> None:
        name = workflow.name
        if handed_from is None and self.now - triggered_at > self.policies.max_trigger_age:
            self.refuse(
                workflow,
                "trigger_too_old",
                f"the trigger happened at {triggered_at:%Y-%m-%d %H:%M}Z, longer ago "
                f"than max_trigger_age",
                {"triggered_at": triggered_at.isoformat()},
            )
            return
        running = self.book.runs.get(name)
        if running is not None:
            self.refuse(
                workflow,
                "already_in",
                f"already in it, at {running.step} since {running.entered_at:%Y-%m-%d %H:%M}Z",
                {"step": running.step},
            )
            return
        history = self.book.history.get(name)
        if history is not None and history.runs:
            after = workflow.reentry_after
            if after is None:
                self.refuse(
                    workflow,
                    "reentry",
                    "went through it before and reentry is never",
                    {"last_exit": history.last_exit},
                )
                return
            if history.exited_at is not None and self.now < history.exited_at + after:
                self.refuse(
                    workflow,
                    "reentry",
                    f"left it at {history.exited_at:%Y-%m-%d %H:%M}Z; may enter again "
                    f"{workflow.reentry} after",
                    {"last_exit": history.last_exit},
                )
                return
        trigger = scalars(event["payload"]) if event else {}
        held, seen = workflow.entry.evaluate(self.state, set(self.book.runs), trigger, self.ran())
        if not held:
            self.refuse(workflow, "entry_filter", "the entry filter does not hold", seen)
            return
        rivals = self._group_runs(workflow)
        for rival, rival_flow in rivals:
            if rival_flow.priority >= workflow.priority:
                self.refuse(
                    workflow,
                    "group",
                    f"in {rival.workflow} of group {workflow.group} (priority "
                    f"{rival_flow.priority} >= {workflow.priority})",
                    {"group": workflow.group, "rival": rival.workflow},
                )
                return
        history = self.book.history.setdefault(name, History())
        history.runs += 1
        run = Run(
            workflow=name,
            version=workflow.version,
            run_id=decision_id("run", self.state.contact_id, name, self.cause, str(history.runs)),
            step=workflow.steps[0].id,
            entered_at=self.now,
            cause=self.cause,
            trigger=scalars(event["payload"]) if event else {},
        )
        # Entered (in the book, and in the audit) before the rivals leave, so that a
        # rival's hand-off into this group finds the group taken.
        self.book.runs[name] = run
        how = (
            f"handed off by {handed_from}"
            if handed_from
            else (f"{event['event_type'].lower().replace('_', ' ')}" if event else "entered")
        )
        self.audit_for(
            run,
            "workflow_entered",
            f"{name} v{workflow.version}: {how}; entry filter holds",
            {**seen, "purpose": workflow.purpose},
        )
        for rival, _ in rivals:
            self.exit(
                rival,
                PREEMPTED,
                f"{name} (priority {workflow.priority}) of group {workflow.group} takes "
                "the contact",
            )
        if self.book.runs.get(name) is not run:
            return  # a rival's hand-off took the contact from it in turn
        self.advance(run, workflow)

    def _group_runs(self, workflow: Workflow) -> list[tuple[Run, Workflow]]:
        if workflow.group is None:
            return []
        found = []
        for run in list(self.book.runs.values()):
            flow = self.library.of(run)
            if flow is not None and flow.group == workflow.group:
                found.append((run, flow))
        return found

    def settle_groups(self, retired_id: str) -> None:
        """After a merge, one run per group again: the highest priority goes on, the
        others exit ``preempted`` as if it had taken the contact."""
        for run in list(self.book.runs.values()):
            if run.workflow not in self.book.runs:
                continue
            flow = self.library.of(run)
            if flow is None:
                continue
            for rival, rival_flow in self._group_runs(flow):
                if rival is not run and rival_flow.priority < flow.priority:
                    self.exit(
                        rival,
                        PREEMPTED,
                        f"merged with {retired_id}: {flow.name} "
                        f"(priority {flow.priority}) of group {flow.group} goes on",
                    )

    def ran(self) -> set[str]:
        return {name for name, history in self.book.history.items() if history.runs}

    # -- running ------------------------------------------------------------------------

    def definition(self, run: Run) -> Workflow | None:
        """The version the run goes on with, migrating it to the current one when that
        version says so (or when its own is gone); None if it has to stop."""
        current = self.library.current(run.workflow)
        if current is not None and current.version == run.version:
            return current
        own = self.library.version(run.workflow, run.version)
        if current is not None and (current.on_new_version == "migrate" or own is None):
            target = current.migrate_steps.get(run.step, run.step)
            if current.step(target) is not None:
                before = f"v{run.version} {run.step}"
                run.version, run.step = current.version, target
                self.audit_for(
                    run,
                    "workflow_migrated",
                    f"{run.workflow}: {before} -> v{current.version} {target}",
                    {"from": before, "step": target},
                )
                return current
        if own is not None:
            return own  # finishes on the version it started on
        self.exit(
            run,
            VERSION_REMOVED,
            f"version {run.version} is no longer published and "
            f"step {run.step} has no place in the current one",
        )
        return None

    def wake(self, run: Run, event: dict[str, Any]) -> None:
        """An event reached a running run: its goal, or what it waits for."""
        workflow = self.definition(run)
        if workflow is None:
            return
        if any(m.matches(event) for m in workflow.goal.events):
            what = event["event_type"].lower().replace("_", " ")
            self.exit(run, workflow.goal.exit, f"goal met: {what}")
            return
        step = workflow.step(run.step)
        if step is not None and step.kind == "wait_for" and run.waiting_until is not None:
            listen = next((m for m in step.wait_for or [] if m.matches(event)), None)
            if listen is not None:
                waited = self.now - (run.waiting_until - (step.timeout or timedelta(0)))
                self.audit_for(
                    run,
                    "workflow_branch",
                    f"{run.workflow}: {step.id}: {event['event_type']} arrived -> {listen.goto}",
                    {
                        "step": step.id,
                        "event": event["event_type"],
                        "waited_s": int(waited.total_seconds()),
                        "goto": listen.goto,
                        **self.left(run, UNSUBSCRIBED if event["event_type"] in OPT_OUTS else None),
                    },
                )
                run.waiting_until = None
                run.step = listen.goto
                self.advance(run, workflow)
                return
        self._check_goal_state(run, workflow)

    def resume(self, run: Run, due_at: datetime) -> None:
        """The run's wait is over."""
        workflow = self.definition(run)
        if workflow is None:
            return
        lateness = max(self.now - due_at, timedelta(0))
        step = workflow.step(run.step)
        run.waiting_until = None
        if step is None:  # unreachable: definition() places the run on a known step
            self.exit(run, VERSION_REMOVED, f"no step {run.step}")
            return
        late = {"lateness_ms": int(lateness.total_seconds() * 1000)}
        if step.kind == "wait_for":
            assert step.timeout is not None
            self.audit_for(
                run,
                "workflow_branch",
                f"{run.workflow}: {step.id}: nothing within {format_duration(step.timeout)} -> "
                f"{step.on_timeout}",
                {
                    "step": step.id,
                    "timed_out": True,
                    "goto": step.on_timeout,
                    **late,
                    **self.left(run),
                },
            )
            assert step.on_timeout is not None
            run.step = step.on_timeout
        elif step.kind in ("wait", "wait_until"):
            self.audit_for(
                run,
                "workflow_waited",
                f"{run.workflow}: {step.id}: wait over",
                {"step": step.id, **late, **self.left(run)},
            )
            following = workflow.successor(step.id)
            assert following is not None
            run.step = following
        # a send waited out quiet hours: it is tried again
        self.advance(run, workflow)

    def _check_goal_state(self, run: Run, workflow: Workflow) -> bool:
        goal = workflow.goal
        if goal.state is None:
            return False
        held, seen = goal.state.evaluate(self.state, set(self.book.runs), run.trigger, self.ran())
        if held:
            self.exit(run, goal.exit, "goal met: " + ", ".join(f"{k} {v}" for k, v in seen.items()))
        return held

    def advance(self, run: Run, workflow: Workflow) -> None:
        """Take steps until the run waits or exits (lint rules out loops)."""
        for _ in range(len(workflow.steps) + 1):
            if run.workflow not in self.book.runs or self.book.runs[run.workflow] is not run:
                return  # it exited (preempted by a hand-off it made, say)
            # A send held for quiet hours is tried again: the same stay at the step.
            arriving = run.since is None
            start = len(self.effects)
            if self._check_goal_state(run, workflow):
                self._mark(run, run.step, start, arriving, False)
                return
            step = workflow.step(run.step)
            assert step is not None
            run.seq += 1
            following = self.take(run, workflow, step)
            self._mark(run, step.id, start, arriving, following is not None)
            if following is None:
                return
            run.step = following
        raise RuntimeError(f"{workflow.name}: steps loop (lint should have refused it)")

    def _mark(self, run: Run, step: str, start: int, arriving: bool, moved_on: bool) -> None:
        """Mark the audit entries of a stay at ``step`` written since ``start``: the first
        ``arrived``; the last, when the run moved on, with how (journey KPIs)."""
        first: Audit | None = None
        last: Audit | None = None
        suppressed: str | None = None
        for effect in self.effects[start:]:  # the few this step wrote
            if not isinstance(effect, Audit):
                continue
            if effect.inputs.get("step") == step and effect.inputs.get("run_id") == run.run_id:
                first = first or effect
                last = effect
                suppressed = suppressed or effect.suppressed
        if first is None or last is None:
            return  # unreachable: every step writes an entry (an update without change too)
        if arriving:
            first.inputs["arrived"] = "true"
        if moved_on:
            last.inputs.update(self.left(run, suppressed))

    def left(self, run: Run, diverted: str | None = None) -> dict[str, Any]:
        """The marks of the entry with which the run leaves its step along its path:
        ``diverted`` (why) when it was taken off it (an unsubscribe, a suppressed action)."""
        marks: dict[str, Any] = {"outcome": PROGRESSED}
        if diverted is not None:
            marks = {"outcome": DIVERTED, "why": diverted}
        return marks | self.in_step(run)

    def in_step(self, run: Run) -> dict[str, Any]:
        """How long the run waited at its step (nothing when it did not wait); its stay
        there ends."""
        since, run.since = run.since, None
        return {} if since is None else {"in_step_s": int((self.now - since).total_seconds())}

    def take(self, run: Run, workflow: Workflow, step: Step) -> str | None:
        """Take one step; the next step, or None when the run now waits or has exited."""
        kind = step.kind
        name = workflow.name
        if kind == "send":
            if not self.send(run, workflow, step):
                return None  # waits for the end of quiet hours
        elif kind == "notify":
            assert step.notify is not None
            self.notify(run, step.notify, step.id)
        elif kind == "task":
            task = step.task
            assert task is not None
            task_id = decision_id("wf-task", run.run_id, step.id)
            context = self.context(run, step.id)
            title = Template(task.title).safe_substitute(context)
            notes = Template(task.notes).safe_substitute(context) if task.notes else None
            self.effects.append(
                Task(
                    task_id,
                    title,
                    self.now + task.due_in,
                    task.priority,
                    notes,
                    run.cause,
                    task.job,
                    context.get("job_id") if task.job else None,
                )
            )
            self.audit_for(
                run,
                "workflow_step",
                f"{name}: {step.id}: task {title!r}",
                {"step": step.id, "action": "task", "task_id": task_id},
            )
        elif kind == "update":
            assert step.update is not None
            before = len(self.effects)
            self.update(run, step.update, step.id)
            if len(self.effects) == before:  # an entry all the same: the step was taken
                self.audit_for(
                    run,
                    "workflow_step",
                    f"{name}: {step.id}: nothing to change (the contact is there already)",
                    {"step": step.id, "action": "update", "changed": False},
                )
        elif kind == "wait":
            assert step.wait is not None
            self.wait(run, step, whole_ms(self.now + step.wait))
            return None
        elif kind == "wait_until":
            assert step.wait_until is not None
            zone = contact_zone(self.state, self.policies.timezone)
            until = next_local(self.now, step.wait_until.time, zone, step.wait_until.days)
            self.wait(run, step, until)
            return None
        elif kind == "wait_for":
            assert step.timeout is not None
            self.wait(run, step, whole_ms(self.now + step.timeout))
            return None
        elif kind == "branch":
            return self.branch(run, step)
        else:
            assert step.exit is not None
            self.exit(run, step.exit, f"reached {step.id}")
            return None
        return workflow.successor(step.id)

    def wait(self, run: Run, step: Step, until: datetime) -> None:
        run.waiting_until = until
        run.since = self.now
        what = ", ".join(dict.fromkeys(m.event for m in step.wait_for or []))
        inputs: dict[str, Any] = {"step": step.id, "until": until.isoformat()}
        if what:
            inputs["waits_for"] = what
        self.expected(run, step, inputs)
        self.audit_for(
            run,
            "workflow_waiting",
            f"{run.workflow}: {step.id}: waits until {until:%Y-%m-%d %H:%M}Z"
            + (f" for {what}" if what else ""),
            inputs,
        )

    def expected(self, run: Run, step: Step, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` with the step's expected time, for a stall to be judged by."""
        workflow = self.library.of(run)
        limit = self.library.expected(workflow, step.id) if workflow else None
        if limit is not None:
            inputs["expected_s"] = int(limit.total_seconds())
        return inputs

    def branch(self, run: Run, step: Step) -> str:
        running = set(self.book.runs)
        values: dict[str, str] = {}
        for i, case in enumerate(step.branch or []):
            held, seen = case.when.evaluate(self.state, running, run.trigger, self.ran())
            values |= {f"case{i + 1}.{k}": v for k, v in seen.items()}
            if held:
                self._branch_audit(run, step, f"case {i + 1} holds", case.goto, values)
                return case.goto
        assert step.otherwise is not None
        self._branch_audit(run, step, "no case holds", step.otherwise, values)
        return step.otherwise

    def _branch_audit(
        self, run: Run, step: Step, why: str, goto: str, values: dict[str, str]
    ) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        self.audit_for(
            run,
            "workflow_branch",
            f"{run.workflow}: {step.id}: {why} ({shown}) -> {goto}",
            {"step": step.id, "goto": goto, **values},
        )

    # -- actions ------------------------------------------------------------------------

    def context(self, run: Run, step: str) -> dict[str, str]:
        state = self.state
        return run.trigger | {
            "who": state.who(),
            "first_name": state.greeting_name(),
            "company": state.profile.get("company", ""),
            "contact_id": state.contact_id,
            "owner_id": state.owner_id or "",
            "workflow": run.workflow,
            "step": step,
        }

    def send(self, run: Run, workflow: Workflow, step: Step) -> bool:
        """Send to the contact if they may be sent it; False when it waits for the end of
        quiet hours (the run stays on the step)."""
        send = step.send
        assert send is not None
        name = workflow.name
        inputs: dict[str, Any] = {
            "step": step.id,
            "channel": send.channel,
            "template": send.template,
        }
        address, problem = self.state.address(send.channel)
        if address is None:
            self.audit_for(
                run,
                "workflow_suppressed",
                f"{name}: {step.id}: {send.template} by {send.channel} not sent: {problem}",
                inputs,
                "consent",
            )
            return True
        quiet = self.policies.quiet_hours
        if quiet is not None:
            zone = contact_zone(self.state, self.policies.timezone)
            until = quiet_until(self.now, quiet, zone)
            if until is not None:
                run.waiting_until = until
                run.since = run.since or self.now
                self.audit_for(
                    run,
                    "workflow_deferred",
                    f"{name}: {step.id}: quiet hours on the contact's clock ({zone}); "
                    f"sends at {until:%Y-%m-%d %H:%M}Z",
                    self.expected(run, step, {**inputs, "until": until.isoformat()}),
                )
                return False
        cap = self.policies.frequency_caps.get(send.channel)
        recent = self.book.sends.get(send.channel, [])
        if cap is not None:
            recent = [at for at in recent if at > self.now - cap.per]
            if len(recent) >= cap.max:
                self.audit_for(
                    run,
                    "workflow_suppressed",
                    f"{name}: {step.id}: {send.template} by {send.channel} not sent: "
                    f"the contact had {len(recent)} in {format_duration(cap.per)} (cap {cap.max})",
                    inputs,
                    "frequency_cap",
                )
                return True
            self.book.sends[send.channel] = [*recent, self.now]
        notification_id = decision_id("wf-send", run.run_id, step.id)
        self.effects.append(
            Message(
                notification_id,
                send.channel,
                address,
                send.template,
                send.subject,
                self.context(run, step.id),
                run.cause,
                True,
            )
        )
        self.audit_for(
            run,
            "workflow_sent",
            f"{name}: {step.id}: {send.template} by {send.channel}",
            {**inputs, "notification_id": notification_id},
        )
        return True

    def notify(self, run: Run, notify: Notify, step: str, **extra: str) -> None:
        state = self.state
        recipient: str | None = {"owner": state.owner_email, "manager": state.manager_email}.get(
            notify.to, notify.to
        )
        inputs = {"step": step, "to": notify.to, "template": notify.template}
        if recipient is None:
            self.audit_for(
                run,
                "workflow_suppressed",
                f"{run.workflow}: {step}: "
                f"{notify.template} not sent: no e-mail known for the {notify.to}",
                inputs,
                "no_recipient",
            )
            return
        notification_id = decision_id("wf-notify", run.run_id, step)
        self.effects.append(
            Message(
                notification_id,
                notify.channel,
                recipient,
                notify.template,
                None,
                self.context(run, step) | extra,
                run.cause,
                False,
            )
        )
        self.audit_for(
            run,
            "workflow_step",
            f"{run.workflow}: {step}: {notify.template} to the {notify.to} by {notify.channel}",
            {**inputs, "action": "notify", "notification_id": notification_id},
        )

    def update(self, run: Run, update: Update, step: str) -> None:
        properties = dict(update.properties)
        if update.lifecycle_stage is not None:
            properties |= self._lifecycle(run, update.lifecycle_stage, step)
        if properties:
            command_id = decision_id("wf-update", run.run_id, step)
            self.effects.append(Upsert(command_id, properties, run.cause))
            self.audit_for(
                run,
                "workflow_step",
                f"{run.workflow}: {step}: set "
                + ", ".join(f"{k}={v}" for k, v in properties.items()),
                {"step": step, "action": "update", **properties},
            )
        if update.deal_stage is not None:
            self._deal_stage(run, update.deal_stage, step)

    def _lifecycle(self, run: Run, target: str, step: str) -> dict[str, str]:
        order = self.policies.lifecycle_stages
        current = self.state.lifecycle_stage
        if current == target:
            return {}
        if current in order and order.index(target) < order.index(current):
            self.audit_for(
                run,
                "workflow_suppressed",
                f"{run.workflow}: {step}: lifecycle stage "
                f"stays {current}: {target} would move the contact back",
                {"step": step, "stage": target, "current": current},
                "backwards",
            )
            return {}
        self.state.lifecycle_stage = target
        return {"lifecyclestage": target}

    def _deal_stage(self, run: Run, target: str, step: str) -> None:
        deals = self.state.open_deals
        inputs = {"step": step, "stage": target}
        if not deals:
            self.audit_for(
                run,
                "workflow_step",
                f"{run.workflow}: {step}: no open deal to move to {target}",
                {**inputs, "action": "deal_stage", "moved": False},
            )
            return
        deal = current_deal(deals)
        if deal.stage == target:
            return
        if self.pipeline is not None and not self.pipeline.is_forward(deal.stage, target):
            self.audit_for(
                run,
                "workflow_suppressed",
                f"{run.workflow}: {step}: deal "
                f"{deal.deal_id} stays {deal.stage}: {target} would move it back",
                {**inputs, "deal_id": deal.deal_id, "current": deal.stage},
                "backwards",
            )
            return
        if target in CLOSED_STAGES:
            del deals[deal.deal_id]
        else:
            deals[deal.deal_id] = deal.model_copy(update={"stage": target, "updated_at": self.now})
        command_id = decision_id("wf-deal", run.run_id, step, deal.deal_id)
        self.effects.append(DealStage(command_id, deal.deal_id, target, deal.stage, run.cause))
        self.audit_for(
            run,
            "workflow_step",
            f"{run.workflow}: {step}: deal {deal.deal_id} {deal.stage} -> {target}",
            {**inputs, "action": "deal_stage", "deal_id": deal.deal_id},
        )

    # -- leaving ------------------------------------------------------------------------

    def exit(self, run: Run, exit_name: str, reason: str) -> None:
        name = run.workflow
        self.book.runs.pop(name, None)
        run.waiting_until = None
        history = self.book.history.setdefault(name, History(runs=1))
        history.last_exit, history.exited_at = exit_name, self.now
        workflow = self.library.of(run)
        state = workflow.exits.get(exit_name) if workflow else None
        if workflow is not None and exit_name == workflow.goal.exit:
            marks: dict[str, Any] = {"outcome": CONVERTED}
        elif exit_name in BUILTIN_EXITS:
            marks = {"outcome": DIVERTED, "why": exit_name}
        else:
            marks = {"outcome": FINISHED}
        self.audit_for(
            run,
            "workflow_exited",
            f"{name}: {exit_name}: {reason}",
            {
                "exit": exit_name,
                "step": run.step,
                "took_s": int((self.now - run.entered_at).total_seconds()),
                **marks,
                **self.in_step(run),
            },
        )
        if state is None:
            return
        where = f"exit-{exit_name}"
        properties: dict[str, str] = {}
        if state.tag is not None and state.tag not in self.state.tags:
            self.state.tags = [*self.state.tags, state.tag]
            properties["workflow_tags"] = ",".join(self.state.tags)
        if properties or state.lifecycle_stage is not None or state.deal_stage is not None:
            update = Update(
                properties=properties,
                lifecycle_stage=state.lifecycle_stage,
                deal_stage=state.deal_stage,
            )
            self.update(run, update, where)
        if state.notify is not None:
            self.notify(run, state.notify, where, exit=exit_name, reason=reason)
        if state.hand_off is not None:
            target = self.library.current(state.hand_off)
            if target is not None:
                self.enrol(target, self.now, None, handed_from=name)
