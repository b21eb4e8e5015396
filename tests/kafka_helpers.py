"""Small helpers for integration tests: produce, consume, and run a real worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient

from streams.kafka import producer_config, read_topic
from streams.settings import Settings, secret_env
from streams.topics import (
    ASSIGNMENTS,
    CONTACT_EVENTS,
    CONTACT_MERGES,
    EVENTS_BY_CONTACT,
    IDENTITY_CLAIMS,
    REP_ROSTER,
    ROUTING,
    TIMERS,
)
from streams.web import LOOKUP_TOKEN_SECRET, TOKEN_SECRET

# What the worker's consumer group reads (every stage's input).
WORKER_INPUTS = (
    CONTACT_EVENTS,
    IDENTITY_CLAIMS,
    EVENTS_BY_CONTACT,
    CONTACT_MERGES,
    ASSIGNMENTS,
    TIMERS,
    REP_ROSTER,
    ROUTING,
)


def producer(settings: Settings) -> Producer:
    return Producer(producer_config(settings))


def consume(settings: Settings, topic: str, count: int, timeout: float = 30.0) -> list[Message]:
    """Read ``count`` committed messages from the start of ``topic`` (fewer on timeout)."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-reader-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    found: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < count and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                raise RuntimeError(f"consuming {topic}: {message.error()}")
            found.append(message)
    finally:
        consumer.close()
    return found


# The bearer token of the workers' contact views in every test process and the processes
# they start (`switchboard explain` in-process reads it from os.environ: tests/conftest.py).
VIEWS_TOKEN = "test-views-token-5b9c"


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            text = json.dumps(value) if isinstance(value, dict | list) else str(value)
            env[f"SWITCHBOARD_{name.upper()}"] = text
    env[secret_env(TOKEN_SECRET)] = VIEWS_TOKEN
    return env


def worker_metric(settings: Settings, line_start: str, stage: str | None = "identity") -> float:
    """The sum of the worker's /metrics samples whose line starts with ``line_start``, for
    one stage (None: a metric without a stage label)."""
    name = line_start.split("{", 1)[0]  # only its series: cheaper for the worker
    body = get(f"http://127.0.0.1:{settings.web_port}/metrics?name[]={name}")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith(line_start) and (stage is None or f'stage="{stage}"' in line)
    )


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


@contextmanager
def running_worker(
    settings: Settings, log_path: Path, ready_timeout: float = 90.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``switchboard worker`` process, ready (partitions assigned, recovery done)."""

    def ready() -> bool:
        return b"Worker ready" in log_path.read_bytes()

    with _running(
        ["worker"],
        settings_env(settings) | {"SWITCHBOARD_LOG_LEVEL": "info"},
        log_path,
        ready,
        ready_timeout,
    ) as process:
        yield process


@contextmanager
def running_gateway(
    settings: Settings, log_path: Path, secrets: dict[str, str], ready_timeout: float = 30.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``switchboard gateway`` process, answering on its port."""
    env = settings_env(settings) | {secret_env(name): value for name, value in secrets.items()}

    def ready() -> bool:
        try:
            get(f"http://127.0.0.1:{settings.gateway_port}/healthz", timeout=1)
        except OSError:
            return False
        return True

    with _running(["gateway"], env, log_path, ready, ready_timeout) as process:
        yield process


@contextmanager
def running_sink(
    settings: Settings,
    which: str,
    log_path: Path,
    secrets: dict[str, str] | None = None,
    ready_timeout: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``switchboard sink WHICH`` process, subscribed to its topic."""
    env = settings_env(settings) | {"SWITCHBOARD_LOG_LEVEL": "info"}
    env |= {secret_env(name): value for name, value in (secrets or {}).items()}

    def ready() -> bool:
        return b"consuming" in log_path.read_bytes()

    with _running(["sink", which], env, log_path, ready, ready_timeout) as process:
        yield process


LOOKUP_TOKEN = "test-lookup-token-0c41"


@contextmanager
def running_lookup(
    settings: Settings, log_path: Path, ready_timeout: float = 60.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``switchboard lookup`` process whose view has read the changelogs (its
    readiness probe, /healthz, answers 200; 503 before)."""
    env = settings_env(settings) | {secret_env(LOOKUP_TOKEN_SECRET): LOOKUP_TOKEN}

    def ready() -> bool:
        try:
            get(f"http://127.0.0.1:{settings.lookup_port}/healthz", timeout=1)
        except OSError:
            return False
        return True

    with _running(["lookup"], env, log_path, ready, ready_timeout) as process:
        yield process


@contextmanager
def _running(
    args: list[str],
    env: dict[str, str],
    log_path: Path,
    ready: Callable[[], bool],
    ready_timeout: float,
) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", *args], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{args[0]} did not become ready:\n"
                    f"{log_path.read_text(errors='replace')[-4000:]}"
                )
            time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def read_all(settings: Settings, topic: str, timeout: float = 30.0) -> list[Message]:
    """Every committed message now in ``topic`` (see streams.kafka.read_topic)."""
    return read_topic(settings, topic, timeout)


def delete_topics(bootstrap: str, *prefixes: str) -> int:
    """Delete every topic whose name starts with one of ``prefixes``; how many. Each run
    makes its own topics, and a broker that keeps them all runs out of file handles."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)]
    for future in admin.delete_topics(names, operation_timeout=30).values() if names else ():
        future.result()
    return len(names)
