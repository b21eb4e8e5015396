"""`switchboard topics create` makes the cluster match the catalog, and is idempotent."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from streams.settings import Settings
from streams.topics import CATALOG, CONTACT_EVENTS, TopicSpec, admin_client, ensure_topics
from tests.kafka_helpers import settings_env

pytestmark = pytest.mark.integration


def cluster_view(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Each catalog topic's partition count and catalog-relevant configs, as the broker has them."""
    admin = admin_client(settings)
    metadata = admin.list_topics(timeout=10).topics
    view = {}
    for spec in CATALOG:
        name = spec.full_name(settings)
        resource = ConfigResource(ResourceType.TOPIC, name)
        configs = admin.describe_configs([resource])[resource].result()
        wanted = spec.configs(settings)
        view[name] = (len(metadata[name].partitions), {k: configs[k].value for k in wanted})
    return view


def expected_view(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    return {
        spec.full_name(settings): (settings.partitions, spec.configs(settings)) for spec in CATALOG
    }


def settled(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_twice_leaves_the_catalog_topics_unchanged(settings: Settings) -> None:
    first = run_cli(settings, "topics", "create")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == len(CATALOG)
    after_first = cluster_view(settings)
    assert after_first == expected_view(settings)

    second = run_cli(settings, "topics", "create")
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("unchanged") == len(CATALOG)
    assert cluster_view(settings) == after_first


def test_config_drift_is_brought_back_to_the_catalog(settings: Settings) -> None:
    ensure_topics(settings)
    name = CONTACT_EVENTS.full_name(settings)
    admin = admin_client(settings)
    drifted = ConfigResource(
        ResourceType.TOPIC,
        name,
        incremental_configs=[
            ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([drifted])[drifted].result()
    # The controller has accepted it; the broker applies it a moment later.
    settled(lambda: cluster_view(settings)[name][1]["retention.ms"] == "1000")

    changes = {c.topic: c for c in ensure_topics(settings)}
    assert changes[name].action == "updated"
    assert changes[name].detail == f"retention.ms=1000->{CONTACT_EVENTS.retention_ms}"
    settled(lambda: cluster_view(settings) == expected_view(settings))
    assert cluster_view(settings) == expected_view(settings)


def test_a_partition_count_difference_is_reported_not_changed(settings: Settings) -> None:
    spec = TopicSpec("narrow", schema="audit_entry", key="k", description="d", retention_ms=1000)
    name = spec.full_name(settings)
    admin = admin_client(settings)
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result()

    [change] = ensure_topics(settings, (spec,))
    assert change.action == "mismatch"
    assert "has 1 partitions, catalog wants 3" in change.detail
    assert len(admin.list_topics(timeout=10).topics[name].partitions) == 1
