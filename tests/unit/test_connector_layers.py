"""Sources and sinks are peers: neither imports the other. What both need lives in
``connectors/*.py`` or in the contract (``schemas``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CONNECTORS = Path(__file__).resolve().parents[2] / "connectors"


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize(("layer", "peer"), [("sources", "sinks"), ("sinks", "sources")])
def test_a_connector_layer_does_not_import_its_peer(layer: str, peer: str) -> None:
    wrong = [
        f"{path.relative_to(CONNECTORS.parent)}:{line} imports {module}"
        for path in sorted((CONNECTORS / layer).rglob("*.py"))
        for line, module in _imports(path)
        if module == f"connectors.{peer}" or module.startswith(f"connectors.{peer}.")
    ]
    assert not wrong, "move what both use to connectors/ or schemas/:\n" + "\n".join(wrong)
