"""Small helpers for integration tests: produce, consume, and run a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, Message, Producer

from streams.settings import Settings


def producer(settings: Settings) -> Producer:
    return Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True, "acks": "all"}
    )


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


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
    for name, value in settings.model_dump().items():
        env[f"SWITCHBOARD_{name.upper()}"] = str(value)
    return env


def get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()


@contextmanager
def running_worker(
    settings: Settings, log_path: Path, ready_timeout: float = 90.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``switchboard worker`` process, ready (partitions assigned, recovery done)."""
    env = settings_env(settings) | {"SWITCHBOARD_LOG_LEVEL": "info"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while b"Worker ready" not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker did not become ready:\n{log_path.read_text(errors='replace')[-4000:]}"
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
