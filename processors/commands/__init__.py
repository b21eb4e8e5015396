"""The processors' commands: ``worker``, ``lookup``, ``roster``, ``explain``,
``workflows`` and ``journeys``, registered on the root group (streams.cli) through the
``switchboard.commands`` entry points.

The processors themselves stay pure; what speaks to Kafka, to a worker over HTTP or to a
terminal for them lives here (``explain`` is the client of a worker's views)."""

from __future__ import annotations

import gc
import logging
import signal
import time
from pathlib import Path
from typing import Any

import click

from streams.commands import load_settings
from streams.rules import RuleFileError
from streams.settings import Settings


def register(main: click.Group) -> None:
    """The processors' commands join the root group."""
    for command in (worker, lookup, roster, explain_command, workflows, journeys):
        main.add_command(command)


@click.command()
def worker() -> None:
    """Run a processor worker until SIGINT/SIGTERM."""
    from processors.worker import build
    from streams.lag import GroupLag
    from streams.settings import secret
    from streams.topics import ensure_internal_topics
    from streams.web import TOKEN_SECRET, serve

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line per registry lookup
    logging.captureWarnings(True)
    try:
        engine, views = build(settings)
    except RuleFileError as exc:
        raise click.ClickException(
            f"invalid rule file, the worker does not start:\n{exc}"
        ) from None
    ensure_internal_topics(settings, engine.internal_topics())
    serve(
        settings.web_bind,
        settings.web_port,
        {"identifiers": views.identifier, "contacts": views.contact},
        secret(TOKEN_SECRET),
    )
    GroupLag(settings, settings.app_id, list(engine.routes)).start()
    signal.signal(signal.SIGTERM, engine.stop)
    signal.signal(signal.SIGINT, engine.stop)
    collect_for_a_worker()
    engine.run()


def collect_for_a_worker() -> None:
    """Tune the cyclic garbage collector for a worker's heap. What is loaded by now (the
    modules, the rules, the service areas' postcodes) lives as long as the process: frozen,
    no collection walks it again. A record's objects are freed by reference counting, yet
    each record allocates dozens: the young generation collected every 20,000 allocations
    rather than 700 stops the collector running every few records (it took about a tenth
    of a worker's CPU in bench_core)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


@click.command()
def lookup() -> None:
    """Serve the caller lookup (GET /v1/contacts/lookup?phone=…|email=…, Bearer token from
    SWITCHBOARD_SECRET_LOOKUP_TOKEN) from the workers' changelogs, until SIGINT/SIGTERM."""
    from processors.lookup import run as run_lookup

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per registry lookup
    run_lookup(load_settings())


@click.group()
def roster() -> None:
    """The rep roster (a compacted topic the router reads)."""


@roster.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def roster_load(file: Path) -> None:
    """Publish every rep in FILE (YAML: reps: [...]) to the roster topic."""
    from processors.routing import load_roster, rep_record

    try:
        reps = load_roster(file).reps
    except RuleFileError as exc:
        raise click.ClickException(f"invalid roster file:\n{exc}") from None
    _publish_roster(load_settings(), [(rep.rep_id, rep_record(rep)) for rep in reps])
    click.echo(f"published {len(reps)} reps: {', '.join(rep.rep_id for rep in reps)}")


@roster.command("remove")
@click.argument("rep_id")
def roster_remove(rep_id: str) -> None:
    """Remove REP_ID from the roster (a tombstone on the compacted topic)."""
    _publish_roster(load_settings(), [(rep_id, None)])
    click.echo(f"removed {rep_id}")


def _publish_roster(settings: Settings, reps: list[tuple[str, dict[str, Any] | None]]) -> None:
    """Each rep's record (``None``: a tombstone) on the roster topic, keyed by its id."""
    from streams.kafka import publish
    from streams.serde import AvroSerde, SerdeError, registry_client
    from streams.topics import REP_ROSTER

    serde = AvroSerde(
        registry_client(settings.schema_registry_url),
        REP_ROSTER.schema,
        REP_ROSTER.full_name(settings),
    )
    try:
        records = [
            (rep_id.encode(), None if record is None else serde.encode(record))
            for rep_id, record in reps
        ]
    except SerdeError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        publish(settings, serde.topic, records)
    except ConnectionError:
        raise click.ClickException("the roster could not be written to Kafka") from None


@click.command("explain")
@click.argument("who")
@click.option("--worker-url", help="A worker's web address [default: this host's web_port].")
def explain_command(who: str, worker_url: str | None) -> None:
    """What Switchboard knows about WHO (a contact id, or an identifier such as
    email:ana@example.com) and every decision that led there."""
    from processors.commands.explain import NotFound, explain

    try:
        click.echo(explain(load_settings(), who, worker_url))
    except (NotFound, ConnectionError, PermissionError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def workflows() -> None:
    """Check and try out workflow definitions."""


@workflows.command("lint")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
def workflows_lint(paths: tuple[Path, ...]) -> None:
    """Check workflow files or directories (the configured ones by default) as one set:
    every part declared, every step reachable, every path ending in an exit state, every
    wait bounded, no hand-off cycle."""
    from processors.workflows.library import load_library

    if not paths:
        configured = load_settings().workflows
        paths = (configured,) if configured else ()
    try:
        library = load_library(*paths)
    except RuleFileError as exc:
        raise click.ClickException(f"workflows rejected:\n{exc}") from None
    for workflow in library.workflows():
        versions = sorted(library.versions[workflow.name])
        click.echo(
            f"ok  {workflow.name} v{workflow.version} ({len(workflow.steps)} steps, exits: "
            f"{', '.join(workflow.exits)})"
            + (f"; older versions kept: {versions[:-1]}" if len(versions) > 1 else "")
        )


@workflows.command("simulate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--contact",
    "contact_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The contact's state before the first event (JSON, ContactState fields).",
)
@click.option(
    "--events",
    "events_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The timeline: JSON lines of event_type, event_time, payload.",
)
@click.option(
    "--until",
    type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M%z"]),
    help="Stop firing waits after this time [default: until every run has exited].",
)
def workflows_simulate(
    file: Path, contact_file: Path, events_file: Path, until: Any | None
) -> None:
    """Run the workflow in FILE against a scripted timeline, without Kafka: print its path
    and the commands and messages it would send (a dry run)."""
    from processors.pipeline import load_rules as load_pipeline
    from processors.scoring import load_model
    from processors.workflows.simulation import (
        ScriptError,
        library_for,
        read_contact,
        read_events,
        render,
        simulate,
    )

    try:
        library, name = library_for(file)
        result = simulate(
            library,
            read_contact(contact_file),
            read_events(events_file),
            load_model(),
            load_pipeline(),
            until,
            workflow=name,
        )
    except (RuleFileError, ScriptError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(render(result))


@click.command()
@click.argument("workflow", required=False)
@click.option(
    "--since",
    default="7d",
    show_default=True,
    help="How far back to read the audit topic (a duration: 12h, 7d, 2w).",
)
@click.option("--top", "top_n", default=5, show_default=True, help="Reasons shown of each kind.")
def journeys(workflow: str | None, since: str, top_n: int) -> None:
    """Where contacts progress, stall or divert: per workflow (or WORKFLOW) and step, the
    runs that entered, progressed, stalled, were diverted or converted, and their time in
    the step, from the audit topic since --since; then the top reasons for stalls and
    diversions. Stalled: still waiting at a step, longer than its expected time, now."""
    from processors.durations import parse_duration
    from processors.journeys import funnels, render
    from processors.workflows.library import load_library
    from streams.clock import clock_from_setting
    from streams.kafka import read_topic
    from streams.serde import AvroSerde, registry_client
    from streams.topics import AUDIT

    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    settings = load_settings()
    try:
        library = load_library(settings.workflows) if settings.workflows else load_library()
    except RuleFileError as exc:
        raise click.ClickException(f"workflows rejected:\n{exc}") from None
    if workflow is not None and library.current(workflow) is None:
        known = ", ".join(sorted(library.versions))
        raise click.BadParameter(f"no workflow {workflow!r} (known: {known})")
    # The pipeline's clock, as the workers keep it: what "now" is for a stall.
    now = clock_from_setting(settings.clock).now()
    topic = AUDIT.full_name(settings)
    serde = AvroSerde(registry_client(settings.schema_registry_url), AUDIT.schema, topic)
    # Kafka's timestamps are when the entries were written (the wall clock): the offsets
    # to start at. Their recorded_at is the pipeline's clock, which is the wall clock but
    # in tests and simulations: the window itself.
    since_ms = int((time.time() - window.total_seconds()) * 1000)
    messages = read_topic(settings, topic, since_ms=since_ms)
    decoded = (serde.decode(m.value()) for m in messages)
    # A run's entries are on one partition, in offset order; a stable sort by time keeps
    # that order and puts a merged contact's run (on another partition) in its place.
    entries = sorted(
        (e for e in decoded if e["recorded_at"] >= now - window), key=lambda e: e["recorded_at"]
    )
    if workflow is not None:
        entries = [e for e in entries if e["inputs"].get("workflow") == workflow]
    expected = {
        (flow.name, step.id): library.expected(flow, step.id)
        for flow in library.workflows()
        for step in flow.steps
    }
    order = {flow.name: [s.id for s in flow.steps] for flow in library.workflows()}
    click.echo(f"audit entries since {now - window:%Y-%m-%d %H:%M}Z: {len(entries)}", err=True)
    click.echo(render(funnels(entries, now, expected), order, top_n))
