"""The ``switchboard`` command line: the root group that assembles every layer's commands.

Each layer (spine, sources, processors, sinks) declares a ``register(main)`` in the
``switchboard.commands`` entry points (pyproject.toml); the root loads them the first
time a command is asked for, so the spine imports nothing above it."""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click

from streams.settings import CONFIG_ENV

COMMANDS_GROUP = "switchboard.commands"
# The flow's order; a layer not named here comes after these.
LAYERS = ("spine", "sources", "processors", "sinks")


class Root(click.Group):
    """A group whose commands come from the layers' entry points, loaded once, when
    first needed (listing them for --help, or resolving one to run)."""

    _assembled = False

    def _assemble(self) -> None:
        if self._assembled:
            return
        self._assembled = True
        found = entry_points(group=COMMANDS_GROUP)
        if not found:
            raise click.ClickException(
                f"no commands are installed (no {COMMANDS_GROUP!r} entry points): "
                "run `make install`"
            )
        rank = {name: i for i, name in enumerate(LAYERS)}
        for layer in sorted(found, key=lambda ep: (rank.get(ep.name, len(LAYERS)), ep.name)):
            layer.load()(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._assemble()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._assemble()
        return super().get_command(ctx, cmd_name)


@click.group(cls=Root)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"TOML settings file (same as {CONFIG_ENV}); environment variables override it.",
)
def main(config: Path | None) -> None:
    """Switchboard: the orchestration layer between a CRM and the systems around it."""
    if config is not None:
        os.environ[CONFIG_ENV] = str(config)


def _command(ctx: click.Context, *path: str) -> click.Command:
    """A layer's command by its name on the command line (``topics create``)."""
    command: click.Command = main
    for name in path:
        found = command.get_command(ctx, name) if isinstance(command, click.Group) else None
        if found is None:
            raise click.ClickException(f"no `switchboard {' '.join(path)}` is installed")
        command = found
    return command


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Prepare topics and schemas, then run a worker: the embedded default pipeline."""
    # By name: the root composes the layers without importing them.
    ctx.invoke(_command(ctx, "topics", "create"))
    ctx.invoke(_command(ctx, "schemas", "register"))
    ctx.invoke(_command(ctx, "worker"))


if __name__ == "__main__":
    sys.exit(main())
