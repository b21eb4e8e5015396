"""Publishing canonical events and dead letters from asyncio code with confluent-kafka's
idempotent, ``acks=all`` producer. A publish returns only once Kafka has the records
durably (every in-sync replica), so the gateway never answers 200 for an event that
was not written."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.kafka import producer_config
from streams.serde import AvroSerde, SerdeError, registry_client
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, DEAD_LETTERS


class PublishFailed(Exception):
    """Kafka (or the registry) could not take the records now; the caller should retry."""


class RecordTooLarge(Exception):
    """A record is larger than a producer may send: retrying will not help."""


class Publisher:
    def __init__(self, settings: Settings) -> None:
        registry = registry_client(settings.schema_registry_url)
        self.events_topic = CONTACT_EVENTS.full_name(settings)
        self.dead_letters_topic = DEAD_LETTERS.full_name(settings)
        self.events = AvroSerde(
            registry, CONTACT_EVENTS.schema, self.events_topic, discriminator="event_type"
        )
        self.dead_letters = AvroSerde(registry, DEAD_LETTERS.schema, self.dead_letters_topic)
        self.max_message_bytes = settings.kafka_max_message_bytes
        self._producer = Producer(
            producer_config(
                settings,
                **{"linger.ms": 2, "message.timeout.ms": settings.gateway_delivery_timeout_ms},
            )
        )
        self._stop = threading.Event()
        # Delivery callbacks run inside poll(); a thread keeps calling it.
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def publish(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Write every (key, value) to ``topic`` and wait until all are acknowledged."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for key, value in records:
            future: asyncio.Future[None] = loop.create_future()
            futures.append(future)
            try:
                self._producer.produce(
                    topic, key=key, value=value, on_delivery=_settle_from(loop, future)
                )
            except BufferError as exc:
                raise PublishFailed(f"producer queue is full: {exc}") from exc
            except KafkaException as exc:
                if exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise RecordTooLarge(
                        f"a record of {len(value)} bytes is larger than the "
                        f"{self.max_message_bytes}-byte limit"
                    ) from None
                raise PublishFailed(f"KafkaException: {exc}") from exc
            except Exception as exc:
                raise PublishFailed(f"{type(exc).__name__}: {exc}") from exc
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, RecordTooLarge | PublishFailed):
                raise result
            if isinstance(result, BaseException):
                raise PublishFailed(str(result)) from result

    async def publish_events(self, records: list[tuple[bytes, dict[str, Any]]]) -> None:
        """Encode (raising SchemaViolation for a record that breaks the contract) and publish."""
        try:
            encoded = [(key, self.events.encode(record)) for key, record in records]
        except SerdeError as exc:
            if type(exc) is SerdeError:  # the registry, not the record, is the problem
                raise PublishFailed(str(exc)) from exc
            raise
        await self.publish(self.events_topic, encoded)

    async def publish_dead_letter(self, key: bytes | None, letter: dict[str, Any]) -> None:
        try:
            value = self.dead_letters.encode(letter)
        except SerdeError as exc:
            raise PublishFailed(str(exc)) from exc
        await self.publish(self.dead_letters_topic, [(key, value)])

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
        self._stop.set()
        self._poller.join(timeout)


def _settle_from(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Any:
    def on_delivery(error: KafkaError | None, _message: Message) -> None:
        loop.call_soon_threadsafe(_settle, future, error)

    return on_delivery


def _settle(future: asyncio.Future[None], error: KafkaError | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    elif error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
        future.set_exception(RecordTooLarge(f"Kafka refused the record: {error.str()}"))
    else:
        future.set_exception(PublishFailed(f"Kafka did not take the record: {error.str()}"))
