"""The ``switchboard`` root assembles each layer's commands from its entry point
(tests/unit/test_layers.py keeps the spine free of imports from above)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import streams.cli
from streams.cli import Root, main

LAYERS_COMMANDS = {
    "spine": {"topics", "schemas", "top", "dlq"},
    "sources": {"gateway", "import", "loadgen", "enrich"},
    "processors": {"worker", "lookup", "roster", "explain", "workflows", "journeys"},
    "sinks": {"sink"},
}


def test_the_root_holds_every_layers_commands_and_its_own_run() -> None:
    listed = main.list_commands(click.Context(main))
    assert listed == sorted(set().union(*LAYERS_COMMANDS.values()) | {"run"})


def test_without_the_entry_points_the_root_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(streams.cli, "entry_points", lambda group: ())
    result = CliRunner().invoke(Root(name="switchboard"), ["--help"])
    assert result.exit_code == 1
    assert "run `make install`" in result.output
