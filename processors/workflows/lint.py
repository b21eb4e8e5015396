"""Lint: what a workflow file, and the set of them, must hold beyond each field's own
checks. A workflow is refused when a step names an unknown step or exit, a path ends
without an exit state, a step is unreachable or the steps loop; the set is refused when a
workflow names an unknown workflow or stage, hand-offs go round in a cycle, two
workflows of a group share a priority, or runs of an old version have nowhere to
migrate. Each problem names its place (FILE:LINE, field) and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from streams import rules as rule_files

if TYPE_CHECKING:  # the models call lint from their validators
    from processors.workflows.definitions import Workflow
    from processors.workflows.library import Library


def check_workflow(workflow: Workflow) -> None:
    """Raise ValidationError listing every problem of one workflow (its steps' graph)."""
    errors: list[tuple[tuple[Any, ...], str]] = []
    ids = [s.id for s in workflow.steps]
    for i, step_id in enumerate(ids):
        if step_id in ids[:i]:
            errors.append((("steps", i, "id"), f"step {step_id!r} is defined twice"))
    known = set(ids)
    exits = workflow.exit_names()
    for i, step in enumerate(workflow.steps):
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
                    f"(declared: {', '.join(sorted(workflow.exits))})",
                )
            )
        chooses = step.kind in ("exit", "wait_for", "branch")
        if not chooses and step.next is None and i + 1 == len(workflow.steps):
            errors.append(
                (
                    ("steps", i),
                    f"step {step.id!r} is the last and ends no path: every path ends "
                    "in an exit step (add `- id: ...` with `exit: <state>` after it, "
                    "or give it `next:`)",
                )
            )
    if workflow.goal.exit not in exits:
        errors.append(
            (
                ("goal", "exit"),
                f"no exit state {workflow.goal.exit!r}: declare it under exits",
            )
        )
    for old, new in workflow.migrate_steps.items():
        if new not in known:
            errors.append((("migrate_steps", old), f"no step {new!r} in this version"))
    if not errors:  # the graph is only meaningful with every target known
        errors += _graph_errors(workflow)
    if errors:
        raise ValidationError.from_exception_data(
            type(workflow).__name__,
            [error_detail(loc, message, None) for loc, message in errors],
        )


def _graph_errors(workflow: Workflow) -> list[tuple[tuple[Any, ...], str]]:
    index = {s.id: i for i, s in enumerate(workflow.steps)}
    follows: dict[str, list[str]] = {}
    for step in workflow.steps:
        named = [target for _, target in step.targets()]
        if step.kind in ("exit", "wait_for", "branch"):
            follows[step.id] = named
        else:
            nxt = workflow.successor(step.id)
            follows[step.id] = [nxt] if nxt is not None else []
    errors: list[tuple[tuple[Any, ...], str]] = []
    reached: set[str] = set()
    pending = [workflow.steps[0].id]
    while pending:
        current = pending.pop()
        if current not in reached:
            reached.add(current)
            pending += follows[current]
    for step in workflow.steps:
        if step.id not in reached:
            errors.append(
                (
                    ("steps", index[step.id], "id"),
                    f"step {step.id!r} is unreachable: no step leads to it (name it in a "
                    "goto, next or on_timeout, or remove it)",
                )
            )
    loop = find_cycle(follows, workflow.steps[0].id)
    if loop:
        errors.append(
            (
                ("steps", index[loop[0]], "id"),
                f"steps loop: {' -> '.join(loop)}: a run moves forward to an exit (point "
                "the last of them at a later step or an exit)",
            )
        )
    return errors


def find_cycle(follows: dict[str, list[str]], start: str) -> list[str]:
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


def error_detail(loc: tuple[Any, ...], message: str, value: Any) -> InitErrorDetails:
    return {
        "type": PydanticCustomError("workflow", "{problem}", {"problem": message}),
        "loc": loc,
        "input": value,
    }


# ---- the set: what only every workflow together shows ----------------------------------


def set_problems(library: Library) -> list[str]:
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
        found = find_cycle(hand_offs, start)
        if found:
            return found
    return []
