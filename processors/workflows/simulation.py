"""``switchboard workflows simulate``: a workflow against a scripted timeline, without
Kafka. The same engine as the worker; the clock jumps from event to event and to each
wait's end, so days of a sequence run in milliseconds.

Before each event, every wait that falls due by then fires (in due order); after the last
event, the remaining waits fire until the runs have exited or ``until`` is reached. The
contact's state changes with each event as on the worker (``processors.contact.advance``,
which also scores it), then the engine reacts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from processors.contact import advance
from processors.pipeline import PipelineRules
from processors.scoring import ScoringModel
from processors.state import ContactState
from processors.workflows.effects import Audit, DealStage, Effect, Message, Task, Upsert
from processors.workflows.engine import Engine
from processors.workflows.library import DEFAULT_LIBRARY, Library, load_library, load_workflow
from processors.workflows.policies import POLICIES_FILE
from processors.workflows.runbook import RunBook

MAX_FIRINGS = 10_000  # lint rules out loops; this bounds a mistake in the engine


class ScriptError(ValueError):
    """A contact or events file that cannot be simulated; says which entry and field."""


@dataclass(frozen=True)
class Moment:
    at: datetime
    what: str  # the event or wait that happened
    effects: list[Effect]


@dataclass
class Simulation:
    moments: list[Moment] = field(default_factory=list)
    book: RunBook = field(default_factory=RunBook)
    state: ContactState | None = None

    def effects(self) -> list[Effect]:
        return [e for m in self.moments for e in m.effects]


def read_contact(path: Path) -> ContactState:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScriptError(f"{path}: not a JSON contact: {exc}") from None
    if isinstance(data, dict):
        data.setdefault("contact_id", "simulated-contact")
    try:
        return ContactState.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"])
        raise ScriptError(f"{path}: field {field_name}: {first['msg']}") from None


def read_events(path: Path) -> list[dict[str, Any]]:
    """Events as JSON lines (or one JSON list): ``event_type``, ``event_time`` (ISO-8601)
    and ``payload``; ``event_id``, ``source_system`` and ``identity`` are filled in."""
    text = path.read_text()
    try:
        stripped = text.lstrip()
        raw = (
            json.loads(text)
            if stripped.startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as exc:
        raise ScriptError(f"{path}: not JSON lines: {exc}") from None
    return [_event(path, i + 1, item) for i, item in enumerate(raw)]


def _event(path: Path, number: int, item: Any) -> dict[str, Any]:
    where = f"{path}: event {number}"
    if not isinstance(item, dict):
        raise ScriptError(f"{where}: not an object")
    for key in ("event_type", "event_time"):
        if key not in item:
            raise ScriptError(f"{where}: field {key} is missing (add it)")
    try:
        at = datetime.fromisoformat(str(item["event_time"]))
    except ValueError:
        raise ScriptError(f"{where}: field event_time: not an ISO-8601 time") from None
    if at.tzinfo is None:
        raise ScriptError(f"{where}: field event_time: give a zone (like 2026-01-05T09:00Z)")
    return {
        "event_id": item.get("event_id", f"sim-{number}"),
        "event_type": item["event_type"],
        "source_system": item.get("source_system", "simulation"),
        "event_time": at.astimezone(UTC),
        "received_time": at.astimezone(UTC),
        "identity": item.get("identity", {}),
        "contact_id": None,
        "payload": item.get("payload", {}),
    }


def library_for(path: Path) -> tuple[Library, str]:
    """The workflow in ``path`` with what it needs: the policies beside it (else the
    packaged ones) and the other workflows of its directory, which it may hand off to."""
    here = path.parent
    policies = here / POLICIES_FILE
    if not policies.exists():
        policies = DEFAULT_LIBRARY / POLICIES_FILE
    siblings = [p for p in sorted(here.glob("*.yaml")) if p.name != POLICIES_FILE and p != path]
    workflow = load_workflow(path)
    return load_library(policies, path, *siblings), workflow.name


def simulate(
    library: Library,
    state: ContactState,
    events: list[dict[str, Any]],
    model: ScoringModel,
    pipeline: PipelineRules | None = None,
    until: datetime | None = None,
    workflow: str | None = None,
) -> Simulation:
    """Run ``events`` through ``library`` (only ``workflow`` is started by events, if
    given; the others only by a hand-off)."""
    engine = Engine(library, pipeline, {workflow} if workflow else None)
    result = Simulation(state=state)
    book = RunBook()

    def fire_due(limit: datetime | None) -> None:
        nonlocal book, state
        for _ in range(MAX_FIRINGS):
            waits = [r for r in book.runs.values() if r.waiting_until is not None]
            if not waits:
                return
            run = min(waits, key=lambda r: (r.waiting_until or r.entered_at, r.workflow))
            due = run.waiting_until
            assert due is not None
            if limit is not None and due > limit:
                return
            outcome = engine.on_due(book, state, run.workflow, due, run.seq, due)
            book, state = outcome.book, outcome.state
            result.moments.append(
                Moment(due, f"{run.workflow}: wait at {run.step} over", outcome.effects)
            )
        raise RuntimeError(f"more than {MAX_FIRINGS} waits fired: a loop in the engine")

    for number, event in enumerate(sorted(events, key=lambda e: e["event_time"]), start=1):
        at = event["event_time"]
        fire_due(at)
        try:
            changed = advance(state, event, model)
        except KeyError as exc:
            raise ScriptError(
                f"event {number} ({event['event_type']}): field payload.{exc.args[0]} is "
                "missing (add it)"
            ) from None
        state = changed.state
        outcome = engine.on_event(book, state, event, at)
        book, state = outcome.book, outcome.state
        what = f"{event['event_type']} ({event['event_id']})"
        result.moments.append(Moment(at, what, outcome.effects))
    fire_due(until)
    result.book, result.state = book, state
    return result


def render(result: Simulation) -> str:
    """The path, moment by moment, with the commands and messages it would send."""
    lines: list[str] = []
    for moment in result.moments:
        if not moment.effects:
            continue
        lines.append(f"{moment.at:%Y-%m-%d %H:%M}Z  {moment.what}")
        for effect in moment.effects:
            if isinstance(effect, Audit):
                lines.append(f"    {effect.decision:21} {effect.reason}")
            elif isinstance(effect, Message):
                lines.append(
                    f"      -> notification {effect.channel} to {effect.recipient}: "
                    f"{effect.template}"
                )
            elif isinstance(effect, Task):
                lines.append(
                    f"      -> CREATE_TASK {effect.title!r} due {effect.due_at:%Y-%m-%d %H:%M}Z"
                )
            elif isinstance(effect, Upsert):
                shown = ", ".join(f"{k}={v}" for k, v in effect.properties.items())
                lines.append(f"      -> UPSERT_CONTACT {shown}")
            elif isinstance(effect, DealStage):
                lines.append(
                    f"      -> UPDATE_DEAL_STAGE {effect.deal_id} "
                    f"{effect.previous_stage} -> {effect.stage}"
                )
    waiting = list(result.book.runs.values())
    lines.append("At the end:")
    for run in waiting:
        until = f" until {run.waiting_until:%Y-%m-%d %H:%M}Z" if run.waiting_until else ""
        lines.append(f"    {run.workflow} v{run.version}: waiting at {run.step}{until}")
    for name, history in sorted(result.book.history.items()):
        if name not in result.book.runs and history.last_exit:
            lines.append(f"    {name}: exited {history.last_exit}")
    if result.state is not None and result.state.tags:
        lines.append(f"    tags: {', '.join(result.state.tags)}")
    return "\n".join(lines)
