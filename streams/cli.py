"""The ``switchboard`` command line."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import click
from pydantic import ValidationError

import schemas
from streams.registry import check_released, register_catalog
from streams.rules import RuleFileError
from streams.serde import SerdeError, registry_client
from streams.settings import CONFIG_ENV, Settings
from streams.topics import CATALOG, ensure_topics


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise click.ClickException(f"invalid settings:\n{exc}") from None


ONCE_SCRAPE_TIMEOUT_S = 10.0


@click.group()
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"TOML settings file (same as {CONFIG_ENV}); environment variables override it.",
)
def main(config: Path | None) -> None:
    """Switchboard: the orchestration layer between a CRM and the systems around it."""
    if config is not None:
        os.environ[CONFIG_ENV] = str(config)


@main.group()
def topics() -> None:
    """The topic catalog."""


@topics.command("create")
def topics_create() -> None:
    """Create the catalog's topics, or bring existing ones to the catalog's settings."""
    settings = _settings()
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
    settings = _settings()
    for spec in CATALOG:
        days = spec.retention_ms / 86_400_000
        click.echo(
            f"{spec.full_name(settings):36} partitions={settings.partitions} "
            f"rf={settings.replication_factor} {spec.cleanup_policy} retention={days:g}d "
            f"schema={spec.schema}  key: {spec.key}"
        )


@main.group("schemas")
def schemas_group() -> None:
    """The Avro contract in the Schema Registry."""


@schemas_group.command("register")
def schemas_register() -> None:
    """Register each catalog topic's value schema (idempotent)."""
    settings = _settings()
    for done in register_catalog(registry_client(settings.schema_registry_url), settings):
        click.echo(f"{done.subject:42} id={done.schema_id} version={done.version}")


@schemas_group.command("check")
def schemas_check() -> None:
    """Fail if a schema is not BACKWARD compatible with its released versions."""
    settings = _settings()
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


@main.command()
def worker() -> None:
    """Run a processor worker until SIGINT/SIGTERM."""
    from processors.worker import build
    from streams.lag import GroupLag
    from streams.settings import secret
    from streams.topics import ensure_internal_topics
    from streams.web import TOKEN_SECRET, serve

    settings = _settings()
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
    engine.run()


@main.command()
def gateway() -> None:
    """Run the webhook gateway (POST /webhooks/<source>) until SIGINT/SIGTERM.

    Each source is served only when its signing secret is set in
    SWITCHBOARD_SECRET_<SOURCE> (e.g. SWITCHBOARD_SECRET_STRIPE)."""
    from connectors.sources.gateway import run as run_gateway

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    run_gateway(_settings())


@main.command()
def lookup() -> None:
    """Serve the caller lookup (GET /v1/contacts/lookup?phone=…|email=…, Bearer token from
    SWITCHBOARD_SECRET_LOOKUP_TOKEN) from the workers' changelogs, until SIGINT/SIGTERM."""
    from processors.lookup import run as run_lookup

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per registry lookup
    run_lookup(_settings())


def _own_logs_at(level: str) -> None:
    """Switchboard's own records at ``level``; libraries' (HTTP clients) only when they
    warn."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("switchboard").setLevel(level.upper())


def _until_signalled(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``run(stop)`` until it returns; SIGINT or SIGTERM sets ``stop``, so what is in
    flight finishes first."""

    async def main_loop() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(main_loop())


@main.command()
@click.argument("which", type=click.Choice(["crm", "notify", "billing"]))
def sink(which: str) -> None:
    """Run a sink until SIGINT/SIGTERM: ``crm`` writes CRM commands to the configured CRM
    (crm_backend: sql, hubspot, salesforce), ``notify`` sends notifications through the
    configured channels, ``billing`` invoices completed jobs in the billing system
    (billing_backend: stripe). The batch in flight finishes before it stops."""

    from connectors.sinks.factory import SinkConfigError, SinkName, build_sink
    from streams import metrics

    settings = _settings()
    _own_logs_at(settings.log_level)
    try:
        runner = build_sink(settings, cast(SinkName, which))
    except SinkConfigError as exc:
        raise click.ClickException(str(exc)) from None
    metrics.serve(settings.metrics_port, settings.metrics_bind)
    _until_signalled(runner.run)


@main.command()
def enrich() -> None:
    """Run the enrichment connector until SIGINT/SIGTERM: new contacts' e-mails and
    company domains are looked up at the provider in enrichment_url (token:
    SWITCHBOARD_SECRET_ENRICHMENT_TOKEN) and published back as CONTACT_ENRICHED events."""

    from connectors.sources.enrichment import EnrichmentConfigError
    from connectors.sources.enrichment import run as run_enrichment
    from streams import metrics

    settings = _settings()
    _own_logs_at(settings.log_level)
    metrics.serve(settings.metrics_port, settings.metrics_bind)
    try:
        _until_signalled(lambda stop: run_enrichment(settings, stop))
    except EnrichmentConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", required=True, help="contacts (CSV) or a webhook source (JSONL).")
@click.option(
    "--system",
    default="crm",
    show_default=True,
    help="For contacts: the CRM the export came from (the events' source_system).",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where rejected rows go [default: FILE.rejected.jsonl].",
)
def import_file(file: Path, source: str, system: str, report: Path | None) -> None:
    """Backfill FILE (CSV or JSONL) through the same mapping and validation as the gateway."""
    from connectors.sources.importer import run_import

    try:
        summary = run_import(_settings(), file, source, system=system, report=report)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--source") from None
    click.echo(
        f"{summary.rows} rows: {summary.accepted_rows} accepted ({summary.events} events), "
        f"{summary.rejected} rejected"
    )
    if summary.report is not None:
        click.echo(f"rejected rows and their reasons: {summary.report}")
    if summary.undelivered:
        for line in summary.undelivered[:20]:
            click.echo(f"  not written: {line}", err=True)
        more = len(summary.undelivered) - 20
        if more > 0:
            click.echo(f"  ... and {more} more", err=True)
        raise click.ClickException(
            f"{len(summary.undelivered)} rows were not written to Kafka: import the "
            "file again once it is reachable (rows already written are not duplicated)"
        )


@main.command()
@click.option(
    "--rate",
    type=float,
    default=50.0,
    show_default=True,
    help="Webhooks per second; 0 sends as fast as the target takes them.",
)
@click.option("--duration", type=float, help="Seconds to run.")
@click.option("--count", type=int, help="Webhooks to send.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same feed.")
@click.option(
    "--target",
    type=click.Choice(["gateway", "kafka"]),
    default="gateway",
    show_default=True,
    help="Through the gateway over HTTP, or mapped straight to Kafka.",
)
@click.option("--gateway-url", help="[default: the configured gateway address]")
@click.option("--concurrency", type=int, default=64, show_default=True)
def loadgen(
    rate: float,
    duration: float | None,
    count: int | None,
    seed: int,
    target: str,
    gateway_url: str | None,
    concurrency: int,
) -> None:
    """Drive the pipeline with a realistic multi-system feed (provider webhook formats).

    Through the gateway, each request is signed with SWITCHBOARD_SECRET_<SOURCE>; sources
    without a secret are left out of the feed."""
    import asyncio

    from connectors.sources.gateway import secrets_from_environment
    from connectors.sources.loadgen import run_load

    if duration is None and count is None:
        duration = 60.0
    secrets = secrets_from_environment() if target == "gateway" else None
    if secrets is not None and not secrets:
        raise click.ClickException("no SWITCHBOARD_SECRET_<SOURCE> is set: nothing can be signed")
    report = asyncio.run(
        run_load(
            _settings(),
            rate=rate,
            duration=duration,
            count=count,
            seed=seed,
            target=target,
            gateway_url=gateway_url,
            secrets=secrets,
            concurrency=concurrency,
        )
    )
    click.echo(report.summary())


@main.group()
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
    _publish_roster(_settings(), [(rep.rep_id, rep_record(rep)) for rep in reps])
    click.echo(f"published {len(reps)} reps: {', '.join(rep.rep_id for rep in reps)}")


@roster.command("remove")
@click.argument("rep_id")
def roster_remove(rep_id: str) -> None:
    """Remove REP_ID from the roster (a tombstone on the compacted topic)."""
    _publish_roster(_settings(), [(rep_id, None)])
    click.echo(f"removed {rep_id}")


def _publish_roster(settings: Settings, reps: list[tuple[str, dict[str, Any] | None]]) -> None:
    from confluent_kafka import Producer

    from streams.kafka import producer_config
    from streams.serde import AvroSerde
    from streams.topics import REP_ROSTER

    serde = AvroSerde(
        registry_client(settings.schema_registry_url),
        REP_ROSTER.schema,
        REP_ROSTER.full_name(settings),
    )
    producer = Producer(producer_config(settings))
    for rep_id, record in reps:
        try:
            value = None if record is None else serde.encode(record)
        except SerdeError as exc:
            raise click.ClickException(str(exc)) from None
        producer.produce(serde.topic, key=rep_id.encode(), value=value)
    if producer.flush(30):
        raise click.ClickException("the roster could not be written to Kafka")


@main.command()
@click.argument("who")
@click.option("--worker-url", help="A worker's web address [default: this host's web_port].")
def explain(who: str, worker_url: str | None) -> None:
    """What Switchboard knows about WHO (a contact id, or an identifier such as
    email:ana@example.com) and every decision that led there."""
    from processors.explain import NotFound
    from processors.explain import explain as explain_contact

    try:
        click.echo(explain_contact(_settings(), who, worker_url))
    except (NotFound, ConnectionError, PermissionError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("urls", nargs=-1)
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds.")
@click.option("--once", is_flag=True, help="Print one view (over one interval) and stop.")
def top(urls: tuple[str, ...], interval: float, once: bool) -> None:
    """A live view of a running pipeline from its processes' /metrics URLS [default: what
    `make run` starts: the worker, the gateway and the two sinks on their configured ports].
    Ctrl-C stops it (and nothing else)."""
    from rich.console import Console

    from streams import live

    settings = _settings()
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


@main.group()
def workflows() -> None:
    """Check and try out workflow definitions."""


@workflows.command("lint")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
def workflows_lint(paths: tuple[Path, ...]) -> None:
    """Check workflow files or directories (the configured ones by default) as one set:
    every part declared, every step reachable, every path ending in an exit state, every
    wait bounded, no hand-off cycle."""
    from processors.workflow import load_library

    if not paths:
        configured = _settings().workflows
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
    from processors.workflow_simulation import (
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


@main.command()
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
    from processors.workflow import load_library
    from streams.clock import clock_from_setting
    from streams.kafka import read_topic
    from streams.serde import AvroSerde
    from streams.topics import AUDIT

    try:
        window = parse_duration(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    settings = _settings()
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


@main.group()
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

    letters = select(_letters(_settings()), stage=stage)
    for letter in letters:
        click.echo(letter.line())
    click.echo(f"{len(letters)} dead letters", err=True)


@dlq.command("show")
@click.argument("letter_id")
def dlq_show(letter_id: str) -> None:
    """Everything one dead letter holds (LETTER_ID or a unique prefix of it)."""
    from streams.dead_letters import catalog_serdes, describe, select

    settings = _settings()
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
    settings = _settings()
    chosen = select(_letters(settings), ids=letter_ids, stage=stage)
    replayed, skipped = replay(settings, chosen)
    for letter in skipped:
        click.echo(f"{letter.id}: not replayable, it never reached a topic; resend at the source")
    click.echo(f"replayed {len(replayed)} dead letters, skipped {len(skipped)}")


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Prepare topics and schemas, then run a worker: the embedded default pipeline."""
    ctx.invoke(topics_create)
    ctx.invoke(schemas_register)
    ctx.invoke(worker)


if __name__ == "__main__":
    sys.exit(main())
