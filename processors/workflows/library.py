"""The library: every loaded workflow by name and version, with the shared policies.

``load_library(dir)`` loads every workflow file in a directory with the shared policies
(``policies.yaml``: frequency caps, quiet hours, lifecycle stage order) and lints the
set (lint.py): a problem is refused with FILE:LINE and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from processors.workflows.definitions import Workflow
from processors.workflows.lint import set_problems
from processors.workflows.policies import POLICIES_FILE, Policies
from processors.workflows.steps import expected_time
from streams import rules as rule_files
from streams.rules import RuleFileError

DEFAULT_LIBRARY = Path(__file__).parent.parent / "rules" / "workflows"


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
        problems += set_problems(library)
    if problems:
        raise RuleFileError("\n".join(problems))
    return library
