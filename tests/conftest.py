"""Fixtures for tests against the real broker and schema registry.

Where they come from, in order: an explicit ``SWITCHBOARD_KAFKA_BOOTSTRAP`` (with
``SWITCHBOARD_SCHEMA_REGISTRY_URL``), testcontainers when a Docker engine answers, else
the native broker and registry that ``infra/`` starts (started here if they are down).
Each test session works under its own topic prefix, so runs never see each other's data."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from streams.serde import registry_client
from streams.settings import Settings, secret_env
from streams.web import TOKEN_SECRET
from tests.kafka_helpers import VIEWS_TOKEN, delete_topics

os.environ[secret_env(TOKEN_SECRET)] = VIEWS_TOKEN  # for explain(), run in-process

ROOT = Path(__file__).resolve().parent.parent
REGISTRY_IMAGE = "apicurio/apicurio-registry:3.3.3"
KAFKA_IMAGE = "apache/kafka:4.4.0"


@dataclass(frozen=True)
class Infra:
    bootstrap: str
    registry_url: str
    origin: str


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def _native() -> Infra:
    for script in ("infra/kafka/kafka.sh", "infra/registry/registry.sh"):
        subprocess.run(["bash", script, "start"], cwd=ROOT, check=True)
    defaults = Settings()
    return Infra(defaults.kafka_bootstrap, defaults.schema_registry_url, "native")


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    bootstrap = os.environ.get("SWITCHBOARD_KAFKA_BOOTSTRAP")
    if bootstrap:
        registry_url = os.environ.get(
            "SWITCHBOARD_SCHEMA_REGISTRY_URL", Settings().schema_registry_url
        )
        yield Infra(bootstrap, registry_url, "environment")
    elif _docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs
        from testcontainers.kafka import KafkaContainer

        with (
            KafkaContainer(KAFKA_IMAGE).with_kraft() as kafka,
            DockerContainer(REGISTRY_IMAGE)
            .with_env("APICURIO_RULES_GLOBAL_COMPATIBILITY", "BACKWARD")
            .with_exposed_ports(8080) as registry,
        ):
            wait_for_logs(registry, "Listening on", timeout=120)
            host = registry.get_container_host_ip()
            port = registry.get_exposed_port(8080)
            url = f"http://{host}:{port}/apis/ccompat/v7"
            yield Infra(kafka.get_bootstrap_server(), url, "testcontainers")
    else:
        yield _native()


@pytest.fixture(scope="session")
def session_prefix(infra: Infra) -> Iterator[str]:
    """Every topic of this session starts with it (the workers' changelogs too: app ids
    do), and goes at its end."""
    prefix = f"test-{uuid.uuid4().hex[:8]}."
    yield prefix
    delete_topics(infra.bootstrap, prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def settings(infra: Infra, session_prefix: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topic prefix and app id under the session's."""
    test_id = uuid.uuid4().hex[:6]
    return Settings(
        kafka_bootstrap=infra.bootstrap,
        schema_registry_url=infra.registry_url,
        topic_prefix=f"{session_prefix}{test_id}.",
        partitions=3,
        app_id=f"{session_prefix}{test_id}-app",
        web_port=free_port(),
        data_dir=tmp_path / "worker",
    )


@pytest.fixture
def registry(infra: Infra) -> SchemaRegistryClient:
    return registry_client(infra.registry_url)
