"""``switchboard workflows lint`` and ``simulate`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from processors.workflows.library import DEFAULT_LIBRARY
from streams.cli import main

BROKEN = """name: broken
version: 1
purpose: A workflow whose wait never ends.
owner: ops@example.com
trigger: {event: FORM_SUBMITTED}
entry: {everyone: true}
goal: {events: [{event: MEETING_BOOKED}], exit: done}
steps:
  - id: wait-for-reply
    wait_for: [{event: EMAIL_REPLIED, goto: done}]
  - {id: done, exit: done}
exits:
  done: {tag: done}
"""


def test_lint_passes_the_packaged_workflows_and_lists_them() -> None:
    result = CliRunner().invoke(main, ["workflows", "lint", str(DEFAULT_LIBRARY)])
    assert result.exit_code == 0, result.output
    listed = [line.split()[1] for line in result.output.splitlines()]
    assert sorted(listed) == [
        "job-completed",
        "missed-call-text-back",
        "new-web-lead",
        "out-of-service-area",
        "payment-onboarding",
        "stale-deal-re-engagement",
        "voice-ai-qualified",
    ]


def test_lint_rejects_a_wait_with_no_timeout_naming_file_line_and_fix(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN)
    result = CliRunner().invoke(main, ["workflows", "lint", str(broken)])
    assert result.exit_code == 1
    assert f"{broken}:9: field steps.0:" in result.output
    assert "a wait_for needs `timeout` and `on_timeout`" in result.output


def test_simulate_prints_the_path_and_the_commands_without_kafka(tmp_path: Path) -> None:
    contact = tmp_path / "contact.json"
    contact.write_text(
        json.dumps(
            {
                "identifiers": ["email:ana@example.com", "phone:+15550100"],
                "profile": {"first_name": "Ana"},
                "owner_id": "rep-jordan",
                "owner_email": "jordan@example.com",
            }
        )
    )
    events = tmp_path / "events.jsonl"
    call = {
        "event_type": "CALL_COMPLETED",
        "event_time": "2026-11-23T15:00:00Z",  # 10:00 in New York: outside quiet hours
        "payload": {"call_id": "c-1", "direction": "INBOUND", "status": "no-answer"},
    }
    events.write_text(json.dumps(call) + "\n")
    workflow = DEFAULT_LIBRARY / "missed-call-text-back.yaml"
    result = CliRunner().invoke(
        main,
        [
            "workflows",
            "simulate",
            str(workflow),
            "--contact",
            str(contact),
            "--events",
            str(events),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "-> notification SMS to +15550100: missed_call_text_back" in result.output
    assert "-> CREATE_TASK 'Call back Ana: missed call' due 2026-11-23 15:15Z" in result.output
    assert "-> notification EMAIL to jordan@example.com: workflow_attention" in result.output
    assert lines[-2:] == [
        "    missed-call-text-back: exited no-answer",
        "    tags: missed-call-unanswered",
    ]


def test_simulate_names_the_event_and_field_a_timeline_lacks(tmp_path: Path) -> None:
    contact = tmp_path / "contact.json"
    contact.write_text("{}")
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event_type": "FORM_SUBMITTED", "payload": {}}) + "\n")
    workflow = DEFAULT_LIBRARY / "new-web-lead.yaml"
    result = CliRunner().invoke(
        main,
        [
            "workflows",
            "simulate",
            str(workflow),
            "--contact",
            str(contact),
            "--events",
            str(events),
        ],
    )
    assert result.exit_code == 1
    assert f"{events}: event 1: field event_time is missing (add it)" in result.output
