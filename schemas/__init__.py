"""The Avro contract: one ``.avsc`` per record, and ``released/`` snapshots of each
released version (``<name>.v<N>.avsc``) that every change must stay BACKWARD
compatible with."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

SCHEMA_DIR = Path(__file__).parent
RELEASED_DIR = SCHEMA_DIR / "released"

_RELEASED = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


def names() -> list[str]:
    """The current schemas, by file stem (``contact_event``, ``crm_command``, ...)."""
    return sorted(p.stem for p in SCHEMA_DIR.glob("*.avsc"))


@cache
def schema_text(name: str) -> str:
    path = SCHEMA_DIR / f"{name}.avsc"
    if not path.is_file():
        raise KeyError(f"no schema named {name!r} in {SCHEMA_DIR} (have: {', '.join(names())})")
    return path.read_text()


def schema_json(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text(name))
    return loaded


@cache
def parsed(name: str) -> Any:
    """The fastavro-parsed schema, for validation and local encoding."""
    return fastavro.parse_schema(schema_json(name))


def released(name: str) -> list[tuple[int, str]]:
    """Every released version of ``name`` as (version, schema text), oldest first."""
    found = []
    for path in RELEASED_DIR.glob(f"{name}.v*.avsc"):
        match = _RELEASED.match(path.name)
        if match and match["name"] == name:
            found.append((int(match["version"]), path.read_text()))
    return sorted(found)
