"""The layers import only downwards: the contract (``schemas``) and the spine
(``streams``) nothing above them; sources, processors and sinks only the two below and
``connectors/*.py``, never each other. They meet in topics and schemas."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Each layer, the modules it holds, and the layers it may not import.
LAYERS = {
    "schemas": ("schemas", {"streams", "processors", "connectors"}),
    "streams": ("streams", {"processors", "connectors"}),
    "sources": ("connectors.sources", {"processors", "connectors.sinks"}),
    "processors": ("processors", {"connectors"}),
    "sinks": ("connectors.sinks", {"processors", "connectors.sources"}),
}


def imported(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_no_layer_imports_one_above_it_or_beside_it() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module} ({layer} may not)"
        for layer, (package, forbidden) in LAYERS.items()
        for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py"))
        for line, module in imported(path)
        if any(module == f or module.startswith(f"{f}.") for f in forbidden)
    ]
    assert not wrong, "move what both sides use down a layer:\n" + "\n".join(wrong)
