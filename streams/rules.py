"""Loading rule files (scoring models, routing rules, SLA policies, workflows): YAML
validated by a pydantic model at load, so an invalid file never starts anything.

Every problem is reported as ``FILE:LINE: field PATH: what is wrong (fix)``, with the
line of the offending value in the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)

_FIXES = {
    "missing": "add it",
    "extra_forbidden": "remove it, or check its spelling",
    "literal_error": "use one of the values listed",
    "enum": "use one of the values listed",
}


class RuleModel(BaseModel):
    """Base of rule-file models: unknown keys are errors (a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def unique_names(items: list[Any], what: str) -> None:
    """Refuse two items of one list with the same ``name`` (rules, policies, steps)."""
    names = [item.name for item in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


class RuleFileError(ValueError):
    """An invalid rule file; one line per problem."""


def load(path: Path, model: type[M]) -> M:
    try:
        text = path.read_text()
    except OSError as exc:
        raise RuleFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RuleFileError(f"{where}: not valid YAML: {problem}") from None
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise RuleFileError(
            "\n".join(_describe(path, root, error) for error in exc.errors())
        ) from None


def where(path: Path, loc: list[Any]) -> str:
    """``FILE:LINE`` of the value at ``loc`` in a rule file (for problems found after
    validation, across files)."""
    try:
        root = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        root = None
    return f"{path}:{_line_of(root, loc)}"


def _describe(path: Path, root: yaml.Node | None, error: Any) -> str:
    loc = [part for part in error["loc"] if not _is_tag(part)]
    line = _line_of(root, loc)
    field = ".".join(str(part) for part in loc) or "(file)"
    fix = _FIXES.get(error["type"])
    message = str(error["msg"])
    if error["type"].startswith("value_error"):
        message = message.removeprefix("Value error, ")
    return f"{path}:{line}: field {field}: {message}" + (f" ({fix})" if fix else "")


def _is_tag(part: Any) -> bool:
    # pydantic puts the chosen member of a tagged union into the location; YAML has no such key.
    return isinstance(part, str) and part.startswith("function-")


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int:
    """1-based line of the value at ``loc``; for a missing key, its parent's line."""
    if node is None:
        return 1
    line: int = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            return line
        node = child
    return line
