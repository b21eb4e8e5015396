"""The Faust app factory: one place that turns Settings into a configured app, and the
bridge from catalog topics to Faust topics (raw bytes: the Avro serde decodes them, so
an undecodable message is dead-lettered instead of crashing or being skipped by Faust)."""

from __future__ import annotations

import faust
from faust.sensors.prometheus import setup_prometheus_sensors
from prometheus_client import REGISTRY

from streams.settings import Settings
from streams.topics import TopicSpec
from streams.transactions import App


def create_app(settings: Settings) -> faust.App:
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
    return app


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
