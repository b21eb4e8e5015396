"""The sinks as processes, on the real broker: a crash after the destination accepted a
write, an outage of the destination, and dead letters replayed (twice) from the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from sqlalchemy import event

from connectors.delivery import Outcome, Rejected
from connectors.sinks.crm.sql import TABLES, SqlCrmStore, open_store
from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings
from streams.topics import CRM_COMMANDS, DEAD_LETTERS, NOTIFICATIONS, ensure_topics
from tests.fakes.hubspot import FakeHubSpot
from tests.kafka_helpers import producer, read_all, running_sink, settings_env, wait_for
from tests.records import crm_command

# The SQL store's PostgreSQL databases (a fresh schema per test); see crm_url.
from tests.sinks.conftest import pg_schema_url, postgres_url  # noqa: F401
from tests.sinks.notify_servers import SlackWebhook, sample_notification, smtp_server

pytestmark = pytest.mark.integration

CONTACTS = 40
STAGES = ["appointmentscheduled", "qualifiedtobuy", "presentationscheduled", "closedwon"]


def story(n: int, stages: Sequence[str] = STAGES) -> list[dict[str, Any]]:
    """Contact n's commands in the order the processors issued them: create the contact,
    open a deal and move it through three stages (names as the CRM's pipeline has
    them), a task, a note."""
    contact = f"c-{n:03d}"
    at = datetime(2026, 11, 20, 9, 0, tzinfo=UTC) + timedelta(minutes=n)
    deal = f"deal-{n:03d}"
    commands = [
        crm_command(
            "UPSERT_CONTACT",
            contact,
            {
                "email": f"lead{n}@example.com",
                "phone": None,
                "crm_id": None,
                "first_name": "Lead",
                "last_name": str(n),
                "company": "Acme",
                "title": None,
                "properties": {},
            },
        ),
        crm_command(
            "CREATE_DEAL",
            contact,
            {
                "deal_id": deal,
                "name": f"Boiler {n}",
                "stage": stages[0],
                "pipeline": "default",
                "amount_minor": 250_000,
                "currency": "EUR",
            },
        ),
    ]
    for previous, stage in pairwise(stages):
        commands.append(
            crm_command(
                "UPDATE_DEAL_STAGE",
                contact,
                {"deal_id": deal, "stage": stage, "previous_stage": previous},
                command_id=f"cmd-stage-{stage}-{contact}",
            )
        )
    commands.append(
        crm_command(
            "CREATE_TASK",
            contact,
            {
                "task_id": f"task-{n:03d}",
                "title": "Call back",
                "due_at": at + timedelta(hours=4),
                "owner_id": None,
                "priority": "HIGH",
                "notes": None,
            },
        )
    )
    commands.append(
        crm_command("ADD_NOTE", contact, {"note_id": f"note-{n:03d}", "body": f"Lead {n} asked"})
    )
    return [{**c, "issued_at": at} for c in commands]


ALL = [c for n in range(CONTACTS) for c in story(n)]


@pytest.fixture
def sink_settings(settings: Settings, registry: SchemaRegistryClient) -> Settings:
    ensure_topics(settings)
    register_catalog(registry, settings)
    return settings.model_copy(
        update={
            "sink_batch_size": 20,
            "sink_backoff_base_s": 0.1,
            "sink_backoff_cap_s": 1.0,
            "sink_breaker_threshold": 3,
            "sink_breaker_cooldown_s": 1.0,
            "metrics_port": 0,
        }
    )


def publish(
    settings: Settings, registry: SchemaRegistryClient, commands: list[dict[str, Any]]
) -> None:
    serde = AvroSerde(
        registry,
        CRM_COMMANDS.schema,
        CRM_COMMANDS.full_name(settings),
        discriminator=CRM_COMMANDS.discriminator,
    )
    out = producer(settings)
    for command in commands:
        out.produce(serde.topic, key=command["contact_id"].encode(), value=serde.encode(command))
    assert out.flush(30) == 0


def sink_dead_letters(settings: Settings, registry: SchemaRegistryClient) -> list[dict[str, Any]]:
    serde = AvroSerde(registry, DEAD_LETTERS.schema, DEAD_LETTERS.full_name(settings))
    letters = [serde.decode(m.value()) for m in read_all(settings, serde.topic)]
    return [letter for letter in letters if letter["stage"].startswith("sink-")]


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    with FakeHubSpot.running() as fake:
        yield fake


def hubspot_settings(settings: Settings, fake: FakeHubSpot) -> Settings:
    return settings.model_copy(update={"crm_backend": "hubspot", "hubspot_url": fake.url})


def assert_hubspot_holds_each_record_once(fake: FakeHubSpot) -> None:
    for n in range(CONTACTS):
        contact = f"c-{n:03d}"
        assert len(fake.find("contacts", "switchboard_contact_id", contact)) == 1
        deals = fake.find("deals", "switchboard_deal_id", f"deal-{n:03d}")
        assert len(deals) == 1
        assert deals[0]["dealstage"] == STAGES[-1], f"{contact}: stages applied out of order"
        for kind, command in (("tasks", "create_task"), ("notes", "add_note")):
            found = fake.find(kind, "switchboard_command_id", f"cmd-{command}-{contact}")
            assert len(found) == 1, f"{contact}: {len(found)} {kind}"
    assert len(fake.objects["contacts"]) == CONTACTS
    assert len(fake.objects["deals"]) == CONTACTS


def test_sql_sink_applies_each_command_once_in_order_across_a_sigkill(
    sink_settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    # The store takes a batch of 20 in one call; four calls a second leave time to kill
    # the sink halfway.
    throttled = {"crm_database_url": url, "sink_rate_per_s": 4.0, "sink_burst": 1}
    settings = sink_settings.model_copy(update=throttled)
    store = open_store(url)
    publish(settings, registry, ALL)

    def applied() -> int:
        return store.counts()["applied_commands"]

    with running_sink(settings, "crm", tmp_path / "first.log") as first:
        wait_for(lambda: applied() >= len(ALL) // 4, "the first sink to apply some", 60)
        first.kill()  # SIGKILL: the batch in flight is neither finished nor committed
        first.wait()
    assert applied() < len(ALL), "the first sink finished before it was killed"

    with running_sink(settings, "crm", tmp_path / "second.log"):
        wait_for(lambda: applied() == len(ALL), "every command applied", 60)
        time.sleep(1)  # anything applied twice would show up now
    counts = store.counts()
    assert counts["applied_commands"] == len(ALL)
    assert counts["contacts"] == counts["deals"] == counts["tasks"] == CONTACTS
    assert counts["notes"] == CONTACTS
    stages = {row["deal_id"]: row["stage"] for row in store.rows("deals")}
    assert set(stages.values()) == {STAGES[-1]}
    assert sink_dead_letters(settings, registry) == []


def test_a_write_the_crm_accepted_before_the_sink_died_is_not_made_twice(
    sink_settings: Settings, registry: SchemaRegistryClient, hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    secrets = {"hubspot_token": hubspot.token}
    publish(settings, registry, ALL)

    with running_sink(settings, "crm", tmp_path / "first.log", secrets) as first:
        wait_for(lambda: len(hubspot.objects["deals"]) >= 5, "the first deals", 60)
        # From now on HubSpot stores each write but answers it late: the sink is killed
        # while it waits, with writes accepted that its committed offsets do not cover.
        hubspot.answer_delay_s = 5
        seen = len(hubspot.requests)
        # A write, not a batch/read or an association call: a batch whose first call is
        # a read has written nothing yet, and its redelivery would be its first write.
        wait_for(
            lambda: any(r.path.endswith("/batch/upsert") for r in hubspot.requests[seen:]),
            "a write into the slow window",
            20,
        )
        time.sleep(0.5)
        first.kill()
        first.wait()
    hubspot.answer_delay_s = 0

    with running_sink(settings, "crm", tmp_path / "second.log", secrets):
        wait_for(lambda: len(hubspot.objects["notes"]) == CONTACTS, "every note", 90)
        wait_for(
            lambda: (
                all(d["dealstage"] == STAGES[-1] for d in hubspot.objects["deals"].values())
                and len(hubspot.objects["deals"]) == CONTACTS
            ),
            "every deal at its last stage",
            30,
        )
    assert_hubspot_holds_each_record_once(hubspot)
    # The window was hit: some write reached HubSpot twice, and still made one record.
    traces = [
        tuple(i.get("objectWriteTraceId") for i in r.body["inputs"])
        for r in hubspot.requests
        if r.path.endswith("/batch/upsert")
    ]
    assert len(traces) > len(set(traces)), "no write was redelivered: the kill missed the window"
    assert sink_dead_letters(settings, registry) == []


def test_an_outage_pauses_the_sink_and_everything_arrives_once_in_order(
    sink_settings: Settings, registry: SchemaRegistryClient, hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    hubspot.outage(6)  # every call answers 503 for six seconds
    publish(settings, registry, ALL)
    log = tmp_path / "sink.log"

    with running_sink(settings, "crm", log, {"hubspot_token": hubspot.token}):
        wait_for(lambda: len(hubspot.objects["notes"]) == CONTACTS, "every note", 90)
        wait_for(
            lambda: all(d["dealstage"] == STAGES[-1] for d in hubspot.objects["deals"].values()),
            "every deal at its last stage",
            30,
        )
    assert b"hubspot: circuit open" in log.read_bytes()
    assert b"hubspot: circuit closed" in log.read_bytes()
    assert_hubspot_holds_each_record_once(hubspot)
    assert sink_dead_letters(settings, registry) == []


def switchboard(settings: Settings, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_rejected_commands_are_dead_lettered_with_the_answer_and_replay_delivers_once(
    sink_settings: Settings, registry: SchemaRegistryClient, hubspot: FakeHubSpot, tmp_path: Path
) -> None:
    settings = hubspot_settings(sink_settings, hubspot)
    secrets = {"hubspot_token": hubspot.token}
    hubspot.reject("deal-007", "Property values were not valid: dealstage")
    publish(settings, registry, ALL)

    with running_sink(settings, "crm", tmp_path / "sink.log", secrets):
        wait_for(lambda: len(hubspot.objects["notes"]) == CONTACTS, "every note", 90)
        wait_for(lambda: len(sink_dead_letters(settings, registry)) == 4, "4 dead letters", 30)
        letters = sink_dead_letters(settings, registry)
        assert {letter["error_type"] for letter in letters} == {"Rejected"}
        assert all("Property values were not valid" in letter["reason"] for letter in letters)
        assert "deal-007" not in {
            d["switchboard_deal_id"] for d in hubspot.objects["deals"].values()
        }

        listed = switchboard(settings, "dlq", "list", "--stage", "sink-hubspot")
        assert len(listed.splitlines()) == 4
        hubspot.accept("deal-007")  # the portal was fixed
        for _ in range(2):  # replaying twice changes nothing the second time
            out = switchboard(settings, "dlq", "replay", "--stage", "sink-hubspot")
            assert "replayed 4 dead letters" in out
        wait_for(
            lambda: (
                [d["dealstage"] for d in hubspot.find("deals", "switchboard_deal_id", "deal-007")]
                == [STAGES[-1]]
            ),
            "the replayed deal at its last stage",
            30,
        )
        time.sleep(1)
    assert_hubspot_holds_each_record_once(hubspot)
    assert len(sink_dead_letters(settings, registry)) == 4  # nothing new failed


def committed_to_end(settings: Settings, group: str, topic: str) -> bool:
    """Whether consumer group ``group`` has committed ``topic`` up to its end."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": group})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        committed = consumer.committed(tps, timeout=10)
        return all(tp.offset >= ends[tp.partition] for tp in committed if ends[tp.partition])
    finally:
        consumer.close()


def test_notifications_go_out_once_through_smtp_slack_and_the_outbox_even_when_redelivered(
    sink_settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    emails = [
        sample_notification(notification_id=f"n-mail-{i}", recipient=f"rep{i % 3}@example.com")
        for i in range(30)
    ]
    slacks = [
        sample_notification(notification_id=f"n-slack-{i}", channel="SLACK", recipient="#sales")
        for i in range(10)
    ]
    texts = [  # no SMS settings here: these go to the outbox
        sample_notification(notification_id=f"n-sms-{i}", channel="SMS", recipient="+14155550123")
        for i in range(5)
    ]
    broken = sample_notification(notification_id="n-bad", template="no_such_template")
    serde = AvroSerde(registry, NOTIFICATIONS.schema, NOTIFICATIONS.full_name(sink_settings))
    out = producer(sink_settings)
    for record in [*emails, *slacks, *texts, broken]:
        out.produce(serde.topic, key=record["contact_id"].encode(), value=serde.encode(record))
    assert out.flush(30) == 0
    outbox = tmp_path / "outbox.jsonl"

    with smtp_server() as smtp, SlackWebhook.running() as slack:
        settings = sink_settings.model_copy(
            update={
                "smtp_host": smtp.host,
                "smtp_port": smtp.port,
                "smtp_starttls": False,
                "notify_outbox": outbox,
                "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            }
        )
        secrets = {"slack_webhook_url": slack.webhook_url}

        def outboxed() -> list[dict[str, Any]]:
            return (
                [json.loads(line) for line in outbox.read_text().splitlines()]
                if outbox.exists()
                else []
            )

        with running_sink(settings, "notify", tmp_path / "first.log", secrets):
            wait_for(
                lambda: (
                    len(smtp.handler.mail) == 30
                    and len(slack.requests) == 10
                    and len(outboxed()) == 5
                ),
                "every notification",
                60,
            )
            wait_for(lambda: len(sink_dead_letters(settings, registry)) == 1, "the bad one", 30)
        ids = sorted(m.message()["X-Switchboard-Notification-Id"] for m in smtp.handler.mail)
        assert ids == sorted(r["notification_id"] for r in emails)
        assert sorted(r["notification_id"] for r in outboxed()) == sorted(
            r["notification_id"] for r in texts
        )
        [letter] = sink_dead_letters(settings, registry)
        assert "no_such_template" in letter["reason"]

        # Everything delivered again (a new consumer group reads the topic from the start),
        # as after a crash: the ledger knows each one went out, nothing is sent twice.
        again = settings.model_copy(update={"app_id": settings.app_id + "-again"})
        with running_sink(again, "notify", tmp_path / "second.log", secrets):
            wait_for(
                lambda: committed_to_end(again, f"{again.app_id}-sink-notify", serde.topic),
                "the second sink to read everything",
                60,
            )
        assert len(smtp.handler.mail) == 30
        assert len(slack.requests) == 10
        assert len(outboxed()) == 5


class SlackRefusingOne(SlackWebhook):
    """Slack that answers 503 at once to every post about one contact, for ever (a record
    that only ever gets a retryable answer), and takes the others a moment later."""

    async def _post(self, request: web.Request) -> web.StreamResponse:
        if "Poison Pill" in await request.text():
            return web.Response(status=503, text="no_service", content_type="text/html")
        await asyncio.sleep(0.3)
        return await super()._post(request)


def test_a_record_that_is_always_retried_leaves_after_its_retry_time_and_the_rest_go(
    sink_settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """Issue 20, item 1: once its failures open the circuit breaker, the half-open probes
    cost the record no attempt (they cannot tell a bad record from a destination that is
    down), so it used to hold its batch, and everything behind it, for ever. Now
    sink_max_retry_s ends its wait, whatever the breaker does."""
    poison = sample_notification(
        notification_id="n-poison",
        channel="SLACK",
        recipient="#sales",
        contact_id="c-poison",
        context={**sample_notification()["context"], "who": "Poison Pill"},
    )
    fine = [
        sample_notification(
            notification_id=f"n-fine-{i}", channel="SLACK", recipient="#sales", contact_id=f"c-{i}"
        )
        for i in range(10)
    ]
    serde = AvroSerde(registry, NOTIFICATIONS.schema, NOTIFICATIONS.full_name(sink_settings))
    out = producer(sink_settings)
    for record in [poison, *fine]:
        out.produce(serde.topic, key=record["contact_id"].encode(), value=serde.encode(record))
    assert out.flush(30) == 0
    settings = sink_settings.model_copy(
        update={
            "sink_max_attempts": 100,
            "sink_max_retry_s": 4.0,
            "sink_breaker_cooldown_s": 0.5,
            "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        }
    )

    with SlackRefusingOne.running() as slack:
        secrets = {"slack_webhook_url": slack.webhook_url}
        with running_sink(settings, "notify", tmp_path / "sink.log", secrets):
            wait_for(lambda: len(sink_dead_letters(settings, registry)) == 1, "the poison", 60)
            wait_for(lambda: len(slack.requests) >= 10 + 3, "every fine one", 30)
            wait_for(
                lambda: committed_to_end(settings, f"{settings.app_id}-sink-notify", serde.topic),
                "the sink to commit past the poison",
                30,
            )
        refused = [r for r in slack.requests if "Poison Pill" in json.dumps(r.body)]
        assert len(slack.requests) - len(refused) == 10  # each fine one, once
    [letter] = sink_dead_letters(settings, registry)
    assert "503" in letter["reason"]
    assert 3 <= letter["attempts"] < 100  # the calls before the breaker opened
    log = (tmp_path / "sink.log").read_bytes()
    assert b"circuit open" in log and b"dead-lettering n-poison after" in log


def test_a_notification_twice_in_one_batch_goes_out_once(
    sink_settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    """Issue 20, item 3: a replay that lands in the batch of the original (still in
    flight, so not yet in the ledger) is skipped, not sent a second time."""
    twice = sample_notification(
        notification_id="n-twice",
        channel="SLACK",
        recipient="#sales",
        context={**sample_notification()["context"], "who": "Twice Told"},
    )
    other = sample_notification(notification_id="n-other", channel="SLACK", recipient="#sales")
    serde = AvroSerde(registry, NOTIFICATIONS.schema, NOTIFICATIONS.full_name(sink_settings))
    out = producer(sink_settings)
    for record in [twice, other, twice]:
        out.produce(serde.topic, key=record["contact_id"].encode(), value=serde.encode(record))
    assert out.flush(30) == 0
    settings = sink_settings.model_copy(
        update={"sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}"}
    )

    with SlackWebhook.running() as slack:
        secrets = {"slack_webhook_url": slack.webhook_url}
        with running_sink(settings, "notify", tmp_path / "sink.log", secrets):
            wait_for(
                lambda: committed_to_end(settings, f"{settings.app_id}-sink-notify", serde.topic),
                "the sink to read all three",
                60,
            )
        told = [r for r in slack.requests if "Twice Told" in json.dumps(r.body)]
        assert len(told) == 1
        assert len(slack.requests) == 2


# ---- the SQL store's batch write, on SQLite and PostgreSQL ------------------------------

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def crm_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind (as tests/sinks/conftest.py's sql_url)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'crm.sqlite3'}"
    return str(request.getfixturevalue("pg_schema_url"))


def mixed_batch(tag: str) -> list[dict[str, Any]]:
    """A batch that exercises each order rule of the batch write: one contact's commands
    several kinds in a row and a kind twice, a task made before its owner, rejections by
    the checks, a redelivered command, a rejected command delivered again once its deal
    exists, and a merge in the middle with a command for the retired contact after it."""
    a, b = f"{tag}c-a", f"{tag}c-b"
    n = 0

    def cmd(kind: str, contact: str, payload: dict[str, Any], key: str = "") -> dict[str, Any]:
        nonlocal n
        n += 1
        return crm_command(
            kind,
            contact,
            payload,
            command_id=f"{tag}{key or f'cmd-{n}'}",
            issued_at=T0 + timedelta(minutes=n),
        )

    def deal(deal_id: str, stage: str) -> dict[str, Any]:
        return {"deal_id": f"{tag}{deal_id}", "name": "Boiler", "stage": stage}

    def stage(deal_id: str, stage: str, **paid: Any) -> dict[str, Any]:
        return {"deal_id": f"{tag}{deal_id}", "stage": stage} | paid

    def task(task_id: str, owner: str | None) -> dict[str, Any]:
        return {"task_id": f"{tag}{task_id}", "title": "Call", "due_at": T0, "owner_id": owner}

    def owner(rep: str) -> dict[str, Any]:
        return {"owner_id": rep, "previous_owner_id": None, "reason": "round robin"}

    contact = {"email": "ada@example.com", "first_name": "Ada", "properties": {"a": "1"}}
    redelivered = cmd("ADD_NOTE", b, {"note_id": f"{tag}n-b1", "body": "first"}, "again")
    late = cmd("UPDATE_DEAL_STAGE", a, stage("d-late", "won"), "late")
    return [
        cmd("CREATE_TASK", a, task("t-a1", None)),  # a bare contact, an unowned task
        cmd("UPSERT_CONTACT", a, contact),  # written before the task above: a new run
        cmd("SET_OWNER", a, owner("rep-1")),  # gets t-a1
        cmd("CREATE_DEAL", a, deal("d-a", "new")),
        cmd("UPDATE_DEAL_STAGE", a, stage("d-a", "qualified")),
        cmd("UPDATE_DEAL_STAGE", a, stage("d-a", "qualified")),  # same stage: time kept
        cmd("UPDATE_DEAL_STAGE", a, stage("d-a", "won", amount_minor=500, currency="EUR")),
        cmd("SET_OWNER", a, owner("rep-2")),  # previous: rep-1, from earlier in the batch
        cmd("UPSERT_CONTACT", b, {"phone": "+1555", "properties": {"b": "2"}}),
        # a's deal: rejected (a CREATE_DEAL of it would change nothing, whoever's it is)
        cmd("UPDATE_DEAL_STAGE", b, stage("d-a", "stolen")),
        cmd("UPDATE_DEAL_STAGE", b, stage("d-404", "won")),  # no such deal: rejected
        late,  # no such deal yet: rejected
        redelivered,
        # Its id again, another body: a redelivery is known by its key, so a no-op.
        cmd("ADD_NOTE", f"{tag}c-c", {"note_id": f"{tag}n-c", "body": "same id"}, "again"),
        cmd("CREATE_TASK", b, task("t-b1", None)),
        cmd(
            "LOG_ACTIVITY",
            b,
            {"activity_id": f"{tag}x-b", "activity_type": "call", "occurred_at": T0},
        ),
        redelivered,  # no-op
        cmd("CREATE_DEAL", a, deal("d-late", "new")),
        late,  # now the deal exists
        cmd("MERGE_CONTACTS", a, {"retired_contact_id": b, "identifier": "email"}),
        cmd("ADD_NOTE", b, {"note_id": f"{tag}n-b2", "body": "after the merge"}),  # lands on a
        cmd("SET_OWNER", b, owner("rep-3")),
        cmd("UPSERT_CONTACT", a, {"email": None, "company": "Acme", "properties": {"a": "3"}}),
    ]


def untagged(value: Any, tag: str) -> Any:
    """``value`` with ``tag`` taken out of every string in it."""
    if isinstance(value, str):
        return value.replace(tag, "")
    if isinstance(value, dict):
        return {k: untagged(v, tag) for k, v in value.items()}
    if isinstance(value, list):
        return [untagged(v, tag) for v in value]
    return value


def tagged_rows(store: SqlCrmStore, tag: str) -> dict[str, list[dict[str, Any]]]:
    found = {name: [r for r in store.rows(name) if tag in str(r)] for name in TABLES}
    return untagged(found, tag)  # type: ignore[no-any-return]


def outcome_texts(outcomes: Sequence[Outcome], tag: str) -> list[str | None]:
    return [None if o is None else untagged(f"{type(o).__name__}: {o}", tag) for o in outcomes]


def test_a_batch_writes_what_its_commands_write_one_by_one(crm_url: str) -> None:
    store = open_store(crm_url, clock=lambda: T0)
    try:
        one_by_one = [store.deliver_sync([r])[0] for r in mixed_batch("one/")]
        batch = store.deliver_sync(mixed_batch("all/"))
        assert outcome_texts(batch, "all/") == outcome_texts(one_by_one, "one/")
        assert sum(o is not None for o in batch) == 3
        written = tagged_rows(store, "all/")
        assert written == tagged_rows(store, "one/")
        # A few of the effects, to be sure the comparison is of something.
        assert [
            (c["owner_id"], c["previous_owner_id"])
            for c in sorted(written["owner_changes"], key=lambda c: c["changed_at"])
        ] == [
            ("rep-1", None),
            ("rep-2", "rep-1"),
            ("rep-3", "rep-2"),
        ]
        # t-a1 is rep-1's; b's unowned task follows b into a and goes to its next owner.
        assert {r["owner_id"] for r in written["tasks"]} == {"rep-1", "rep-3"}
        assert {r["contact_id"] for t in ("deals", "notes", "tasks") for r in written[t]} == {"c-a"}
        # Redelivered: what was applied is skipped, what was rejected is tried again (after
        # the merge b's "stolen" deal is a's own), the same way on both paths.
        assert outcome_texts(store.deliver_sync(mixed_batch("all/")), "all/") == outcome_texts(
            [store.deliver_sync([r])[0] for r in mixed_batch("one/")], "one/"
        )
        assert tagged_rows(store, "all/") == tagged_rows(store, "one/") != written
    finally:
        store.engine.dispose()


def test_a_record_the_database_refuses_is_rejected_alone(
    crm_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A record that passes validation but fails its statement (here: an owner change whose
    id the table already holds) fails the batch's statement; the batch is applied again
    one record at a time, so only that record is rejected and the others land."""
    store = open_store(crm_url, clock=lambda: T0)
    try:
        # Left over from outside the store: the id a new SET_OWNER brings is taken.
        with store.engine.begin() as connection:
            connection.execute(
                TABLES["contacts"]
                .insert()
                .values(contact_id="c-0", properties={}, created_at=T0, updated_at=T0)
            )
            connection.execute(
                TABLES["owner_changes"]
                .insert()
                .values(
                    command_id="taken",
                    contact_id="c-0",
                    owner_id="rep-0",
                    reason="x",
                    changed_at=T0,
                )
            )
        records = [r for n in range(3) for r in story(n)]
        bad = crm_command(
            "SET_OWNER",
            "c-001",
            {"owner_id": "rep-9", "previous_owner_id": None, "reason": "round robin"},
            command_id="taken",
        )
        middle = len(records) // 2
        records.insert(middle, bad)
        with caplog.at_level("INFO", logger="switchboard.sql"):
            outcomes = store.deliver_sync(records)
        assert "one record at a time" in caplog.text  # the fallback was taken
        refused = outcomes.pop(middle)
        assert isinstance(refused, Rejected)
        assert "SET_OWNER taken refused by the database" in str(refused)
        assert outcomes == [None] * (len(records) - 1)
        applied = {r["command_id"] for r in store.rows("applied_commands")}
        assert applied == {r["command_id"] for r in records} - {"taken"}
        assert {d["stage"] for d in store.rows("deals")} == {STAGES[-1]}
        counts = store.counts()
        assert (counts["contacts"], counts["notes"], counts["tasks"]) == (4, 3, 3)
        assert store.contact("c-001")["owner_id"] is None  # type: ignore[index]
        # The next batch goes the fast way again.
        caplog.clear()
        with caplog.at_level("INFO", logger="switchboard.sql"):
            assert store.deliver_sync(story(7)) == [None] * 7
        assert "one record at a time" not in caplog.text
    finally:
        store.engine.dispose()


def test_a_text_postgresql_cannot_store_is_rejected_alone(request: pytest.FixtureRequest) -> None:
    """PostgreSQL refuses a NUL in text (a data error), which validation lets through."""
    store = open_store(str(request.getfixturevalue("pg_schema_url")))
    try:
        records = story(1)
        records[-1]["payload"] = records[-1]["payload"] | {"body": "nul \x00 here"}
        outcomes = store.deliver_sync([*story(0), *records])
        assert outcomes[:-1] == [None] * 13
        assert isinstance(outcomes[-1], Rejected)
        assert "refused by the database" in str(outcomes[-1])
        assert store.counts()["notes"] == 1
    finally:
        store.engine.dispose()


def test_a_command_claimed_meanwhile_by_another_delivery_is_skipped(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    """Two sinks delivering the same command at once (a rebalance): the other one claims
    it between this batch's lookup and its insert. The batch's insert fails, the batch is
    applied one by one, and the command is skipped rather than applied twice or rejected.
    PostgreSQL only: SQLite has one writer, so nobody claims anything meanwhile."""
    url = str(request.getfixturevalue("pg_schema_url"))
    store, other = open_store(url), open_store(url)
    # Claimed before anything else of its contact is written: the other sink is not kept
    # waiting for this batch's rows, as it would be in life (another partition's contact).
    taken = story(2)[-1]  # an ADD_NOTE
    records = [taken, *story(0), *story(1)]

    def claim_first(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        rows = params if isinstance(params, list) else [params]
        ids = {row.get("command_id") for row in rows}
        if statement.startswith("INSERT INTO applied_commands") and taken["command_id"] in ids:
            if claimed:
                return  # the one-by-one claim, after the batch failed
            claimed.append(taken["command_id"])
            assert other.deliver_sync([taken]) == [None]  # committed, in its own transaction

    claimed: list[str] = []
    event.listen(store.engine, "before_cursor_execute", claim_first)
    try:
        with caplog.at_level("INFO", logger="switchboard.sql"):
            assert store.deliver_sync(records) == [None] * len(records)
        assert claimed == [taken["command_id"]]
        assert "one record at a time" in caplog.text
        applied = [r["command_id"] for r in store.rows("applied_commands")]
        assert sorted(applied) == sorted(r["command_id"] for r in records)
        assert store.counts()["notes"] == 3  # the other sink's note among them, once
        assert {d["stage"] for d in store.rows("deals")} == {STAGES[-1]}
    finally:
        event.remove(store.engine, "before_cursor_execute", claim_first)
        store.engine.dispose()
        other.engine.dispose()
