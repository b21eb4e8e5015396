"""The spine's commands (``topics``, ``schemas``, ``top``, ``dlq``) and what every layer's
commands share: settings loaded with a clear error, the logging setup, the signal loop.

Each layer registers its own commands on the root group (streams.cli) through the
``switchboard.commands`` entry points; this module is the spine's, and imports nothing
above the spine."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import click
from pydantic import ValidationError

import schemas
from streams.registry import check_released, register_catalog
from streams.serde import registry_client
from streams.settings import Settings
from streams.topics import CATALOG, ensure_topics

ONCE_SCRAPE_TIMEOUT_S = 10.0


def load_settings() -> Settings:
    """The settings, or a click error that names what is wrong with them."""
    try:
        return Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings:\n{exc}") from None


def own_logs_at(level: str) -> None:
    """Switchboard's own records at ``level``; libraries' (HTTP clients) only when they
    warn."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("switchboard").setLevel(level.upper())


def until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``run(stop)`` until it returns; SIGINT or SIGTERM sets ``stop``, so what is in
    flight finishes first."""

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(main_loop())


def register(main: click.Group) -> None:
    """The spine's commands join the root group."""
    for command in (topics, schemas_group, top, dlq):
        main.add_command(command)


@click.group()
def topics() -> None:
    """The topic catalog."""


@topics.command("create")
def topics_create() -> None:
    """Create the catalog's topics, or bring existing ones to the catalog's settings."""
    settings = load_settings()
    problems = 0
    for change in ensure_topics(settings):
        click.echo(
            f"{change.action:9} {change.topic}{'  ' + change.detail if change.detail else ''}"
        )
        problems += change.action == "mismatch"
    if problems:
        raise click.ClickException(f"{problems} topic(s) differ from the catalog; see above")


@topics.command("list")
def topics_list() -> None:
    """Print the catalog: name, key, value schema, cleanup and retention."""
    settings = load_settings()
    for spec in CATALOG:
        days = spec.retention_ms / 86_400_000
        click.echo(
            f"{spec.full_name(settings):36} partitions={settings.partitions} "
            f"rf={settings.replication_factor} {spec.cleanup_policy} retention={days:g}d "
            f"schema={spec.schema}  key: {spec.key}"
        )


@click.group("schemas")
def schemas_group() -> None:
    """The Avro contract in the Schema Registry."""


@schemas_group.command("register")
def schemas_register() -> None:
    """Register each catalog topic's value schema (idempotent)."""
    settings = load_settings()
    for done in register_catalog(registry_client(settings.schema_registry_url), settings):
        click.echo(f"{done.subject:42} id={done.schema_id} version={done.version}")


@schemas_group.command("check")
def schemas_check() -> None:
    """Fail if a schema is not BACKWARD compatible with its released versions."""
    settings = load_settings()
    client = registry_client(settings.schema_registry_url)
    failed = 0
    for name in schemas.names():
        for result in check_released(client, schemas.schema_text(name), name):
            verdict = "compatible" if result.compatible else "INCOMPATIBLE"
            click.echo(f"{name:16} vs v{result.against_version}: {verdict}")
            for message in result.messages:
                click.echo(f"    {message}")
            failed += not result.compatible
    if failed:
        raise click.ClickException(f"{failed} schema change(s) break BACKWARD compatibility")


@click.command()
@click.argument("urls", nargs=-1)
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds.")
@click.option("--once", is_flag=True, help="Print one view (over one interval) and stop.")
def top(urls: tuple[str, ...], interval: float, once: bool) -> None:
    """A live view of a running pipeline from its processes' /metrics URLS [default: what
    `make run` starts: the worker, the gateway and the two sinks on their configured ports].
    Ctrl-C stops it (and nothing else)."""
    from rich.console import Console

    from streams import live

    settings = load_settings()
    targets = list(urls) or [
        f"http://127.0.0.1:{settings.web_port}/metrics",
        f"http://127.0.0.1:{settings.gateway_port}/metrics",
        f"http://127.0.0.1:{settings.metrics_port}/metrics",
        f"http://127.0.0.1:{settings.metrics_port + 1}/metrics",
    ]
    if once:
        # One look, nothing to keep fresh: a busy process gets longer to answer before
        # it is called down.
        before = live.read(targets, timeout=ONCE_SCRAPE_TIMEOUT_S)
        time.sleep(interval)
        after = live.read(targets, timeout=ONCE_SCRAPE_TIMEOUT_S)
        Console().print(live.render(live.view(before, after)))
        return
    live.watch(targets, interval)


@click.group()
def dlq() -> None:
    """Inspect and replay the dead-letter topic."""


def _letters(settings: Settings) -> list[Any]:
    from streams.dead_letters import read_letters
    from streams.serde import AvroSerde
    from streams.topics import DEAD_LETTERS

    registry = registry_client(settings.schema_registry_url)
    return read_letters(
        settings, AvroSerde(registry, DEAD_LETTERS.schema, DEAD_LETTERS.full_name(settings))
    )


@dlq.command("list")
@click.option("--stage", help="Only the letters of this stage (e.g. identity, sink-hubspot).")
def dlq_list(stage: str | None) -> None:
    """One line per dead letter, oldest first."""
    from streams.dead_letters import select

    letters = select(_letters(load_settings()), stage=stage)
    for letter in letters:
        click.echo(letter.line())
    click.echo(f"{len(letters)} dead letters", err=True)


@dlq.command("show")
@click.argument("letter_id")
def dlq_show(letter_id: str) -> None:
    """Everything one dead letter holds (LETTER_ID or a unique prefix of it)."""
    from streams.dead_letters import catalog_serdes, describe, select

    settings = load_settings()
    found = select(_letters(settings), ids=[letter_id])
    if len(found) != 1:
        raise click.ClickException(f"{len(found)} dead letters match {letter_id!r}")
    serdes = catalog_serdes(settings, registry_client(settings.schema_registry_url))
    click.echo(describe(found[0], serdes))


@dlq.command("replay")
@click.argument("letter_ids", nargs=-1)
@click.option("--stage", help="Replay every letter of this stage.")
@click.option("--all", "everything", is_flag=True, help="Replay every letter.")
def dlq_replay(letter_ids: tuple[str, ...], stage: str | None, everything: bool) -> None:
    """Put dead letters back on the topics they came from. Idempotent: the records'
    own ids let every reader drop what it has already processed or delivered."""
    from streams.dead_letters import replay, select

    if not (letter_ids or stage or everything):
        raise click.UsageError("name LETTER_IDS, or --stage STAGE, or --all")
    settings = load_settings()
    chosen = select(_letters(settings), ids=letter_ids, stage=stage)
    replayed, skipped = replay(settings, chosen)
    for letter in skipped:
        click.echo(f"{letter.id}: not replayable, it never reached a topic; resend at the source")
    click.echo(f"replayed {len(replayed)} dead letters, skipped {len(skipped)}")
