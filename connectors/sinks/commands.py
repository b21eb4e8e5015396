"""The sinks' command: ``sink crm|notify|billing``, registered on the root group
(streams.cli) through the ``switchboard.commands`` entry points."""

from __future__ import annotations

from typing import cast

import click

from streams.commands import load_settings, own_logs_at, until_signalled


def register(main: click.Group) -> None:
    """The sinks' command joins the root group."""
    main.add_command(sink)


@click.command()
@click.argument("which", type=click.Choice(["crm", "notify", "billing"]))
def sink(which: str) -> None:
    """Run a sink until SIGINT/SIGTERM: ``crm`` writes CRM commands to the configured CRM
    (crm_backend: sql, hubspot, salesforce), ``notify`` sends notifications through the
    configured channels, ``billing`` invoices completed jobs in the billing system
    (billing_backend: stripe). The batch in flight finishes before it stops."""

    from connectors.sinks.factory import SinkConfigError, SinkName, build_sink
    from streams import metrics

    settings = load_settings()
    own_logs_at(settings.log_level)
    try:
        runner = build_sink(settings, cast(SinkName, which))
    except SinkConfigError as exc:
        raise click.ClickException(str(exc)) from None
    metrics.serve(settings.metrics_port, settings.metrics_bind)
    until_signalled(runner.run)
