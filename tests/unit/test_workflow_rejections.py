"""``load_library`` (and so ``switchboard workflows lint`` and the worker's start) refuses
each kind of malformed workflow with FILE:LINE, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from processors.workflows.library import load_library
from streams.rules import RuleFileError

VALID = """\
name: drip
version: 1
purpose: Welcome a lead and follow up once.
owner: ops@example.com
trigger: {event: FORM_SUBMITTED}
entry: {can_receive: EMAIL}
goal: {events: [{event: MEETING_BOOKED}], exit: booked}
steps:
  - id: welcome
    send: {channel: EMAIL, template: web_lead_welcome}
  - id: wait-for-reply
    wait_for: [{event: EMAIL_REPLIED, goto: replied}]
    timeout: 2d
    on_timeout: quiet
  - {id: quiet, exit: quiet}
  - {id: replied, exit: replied}
exits:
  booked: {tag: booked}
  replied: {tag: replied}
  quiet: {tag: quiet}
"""


def refused(tmp_path: Path, text: str, *others: str) -> str:
    (tmp_path / "drip.yaml").write_text(text)
    for i, other in enumerate(others):
        (tmp_path / f"other{i}.yaml").write_text(other)
    with pytest.raises(RuleFileError) as raised:
        load_library(tmp_path)
    return str(raised.value)


def test_the_valid_workflow_loads(tmp_path: Path) -> None:
    (tmp_path / "drip.yaml").write_text(VALID)
    assert load_library(tmp_path).current("drip") is not None


@pytest.mark.parametrize("part", ["trigger", "entry", "goal", "steps", "exits", "purpose", "owner"])
def test_a_missing_part_is_refused(tmp_path: Path, part: str) -> None:
    lines = VALID.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{part}:"))
    end = next(
        (i for i in range(start + 1, len(lines)) if not lines[i].startswith(" ")), len(lines)
    )
    message = refused(tmp_path, "".join(lines[:start] + lines[end:]))
    assert f"drip.yaml:1: field {part}: Field required (add it)" in message


# (what to change in VALID, the line the error names, what it says)
MALFORMED = {
    "an empty entry filter": (
        ("entry: {can_receive: EMAIL}", "entry: {}"),
        6,
        "field entry: an empty condition: give one, or `everyone: true`",
    ),
    "a wait with no timeout": (
        ("    timeout: 2d\n    on_timeout: quiet\n", ""),
        11,
        "field steps.1: a wait_for needs `timeout` and `on_timeout` (add both",
    ),
    "a step of two kinds": (
        (
            "    send: {channel: EMAIL, template: web_lead_welcome}",
            "    send: {channel: EMAIL, template: web_lead_welcome}\n    wait: 1d",
        ),
        9,
        "a step does exactly one of send, notify, task, update, wait, wait_until, wait_for, "
        "branch, exit (found: send, wait)",
    ),
    "a goto to an unknown step": (
        ("goto: replied}", "goto: answered}"),
        12,
        "field steps.1.wait_for.0.goto: no step 'answered' (steps: welcome, wait-for-reply, "
        "quiet, replied)",
    ),
    "an exit state that is not declared": (
        ("{id: quiet, exit: quiet}", "{id: quiet, exit: silent}"),
        15,
        "field steps.2.exit: no exit state 'silent': declare it under exits",
    ),
    "a goal exit that is not declared": (
        ("exit: booked}", "exit: won}"),
        7,
        "field goal.exit: no exit state 'won': declare it under exits",
    ),
    "an unreachable step": (
        (
            "  - {id: replied, exit: replied}\n",
            "  - {id: replied, exit: replied}\n  - {id: orphan, exit: quiet}\n",
        ),
        17,
        "field steps.4.id: step 'orphan' is unreachable: no step leads to it",
    ),
    "a path with no exit state": (
        (
            "  - {id: replied, exit: replied}\n",
            "  - {id: replied, exit: replied}\n"
            "  - {id: thanks, send: {channel: EMAIL, template: thanks}}\n",
        ),
        17,
        "step 'thanks' is the last and ends no path: every path ends in an exit step",
    ),
    "a loop between steps": (
        ("on_timeout: quiet", "on_timeout: welcome"),
        9,
        "field steps.0.id: steps loop: welcome -> wait-for-reply -> welcome",
    ),
    "an exit that leaves nothing": (
        ("  quiet: {tag: quiet}", "  quiet: {description: nothing}"),
        20,
        "field exits.quiet: an exit leaves a known state: give a tag, lifecycle_stage",
    ),
    "a branch without otherwise": (
        (
            "  - id: welcome\n    send: {channel: EMAIL, template: web_lead_welcome}\n",
            "  - id: welcome\n    branch: [{when: {band_in: [SQL]}, goto: quiet}]\n",
        ),
        9,
        "a branch needs `otherwise`: the step when no case holds",
    ),
    "on: instead of trigger:": (
        ("trigger: {event: FORM_SUBMITTED}", "on: {event: FORM_SUBMITTED}"),
        5,
        "`on:` reads as true in YAML: write `trigger:`",
    ),
    "an unquoted time of day": (
        (
            "  - {id: quiet, exit: quiet}\n",
            "  - {id: morning, wait_until: {time: 9:00}}\n  - {id: quiet, exit: quiet}\n",
        ),
        15,
        "is not a time of day: write it in quotes",
    ),
    "a bad reentry": (
        ("owner: ops@example.com", "owner: ops@example.com\nreentry: sometimes"),
        5,
        "reentry is never, after_exit, or a duration after the last exit",
    ),
    "a notification to the owner by Slack": (
        ("  quiet: {tag: quiet}", "  quiet: {notify: {to: owner, channel: SLACK, template: x}}"),
        20,
        "the owner is reached by e-mail: use channel EMAIL, or give an address",
    ),
    "an unknown lifecycle stage": (
        ("  quiet: {tag: quiet}", "  quiet: {lifecycle_stage: prospect}"),
        20,
        "'prospect' is not a lifecycle stage (policies.yaml lists: subscriber, lead,",
    ),
    "an entry filter on an unknown workflow": (
        ("entry: {can_receive: EMAIL}", "entry: {not_in_workflow: [onboarding]}"),
        6,
        "field entry.not_in_workflow: no workflow 'onboarding' (known: drip)",
    ),
    "a hand-off to an unknown workflow": (
        ("  quiet: {tag: quiet}", "  quiet: {hand_off: nurture}"),
        20,
        "field exits.quiet.hand_off: no workflow 'nurture' (known: drip)",
    ),
}


@pytest.mark.parametrize("change, line, says", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_workflow_is_refused_with_file_line_and_fix(
    tmp_path: Path, change: tuple[str, str], line: int, says: str
) -> None:
    old, new = change
    assert old in VALID
    message = refused(tmp_path, VALID.replace(old, new, 1))
    assert f"drip.yaml:{line}: " in message, message
    assert says in message, message


def other(name: str, hand_off: str) -> str:
    return VALID.replace("name: drip", f"name: {name}").replace(
        "  quiet: {tag: quiet}", f"  quiet: {{hand_off: {hand_off}}}"
    )


def test_a_hand_off_cycle_across_files_is_refused(tmp_path: Path) -> None:
    message = refused(
        tmp_path, other("drip", "nurture"), other("nurture", "winback"), other("winback", "drip")
    )
    assert (
        "drip.yaml:20: field exits.quiet.hand_off: hand-off cycle: drip -> nurture -> "
        "winback -> drip" in message
    )


def test_two_workflows_of_a_group_with_one_priority_are_refused(tmp_path: Path) -> None:
    grouped = VALID.replace("owner: ops@example.com", "owner: ops@example.com\ngroup: outreach")
    message = refused(tmp_path, grouped, grouped.replace("name: drip", "name: nurture"))
    assert (
        "has the same priority in group outreach: give each workflow of a group its own "
        "priority" in message
    )


def test_one_version_in_two_files_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, VALID, VALID)
    assert (
        "drip version 1 is also in" in message and "(give the new one a higher version)" in message
    )


def test_migrating_needs_a_place_for_every_old_wait(tmp_path: Path) -> None:
    renamed = VALID.replace("version: 1", "version: 2\non_new_version: migrate").replace(
        "id: wait-for-reply", "id: wait-for-answer"
    )
    message = refused(tmp_path, VALID, renamed)
    assert (
        "other0.yaml:3: field on_new_version: runs waiting at 'wait-for-reply' (version 1) "
        "have no step to migrate to: add `wait-for-reply: <step>` to migrate_steps" in message
    )
    mapped = renamed.replace(
        "on_new_version: migrate",
        "on_new_version: migrate\nmigrate_steps: {wait-for-reply: wait-for-answer}",
    )
    (tmp_path / "other0.yaml").write_text(mapped)
    library = load_library(tmp_path)
    assert sorted(library.versions["drip"]) == [1, 2]
    current = library.current("drip")
    assert current is not None and current.version == 2


def test_the_packaged_workflows_load() -> None:
    library = load_library()
    assert sorted(library.versions) == [
        "job-completed",
        "missed-call-text-back",
        "new-web-lead",
        "out-of-service-area",
        "payment-onboarding",
        "stale-deal-re-engagement",
        "voice-ai-qualified",
    ]
