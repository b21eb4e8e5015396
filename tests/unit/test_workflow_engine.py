"""The engine's rules that span runs: versions (finish or migrate, never stranded),
merges (one run per workflow and per group again), hand-offs and goals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from processors.state import ContactState
from processors.workflows.effects import Audit, Message
from processors.workflows.engine import Engine
from processors.workflows.library import Library, load_library
from processors.workflows.runbook import RunBook

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # a Monday, 10:00 in New York

POLICIES = "version: 1\ntimezone: UTC\n"


def drip(
    version: int, *, policy: str = "finish", second: str = "follow-up", extra: str = ""
) -> str:
    return f"""
name: drip
version: {version}
purpose: Welcome, wait a day, follow up.
owner: ops@example.com
on_new_version: {policy}
{extra}
trigger: {{event: FORM_SUBMITTED}}
entry: {{everyone: true}}
goal: {{events: [{{event: MEETING_BOOKED}}], exit: booked}}
steps:
  - id: welcome
    send: {{channel: EMAIL, template: web_lead_welcome}}
  - {{id: a-day, wait: 1d}}
  - id: {second}
    send: {{channel: EMAIL, template: web_lead_follow_up_v{version}}}
  - {{id: done, exit: done}}
exits:
  done: {{tag: dripped-v{version}}}
  booked: {{tag: booked}}
"""


def grouped(name: str, priority: int, trigger: str) -> str:
    return f"""
name: {name}
version: 1
purpose: One of two sequences that must not run side by side.
owner: ops@example.com
trigger: {{event: {trigger}}}
entry: {{everyone: true}}
group: outreach
priority: {priority}
goal: {{events: [{{event: MEETING_BOOKED}}], exit: done}}
steps:
  - {{id: pause, wait: 1d}}
  - {{id: done, exit: done}}
exits:
  done: {{tag: {name}-done}}
  preempted: {{tag: {name}-preempted}}
"""


def library(tmp_path: Path, *files: str) -> Library:
    directory = tmp_path / f"lib{len(list(tmp_path.iterdir()))}"
    directory.mkdir()
    (directory / "policies.yaml").write_text(POLICIES)
    for i, text in enumerate(files):
        (directory / f"w{i}.yaml").write_text(text)
    return load_library(directory)


def contact(contact_id: str = "c-1") -> ContactState:
    return ContactState(contact_id=contact_id, identifiers=["email:ana@example.com"])


def event(kind: str, at: datetime, n: int = 1, **payload: Any) -> dict[str, Any]:
    return {"event_id": f"e-{kind}-{n}", "event_type": kind, "event_time": at, "payload": payload}


def entered(lib: Library, state: ContactState | None = None) -> tuple[RunBook, ContactState]:
    outcome = Engine(lib).on_event(RunBook(), state or contact(), event("FORM_SUBMITTED", T0), T0)
    return outcome.book, outcome.state


def wait_over(lib: Library, book: RunBook, state: ContactState, name: str = "drip") -> list[Any]:
    run = book.runs[name]
    assert run.waiting_until is not None
    now = run.waiting_until
    return Engine(lib).on_due(book, state, name, now, run.seq, now).effects


def templates(effects: list[Any]) -> list[str]:
    return [e.template for e in effects if isinstance(e, Message)]


def decisions(effects: list[Any]) -> list[tuple[str, str]]:
    return [(e.decision, e.reason) for e in effects if isinstance(e, Audit)]


# ---- versions -------------------------------------------------------------------------


def test_a_run_finishes_on_its_version_when_the_new_one_says_finish(tmp_path: Path) -> None:
    book, state = entered(library(tmp_path, drip(1)))
    published = library(tmp_path, drip(1), drip(2, policy="finish"))
    effects = wait_over(published, book, state)
    assert templates(effects) == ["web_lead_follow_up_v1"]
    assert ("workflow_exited", "drip: done: reached done") in decisions(effects)
    # A new contact enters the new version.
    new_book, _ = entered(published, contact("c-2"))
    assert new_book.runs["drip"].version == 2


def test_a_run_migrates_at_its_next_step_when_the_new_one_says_migrate(tmp_path: Path) -> None:
    book, state = entered(library(tmp_path, drip(1)))
    published = library(tmp_path, drip(1), drip(2, policy="migrate"))
    effects = wait_over(published, book, state)
    assert decisions(effects)[0] == ("workflow_migrated", "drip: v1 a-day -> v2 a-day")
    assert templates(effects) == ["web_lead_follow_up_v2"]


def test_migrate_steps_carries_a_run_across_a_renamed_wait(tmp_path: Path) -> None:
    book, state = entered(library(tmp_path, drip(1)))
    renamed = drip(2, policy="migrate", extra="migrate_steps: {a-day: one-day}").replace(
        "id: a-day", "id: one-day"
    )
    published = library(tmp_path, drip(1), renamed)
    effects = wait_over(published, book, state)
    assert decisions(effects)[0] == ("workflow_migrated", "drip: v1 a-day -> v2 one-day")
    assert templates(effects) == ["web_lead_follow_up_v2"]


def test_a_run_whose_version_was_removed_goes_on_in_the_current_one(tmp_path: Path) -> None:
    book, state = entered(library(tmp_path, drip(1)))
    only_new = library(tmp_path, drip(2, policy="finish"))  # v1's file is gone
    effects = wait_over(only_new, book, state)
    assert decisions(effects)[0][0] == "workflow_migrated"
    assert templates(effects) == ["web_lead_follow_up_v2"]


def test_a_run_with_no_place_in_any_published_version_exits_version_removed(
    tmp_path: Path,
) -> None:
    book, state = entered(library(tmp_path, drip(1)))
    other = drip(2).replace("id: a-day", "id: one-day")  # and v1 is gone
    effects = wait_over(library(tmp_path, other), book, state)
    [(decision, reason)] = decisions(effects)
    assert decision == "workflow_exited"
    assert reason.startswith("drip: version_removed: version 1 is no longer published")
    assert templates(effects) == []


# ---- merges ---------------------------------------------------------------------------


def test_a_merge_keeps_the_higher_priority_run_of_a_group(tmp_path: Path) -> None:
    lib = library(
        tmp_path,
        grouped("missed-call", 20, "CALL_COMPLETED"),
        grouped("web-lead", 10, "FORM_SUBMITTED"),
    )
    engine = Engine(lib)
    survivor = engine.on_event(RunBook(), contact("c-1"), event("CALL_COMPLETED", T0), T0)
    retired = engine.on_event(RunBook(), contact("c-2"), event("FORM_SUBMITTED", T0), T0)
    merged = engine.adopt(survivor.book, survivor.state, retired.book, "c-2", T0)
    assert set(merged.book.runs) == {"missed-call"}
    exits = [e for e in merged.effects if isinstance(e, Audit) and e.decision == "workflow_exited"]
    assert [(e.workflow, e.inputs["exit"]) for e in exits] == [("web-lead", "preempted")]
    assert merged.state.tags == ["web-lead-preempted"]
    assert merged.state.workflows == {"missed-call": "v1 pause"}


def test_a_merge_of_two_runs_of_one_workflow_keeps_the_older(tmp_path: Path) -> None:
    lib = library(tmp_path, drip(1))
    engine = Engine(lib)
    older = engine.on_event(RunBook(), contact("c-1"), event("FORM_SUBMITTED", T0), T0)
    later = T0 + timedelta(hours=1)
    newer = engine.on_event(RunBook(), contact("c-2"), event("FORM_SUBMITTED", later, 2), later)
    merged = engine.adopt(newer.book, newer.state, older.book, "c-1", later)
    assert merged.book.runs["drip"] == older.book.runs["drip"]
    assert ("drip", "merged") in [
        (e.workflow, e.inputs["exit"])
        for e in merged.effects
        if isinstance(e, Audit) and e.decision == "workflow_exited"
    ]


# ---- hand-offs and goals ---------------------------------------------------------------


def test_an_exit_hands_the_contact_to_the_next_workflow(tmp_path: Path) -> None:
    first = drip(1).replace("done: {tag: dripped-v1}", "done: {hand_off: after}")
    after = grouped("after", 1, "MEETING_COMPLETED")
    lib = library(tmp_path, first, after)
    book, state = entered(lib)
    effects = wait_over(lib, book, state)
    entries = [e for e in effects if isinstance(e, Audit) and e.decision == "workflow_entered"]
    assert [(e.workflow, e.reason) for e in entries] == [
        ("after", "after v1: handed off by drip; entry filter holds")
    ]


def test_a_goal_ends_the_run_early_in_its_exit(tmp_path: Path) -> None:
    lib = library(tmp_path, drip(1))
    book, state = entered(lib)
    booked = event("MEETING_BOOKED", T0 + timedelta(hours=2), meeting_id="m-1")
    outcome = Engine(lib).on_event(book, state, booked, booked["event_time"])
    assert outcome.book.runs == {}
    assert ("workflow_exited", "drip: booked: goal met: meeting booked") in decisions(
        outcome.effects
    )
    assert outcome.state.tags == ["booked"]


def test_an_entry_filter_can_ask_whether_a_workflow_ran_before(tmp_path: Path) -> None:
    follow = grouped("after", 1, "MEETING_BOOKED").replace(
        "entry: {everyone: true}", "entry: {has_run: [drip], has_not_run: [after]}"
    )
    lib = library(tmp_path, drip(1), follow)
    engine = Engine(lib)
    booked = event("MEETING_BOOKED", T0, meeting_id="m-1")
    never = engine.on_event(RunBook(), contact(), booked, T0)
    [refused] = [e for e in never.effects if isinstance(e, Audit)]
    assert (refused.decision, refused.inputs["ran"]) == ("workflow_not_entered", "")
    book, state = entered(lib)  # in drip now: it has run
    after = engine.on_event(book, state, booked, T0)
    assert "after" in after.book.runs
    assert [
        e.inputs["ran"]
        for e in after.effects
        if isinstance(e, Audit) and e.decision == "workflow_entered" and e.workflow == "after"
    ] == ["drip"]
