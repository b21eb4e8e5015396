"""The README's map, "Follow one event: a Twilio call", against the repository: a module
renamed or a topic dropped from the catalog fails here instead of leaving a newcomer a
map of code that is no longer there.

In that section every token in backticks is read as one of:
- a path (it has a ``/`` and no space, and does not start with ``/``, a route): it must
  exist, relative to the repository root; a trailing ``/`` names a directory;
- a topic (lower-case words joined by hyphens, like ``events-by-contact``): it must be a
  short name in ``streams.topics.CATALOG``;
- anything else (commands, fields, ids with ``_``, ``:`` or upper case) is not checked.
A bare file name (``router.py``) is refused: the map names files by their full path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.topics import CATALOG

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Follow one event: a Twilio call"
TOPIC = re.compile(r"[a-z]+(?:-[a-z]+)*")
FILE_SUFFIXES = (".py", ".avsc", ".yaml", ".yml", ".json", ".sh", ".md")
# The hops the map exists to show: losing one means the section no longer follows the call.
HOPS = ("contact-events", "events-by-contact", "routing", "assignments", "crm-commands")


def section(text: str) -> str:
    """The map's text, from its heading to the next heading of the same level or higher."""
    start = text.index(HEADING)
    end = re.compile(r"^#{1,2} ", re.MULTILINE).search(text, start + len(HEADING))
    return text[start : end.start() if end else len(text)]


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def paths(tokens: list[str]) -> list[str]:
    return [t for t in tokens if "/" in t and " " not in t and not t.startswith("/")]


def topics(tokens: list[str]) -> list[str]:
    return [t for t in tokens if TOPIC.fullmatch(t)]


@pytest.fixture(scope="module")
def tokens() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in readme, f"README.md has no section {HEADING!r}"
    return backticked(section(readme))


def test_every_named_path_exists(tokens: list[str]) -> None:
    named = paths(tokens)
    assert len(named) >= 10, f"the map names too few files to follow: {named}"
    missing = [p for p in named if not (ROOT / p).exists()]
    assert not missing, f"the README's map names paths that do not exist: {missing}"
    not_dirs = [p for p in named if p.endswith("/") and not (ROOT / p).is_dir()]
    assert not not_dirs, f"named as directories but are not: {not_dirs}"


def test_files_are_named_by_their_full_path(tokens: list[str]) -> None:
    bare = [t for t in tokens if t.endswith(FILE_SUFFIXES) and "/" not in t and " " not in t]
    assert not bare, f"name these by their path from the repository root: {bare}"


def test_every_named_topic_is_in_the_catalog(tokens: list[str]) -> None:
    catalog = {spec.name for spec in CATALOG}
    named = topics(tokens)
    unknown = sorted(set(named) - catalog)
    assert not unknown, (
        f"the README's map names topics the catalog (streams/topics.py) does not have: "
        f"{unknown}; catalog: {sorted(catalog)}"
    )
    lost = [hop for hop in HOPS if hop not in named]
    assert not lost, f"the map no longer follows the call through {lost}"


def test_the_reader_understands_the_tokens() -> None:
    """The rules above, on the kinds of token the section holds."""
    sample = [
        "connectors/sources/twilio.py",
        "processors/rules/workflows/",
        "POST /webhooks/twilio",
        "/webhooks/twilio",
        "events-by-contact",
        "audit",
        "event_id",
        "twilio:<CallSid>:<CallStatus>",
        "switchboard sink crm",
        "X-Twilio-Signature",
    ]
    assert paths(sample) == ["connectors/sources/twilio.py", "processors/rules/workflows/"]
    assert topics(sample) == ["events-by-contact", "audit"]
    assert section("# A\n" + HEADING + "\nx `a`\n### sub\ny\n## Next\nz") == (
        HEADING + "\nx `a`\n### sub\ny\n"
    )
