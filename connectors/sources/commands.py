"""The sources' commands: ``gateway``, ``import``, ``loadgen`` and ``enrich``, registered
on the root group (streams.cli) through the ``switchboard.commands`` entry points."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from streams.commands import load_settings, own_logs_at, until_signalled


def register(main: click.Group) -> None:
    """The sources' commands join the root group."""
    for command in (gateway, enrich, import_file, loadgen):
        main.add_command(command)


@click.command()
def gateway() -> None:
    """Run the webhook gateway (POST /webhooks/<source>) until SIGINT/SIGTERM.

    Each source is served only when its signing secret is set in
    SWITCHBOARD_SECRET_<SOURCE> (e.g. SWITCHBOARD_SECRET_STRIPE)."""
    from connectors.sources.gateway import run as run_gateway

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    run_gateway(load_settings())


@click.command()
def enrich() -> None:
    """Run the enrichment connector until SIGINT/SIGTERM: new contacts' e-mails and
    company domains are looked up at the provider in enrichment_url (token:
    SWITCHBOARD_SECRET_ENRICHMENT_TOKEN) and published back as CONTACT_ENRICHED events."""

    from connectors.sources.enrichment import EnrichmentConfigError
    from connectors.sources.enrichment import run as run_enrichment
    from streams import metrics

    settings = load_settings()
    own_logs_at(settings.log_level)
    metrics.serve(settings.metrics_port, settings.metrics_bind)
    try:
        until_signalled(lambda stop: run_enrichment(settings, stop))
    except EnrichmentConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("import")
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
        summary = run_import(load_settings(), file, source, system=system, report=report)
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


@click.command()
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
            load_settings(),
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
