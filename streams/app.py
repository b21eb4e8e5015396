"""The Faust app factory: one place that turns Settings into a configured app, and the
bridge from catalog topics to Faust topics (raw bytes: the Avro serde decodes them, so
an undecodable message is dead-lettered instead of crashing or being skipped by Faust)."""

from __future__ import annotations

from typing import cast

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.base import Collection
from prometheus_client import REGISTRY

from streams import metrics
from streams.lag import GroupLag
from streams.settings import Settings
from streams.topics import TopicSpec
from streams.transactions import App


def create_app(settings: Settings) -> App:
    app = App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.kafka_bootstrap.split(",")],
        store=settings.store,
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_in_thread=False,
        producer_acks=-1,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.session_timeout_s / 4,
        autodiscover=False,
        # Agents read the catalog's topics, which `switchboard topics create` owns.
        topic_allow_declare=True,
        table_standby_replicas=1,
    )
    setup_prometheus_sensors(app, pattern="/metrics", registry=REGISTRY, name_prefix="faust")

    @app.task  # type: ignore[untyped-decorator]
    async def measure_consumer_lag() -> None:
        # At start, when every agent is registered: the topics the group consumes.
        topics = [name for agent in app.agents.values() for name in agent.channel.topics]
        GroupLag(settings, settings.app_id, topics).start()

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def measure_tables() -> None:
        for table in app.tables.values():
            metrics.TABLE_KEYS.labels(table=table.name).set(table_keys(cast(Collection, table)))

    return app


def internal_topics(app: faust.App, settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """Faust's own topics for ``app``: each table's compacted changelog, and the leader
    topic its partition assignor uses."""
    isr = {"min.insync.replicas": str(settings.min_insync_replicas)}
    topics = {
        table.changelog_topic.get_topic_name(): (
            settings.partitions,
            {"cleanup.policy": "compact", **isr},
        )
        for table in app.tables.values()
    }
    topics[f"{app.conf.id}-__assignor-__leader"] = (1, isr)
    return topics


def table_keys(table: Collection) -> int:
    """The keys a worker holds in ``table``. RocksDB's len() reads every key, so a
    rocksdb:// store gives RocksDB's own estimate instead."""
    store = table.data
    if isinstance(store, RocksDBStore):
        return sum(
            int(db.property_int_value("rocksdb.estimate-num-keys") or 0)
            for db in store._dbs.values()
        )
    return len(store)


def catalog_topic(app: faust.App, settings: Settings, spec: TopicSpec) -> faust.TopicT:
    return raw_topic(app, settings, spec.full_name(settings))


def raw_topic(app: faust.App, settings: Settings, *names: str) -> faust.TopicT:
    """One Faust topic over one or more catalog topics, as raw bytes (the Avro serde
    decodes them). Several names must be co-partitioned: same key, same partition count."""
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
        # Declared by the catalog, with its configs; Faust must not create it differently.
        internal=False,
    )
