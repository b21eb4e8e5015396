"""The topic catalog: every topic Switchboard owns, with its partitions, replication,
cleanup policy, retention, key and value schema. ``switchboard topics create`` makes
the cluster match it, and running it again changes nothing."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from streams.settings import Settings

DAY_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    schema: str
    key: str
    description: str
    retention_ms: int
    cleanup_policy: Literal["delete", "compact"] = "delete"
    discriminator: str | None = None

    def full_name(self, settings: Settings) -> str:
        return f"{settings.topic_prefix}{self.name}"

    def configs(self, settings: Settings) -> dict[str, str]:
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            "min.insync.replicas": str(settings.min_insync_replicas),
        }


CONTACT_EVENTS = TopicSpec(
    "contact-events",
    schema="contact_event",
    discriminator="event_type",
    key="strongest identifier of the person (crm:, email:, phone:, ext:)",
    description="Canonical events from every source connector.",
    retention_ms=7 * DAY_MS,
)
CRM_COMMANDS = TopicSpec(
    "crm-commands",
    schema="crm_command",
    discriminator="command_type",
    key="contact id",
    description="Changes the processors decided to make in the CRM.",
    retention_ms=7 * DAY_MS,
)
BILLING_COMMANDS = TopicSpec(
    "billing-commands",
    schema="crm_command",
    discriminator="command_type",
    key="contact id",
    description="Invoices the processors decided to create in the billing system (Stripe): "
    "CREATE_INVOICE commands, apart from the CRM's so neither sink reads the other's.",
    retention_ms=7 * DAY_MS,
)
NOTIFICATIONS = TopicSpec(
    "notifications",
    schema="notification",
    key="contact id",
    description="Messages to reps, managers and contacts.",
    retention_ms=7 * DAY_MS,
)
AUDIT = TopicSpec(
    "audit",
    schema="audit_entry",
    key="contact id",
    description="Every decision with the inputs that caused it.",
    retention_ms=90 * DAY_MS,
)
DEAD_LETTERS = TopicSpec(
    "dead-letters",
    schema="dead_letter",
    key="the original message's key",
    description="Input that could not be parsed, validated or delivered, with the reason.",
    retention_ms=30 * DAY_MS,
)

IDENTITY_CLAIMS = TopicSpec(
    "identity-claims",
    schema="identity_claim",
    key="identifier",
    description="Repartition: identifiers claimed for a contact, to the identifier's partition.",
    retention_ms=7 * DAY_MS,
)
EVENTS_BY_CONTACT = TopicSpec(
    "events-by-contact",
    schema="contact_event",
    discriminator="event_type",
    key="contact id",
    description="Repartition: contact events forwarded as they came (contact_id still "
    "null), keyed by their resolved contact id.",
    retention_ms=7 * DAY_MS,
)
CONTACT_MERGES = TopicSpec(
    "contact-merges",
    schema="contact_merge",
    key="contact id",
    description="Repartition: the steps of merging two contacts that proved to be one person.",
    retention_ms=7 * DAY_MS,
)

REP_ROSTER = TopicSpec(
    "rep-roster",
    schema="rep",
    key="rep id",
    description="The rep roster: the latest record per rep (compacted; null removes a rep).",
    retention_ms=-1,
    cleanup_policy="compact",
)
ROUTING = TopicSpec(
    "routing",
    schema="routing_message",
    key='"router": one partition, so capacity and round-robin are exact',
    description="Leads to route and roster changes, in one order, to the router.",
    retention_ms=7 * DAY_MS,
)
ASSIGNMENTS = TopicSpec(
    "assignments",
    schema="assignment",
    key="contact id",
    description="The router's decisions, back to the contact stage.",
    retention_ms=7 * DAY_MS,
)

TIMERS = TopicSpec(
    "timers",
    schema="sla_timer",
    key="contact id",
    description="Due notices: a worker tells the contact stage that a timer in its "
    "table is due (status PENDING); the stage fires it once.",
    retention_ms=7 * DAY_MS,
)

CATALOG: tuple[TopicSpec, ...] = (
    CONTACT_EVENTS,
    CRM_COMMANDS,
    NOTIFICATIONS,
    AUDIT,
    DEAD_LETTERS,
    IDENTITY_CLAIMS,
    EVENTS_BY_CONTACT,
    CONTACT_MERGES,
    REP_ROSTER,
    ROUTING,
    ASSIGNMENTS,
    TIMERS,
    BILLING_COMMANDS,
)


@dataclass(frozen=True)
class TopicChange:
    topic: str
    action: Literal["created", "updated", "unchanged", "mismatch"]
    detail: str = ""


def admin_client(settings: Settings) -> AdminClient:
    # log_level 4: keep librdkafka's informational shutdown chatter out of CLI output.
    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 4})


def ensure_topics(
    settings: Settings,
    catalog: tuple[TopicSpec, ...] = CATALOG,
    *,
    admin: AdminClient | None = None,
    timeout: float = 30.0,
) -> list[TopicChange]:
    """Create missing topics and bring the configs of existing ones to the catalog's.

    Partition counts are never changed on an existing topic: adding partitions moves
    keys to other partitions and would break per-contact order, so a difference is
    reported as a mismatch for a person to resolve."""
    admin = admin or admin_client(settings)
    existing = admin.list_topics(timeout=timeout).topics
    changes: list[TopicChange] = []

    missing = [spec for spec in catalog if spec.full_name(settings) not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    spec.full_name(settings),
                    num_partitions=settings.partitions,
                    replication_factor=settings.replication_factor,
                    config=spec.configs(settings),
                )
                for spec in missing
            ],
            request_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                changes.append(TopicChange(name, "created"))
            except Exception as exc:
                # Another process created it between our look and our create.
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                changes.append(TopicChange(name, "unchanged", "created concurrently"))

    present = [spec for spec in catalog if spec.full_name(settings) in existing]
    for spec in present:
        partitions = len(existing[spec.full_name(settings)].partitions)
        changes.append(_reconcile(admin, settings, spec, partitions, timeout))
    return changes


def ensure_internal_topics(
    settings: Settings, topics: Mapping[str, tuple[int, dict[str, str]]], timeout: float = 60.0
) -> None:
    """Create a worker's own topics (``topics``: name to partitions and configs, its
    tables' changelogs) before it joins its group, and wait until the brokers' metadata
    shows each partition with a leader, so its first restore finds them."""
    admin = admin_client(settings)
    existing = admin.list_topics(timeout=timeout).topics
    missing = [
        NewTopic(name, partitions, settings.replication_factor, config=configs)
        for name, (partitions, configs) in topics.items()
        if name not in existing
    ]
    for future in admin.create_topics(missing, request_timeout=timeout).values() if missing else ():
        try:
            future.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another worker made it first
                raise
    deadline = time.monotonic() + timeout
    while True:
        seen = admin.list_topics(timeout=timeout).topics
        waiting = [
            name
            for name, (partitions, _) in topics.items()
            if name not in seen
            or len(seen[name].partitions) != partitions
            or any(p.leader < 0 for p in seen[name].partitions.values())
        ]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout:.0f} s: {waiting}")
        time.sleep(0.2)


def _reconcile(
    admin: AdminClient,
    settings: Settings,
    spec: TopicSpec,
    partitions: int,
    timeout: float,
) -> TopicChange:
    name = spec.full_name(settings)
    if partitions != settings.partitions:
        return TopicChange(
            name,
            "mismatch",
            f"has {partitions} partitions, catalog wants {settings.partitions}; not changed "
            "(re-partitioning moves keys and breaks per-contact order)",
        )
    resource = ConfigResource(ResourceType.TOPIC, name)
    current = admin.describe_configs([resource], request_timeout=timeout)[resource].result()
    wanted = spec.configs(settings)
    drift = {k: v for k, v in wanted.items() if current[k].value != v}
    if not drift:
        return TopicChange(name, "unchanged")
    entries = [
        ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in drift.items()
    ]
    update = ConfigResource(ResourceType.TOPIC, name, incremental_configs=entries)
    admin.incremental_alter_configs([update], request_timeout=timeout)[update].result()
    detail = ", ".join(f"{k}={current[k].value}->{v}" for k, v in drift.items())
    return TopicChange(name, "updated", detail)
