"""streams.transactions against a real broker, in one process, where the test decides
when a step ends and when the commit runs: interleavings that the fault tests reach only
by chance."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka import read_topic
from streams.settings import Settings
from streams.transactions import App, step
from tests.kafka_helpers import producer

pytestmark = pytest.mark.integration


def test_a_commit_that_waited_for_a_step_commits_that_steps_offset(settings: Settings) -> None:
    """The commit timer fires while a step runs on a partition with nothing else to
    commit. The commit waits for the step, then commits the transaction the step wrote
    into: the step's input offset must be in it, or a restart would process the message
    again beside its committed outputs (a routing decision audited twice, as the worker
    SIGKILL fault test once found)."""
    first, second, out = (f"{settings.topic_prefix}{name}" for name in ("a", "b", "out"))
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    for future in admin.create_topics([NewTopic(t, 1, 1) for t in (first, second, out)]).values():
        future.result()
    # Both inputs are partition 0 of one topic group: one producer, one transaction.
    app = App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        processing_guarantee="exactly_once",
        topic_partitions=1,
        store="memory://",
        datadir=str(settings.data_dir),
        web_enabled=False,
        broker_commit_interval=3600,  # only the test commits
        autodiscover=False,
    )

    def topic(name: str) -> Any:
        return app.topic(
            name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    outputs = topic(out)
    first_done, second_running, second_may_end = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @app.agent(topic(first))
    async def on_first(stream: Any) -> None:
        async for event in stream.events():
            async with step(event) as current:
                if current:
                    await outputs.send(value=b"first:" + event.value)
            first_done.set()

    @app.agent(topic(second))
    async def on_second(stream: Any) -> None:
        async for event in stream.events():
            async with step(event) as current:
                if current:
                    await outputs.send(value=b"second:" + event.value)
                    second_running.set()
                    await second_may_end.wait()

    def committed() -> dict[str, int]:
        group = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap, "group.id": settings.app_id}
        )
        try:
            found = group.committed([TopicPartition(first, 0), TopicPartition(second, 0)], 10)
        finally:
            group.close()
        return {tp.topic: tp.offset for tp in found}

    async def scenario() -> tuple[list[bytes], dict[str, int]]:
        await app.start()
        try:
            feed = producer(settings)
            feed.produce(first, b"0")
            feed.flush()
            await asyncio.wait_for(first_done.wait(), 60)  # processed, not yet committed
            feed.produce(second, b"0")
            feed.flush()
            await asyncio.wait_for(second_running.wait(), 60)
            commit = asyncio.create_task(app.consumer.commit())
            # The commit chooses its partitions at once (no I/O before the step lock), so
            # by now it waits for the step. Were it slower, the test would pass anyway.
            await asyncio.sleep(0.5)
            second_may_end.set()
            assert await asyncio.wait_for(commit, 60)
            # As a killed worker would leave them: before the last commit of a clean stop.
            written = await asyncio.to_thread(read_topic, settings, out)
            return sorted(m.value() or b"" for m in written), await asyncio.to_thread(committed)
        finally:
            await app.stop()

    written, offsets = asyncio.run(scenario())
    assert written == [b"first:0", b"second:0"]
    assert offsets == {first: 1, second: 1}, "outputs committed without their input's offset"
