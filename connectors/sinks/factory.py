"""Settings in, sinks out: which destinations this deployment delivers to, with which
secrets (from the environment only). A destination that is chosen but lacks a setting or
a secret stops the sink at start with a message that names what is missing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from connectors.delivery import Destination
from connectors.sinks.runtime import Limits, Sink
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings, secret, secret_env
from streams.topics import BILLING_COMMANDS, CRM_COMMANDS, DEAD_LETTERS, NOTIFICATIONS, TopicSpec

SinkName = Literal["crm", "notify", "billing"]


class SinkConfigError(ValueError):
    pass


def _secret(name: str, wanted_by: str) -> str:
    value = secret(name)
    if value is None:
        raise SinkConfigError(f"{wanted_by} needs the environment variable {secret_env(name)}")
    return value


def crm_destination(settings: Settings) -> Destination:
    backend = settings.crm_backend
    owners = settings.crm_owner_ids or None
    if backend == "sql":
        from connectors.sinks.crm.sql import open_store

        return open_store(settings.crm_database_url)
    if backend == "hubspot":
        from connectors.sinks.crm.hubspot import HubSpotWriter

        return HubSpotWriter(
            _secret("hubspot_token", "crm_backend=hubspot"),
            base_url=settings.hubspot_url,
            owner_ids=owners,
            stage_names=settings.crm_stage_names,
            job_object=settings.hubspot_job_object,
            timeout_s=settings.http_timeout_s,
        )
    from connectors.sinks.crm.salesforce import SalesforceWriter

    if not settings.salesforce_url:
        raise SinkConfigError("crm_backend=salesforce needs SWITCHBOARD_SALESFORCE_URL")
    return SalesforceWriter(
        settings.salesforce_url,
        _secret("salesforce_token", "crm_backend=salesforce"),
        owner_ids=owners,
        stage_names=settings.crm_stage_names,
        timeout_s=settings.http_timeout_s,
    )


def recipient_urls(routes: dict[str, str], setting: str) -> dict[str, str]:
    """A recipient -> secret name map (settings ``setting``) with each secret read: the
    URLs carry tokens, so they live in the environment only."""
    return {
        recipient: _secret(name, f"{setting}[{recipient!r}]") for recipient, name in routes.items()
    }


def notify_destinations(settings: Settings) -> dict[str, Destination]:
    """The channels this deployment has settings for, by name (``slack``, ``email``,
    ``sms``, ``webhook``, ``outbox``)."""
    found: dict[str, Destination] = {}
    timeout = settings.http_timeout_s
    slack_url = secret("slack_webhook_url")
    slack_routes = recipient_urls(settings.slack_recipients, "slack_recipients")
    if slack_url or slack_routes:
        from connectors.sinks.notify.slack import SlackChannel

        found["slack"] = SlackChannel(slack_url, timeout=timeout, recipients=slack_routes)
    if settings.smtp_host:
        from connectors.sinks.notify.email import EmailChannel

        found["email"] = EmailChannel(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_sender,
            starttls=settings.smtp_starttls and not settings.smtp_implicit_tls,
            implicit_tls=settings.smtp_implicit_tls,
            username=settings.smtp_username,
            password=_secret("smtp_password", "smtp_username") if settings.smtp_username else None,
            timeout=timeout,
        )
    if settings.twilio_account_sid:
        from connectors.sinks.notify.sms import SmsChannel

        if not settings.twilio_from:
            raise SinkConfigError("twilio_account_sid needs SWITCHBOARD_TWILIO_FROM")
        found["sms"] = SmsChannel(
            settings.twilio_account_sid,
            _secret("twilio_auth_token", "twilio_account_sid"),
            settings.twilio_from,
            base_url=settings.twilio_url,
            timeout=timeout,
        )
    webhook_routes = recipient_urls(settings.webhook_recipients, "webhook_recipients")
    if settings.notify_webhook_url or webhook_routes:
        from connectors.sinks.notify.webhook import WebhookChannel

        found["webhook"] = WebhookChannel(
            settings.notify_webhook_url,
            _secret(
                "notify_webhook_key",
                "notify_webhook_url" if settings.notify_webhook_url else "webhook_recipients",
            ),
            timeout=timeout,
            recipients=webhook_routes,
        )
    if settings.notify_outbox is not None:
        from connectors.sinks.notify.outbox import OutboxChannel

        found["outbox"] = OutboxChannel(settings.notify_outbox)
    return found


def billing_destination(settings: Settings) -> Destination:
    """The billing system of ``billing_backend`` (Stripe, the one there is)."""
    from connectors.sinks.billing.stripe import StripeInvoicer

    return StripeInvoicer(
        _secret("stripe_api_key", "billing_backend=stripe"),
        settings.stripe_api_url,
        collection_method=settings.billing_collection_method,
        days_until_due=settings.billing_days_until_due,
        timeout_s=settings.http_timeout_s,
    )


def notify_route(destinations: dict[str, Destination]) -> Callable[[dict[str, Any]], str]:
    def route(record: dict[str, Any]) -> str:
        channel = str(record["channel"]).lower()
        if channel not in destinations and "outbox" in destinations:
            return "outbox"
        return channel  # an unconfigured channel: the runtime dead-letters it, named

    return route


def build_sink(settings: Settings, which: SinkName) -> Sink:
    registry = registry_client(settings.schema_registry_url)

    def serde(spec: TopicSpec) -> AvroSerde:
        return AvroSerde(
            registry, spec.schema, spec.full_name(settings), discriminator=spec.discriminator
        )

    common: dict[str, Any] = {
        "settings": settings,
        "dead_letter_serde": serde(DEAD_LETTERS),
        "dead_letter_topic": DEAD_LETTERS.full_name(settings),
        "limits": Limits.from_settings(settings),
    }
    if which == "crm":
        destination = crm_destination(settings)
        return Sink(
            name="crm",
            serde=serde(CRM_COMMANDS),
            destinations={destination.name: destination},
            route=lambda record: destination.name,
            key_field="command_id",
            **common,
        )
    from connectors.sinks.ledger import DeliveryLedger

    if which == "billing":
        biller = billing_destination(settings)
        return Sink(
            name="billing",
            serde=serde(BILLING_COMMANDS),
            destinations={biller.name: biller},
            route=lambda record: biller.name,
            key_field="command_id",
            # Stripe keeps an idempotency key for 24 hours: the ledger remembers longer,
            # so a command replayed later (`switchboard dlq replay`) is not billed again.
            ledger=DeliveryLedger(settings.sink_ledger_url),
            **common,
        )
    destinations = notify_destinations(settings)
    return Sink(
        name="notify",
        serde=serde(NOTIFICATIONS),
        destinations=destinations,
        route=notify_route(destinations),
        key_field="notification_id",
        # Slack, SMTP and SMS cannot tell a redelivery from a new message: the ledger can.
        ledger=DeliveryLedger(settings.sink_ledger_url),
        **common,
    )
