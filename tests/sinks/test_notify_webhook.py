"""The webhook channel against a receiver that verifies the signature with its own code
and deduplicates by Idempotency-Key, and the answers a receiver can give."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.sinks.notify.templates import render_webhook
from connectors.sinks.notify.webhook import WebhookChannel, signature
from tests.fakes import Scripted
from tests.sinks.notify_servers import WebhookReceiver, sample_notification, verify_signature

KEY = b"whsec-switchboard-test-key"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver.running(KEY) as server:
        yield server


def deliver(channel: WebhookChannel, *records: dict[str, Any]) -> list[Outcome]:
    async def run() -> list[Outcome]:
        try:
            return await channel.deliver(list(records) or [sample_notification()])
        finally:
            await channel.close()

    return asyncio.run(run())


def test_delivers_a_signed_keyed_json_body(receiver: WebhookReceiver) -> None:
    record = sample_notification(channel="WEBHOOK", recipient="ops-hook")
    assert deliver(WebhookChannel(receiver.hook_url, KEY.decode(), timeout=5), record) == [None]
    [delivery] = receiver.deliveries.values()
    assert delivery.key == record["notification_id"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", delivery.signature)
    assert delivery.body == render_webhook(record)
    body = json.loads(delivery.body)
    assert body["recipient"] == "ops-hook"
    assert "Why now: score 87" in body["rendered"]["text"]
    [received] = receiver.requests
    assert received.headers["Content-Type"] == "application/json"
    assert received.headers["Idempotency-Key"] == record["notification_id"]


def test_a_redelivery_carries_the_same_key_so_the_receiver_drops_it(
    receiver: WebhookReceiver,
) -> None:
    channel = WebhookChannel(receiver.hook_url, KEY, timeout=5)
    assert deliver(channel, sample_notification(), sample_notification()) == [None, None]
    assert len(receiver.deliveries) == 1
    assert receiver.duplicates == ["3f1c0a9e5b7d4c2a8e6f1b3d5a7c9e0f"]


def test_signature_scheme_matches_the_documented_one() -> None:
    body = b'{"a":1}'
    header = signature(KEY, body, 1_700_000_000)
    assert verify_signature(header, body, KEY, now=1_700_000_000, tolerance=300)
    assert not verify_signature(header, body + b" ", KEY, now=1_700_000_000, tolerance=300)
    assert not verify_signature(header, body, b"other", now=1_700_000_000, tolerance=300)


def test_a_wrong_key_is_refused_by_the_receiver(receiver: WebhookReceiver) -> None:
    [outcome] = deliver(WebhookChannel(receiver.hook_url, "not-the-key", timeout=5))
    assert isinstance(outcome, Rejected)
    assert outcome.reason == "webhook: HTTP 401"
    assert "bad signature" in outcome.answer
    assert receiver.deliveries == {}


def test_a_stale_timestamp_is_refused(receiver: WebhookReceiver) -> None:
    an_hour_ago = WebhookChannel(
        receiver.hook_url, KEY, timeout=5, clock=lambda: time.time() - 3600
    )
    [outcome] = deliver(an_hour_ago)
    assert isinstance(outcome, Rejected)
    assert receiver.deliveries == {}


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_answers_are_retryable(receiver: WebhookReceiver, status: int) -> None:
    receiver.fail_next(Scripted(status, '{"error":"later"}', headers={"Retry-After": "3"}))
    [outcome] = deliver(WebhookChannel(receiver.hook_url, KEY, timeout=5))
    assert isinstance(outcome, Retryable)
    assert outcome.reason == f"webhook: HTTP {status}"
    assert outcome.retry_after == 3.0


def test_retry_after_as_an_http_date(receiver: WebhookReceiver) -> None:
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    receiver.fail_next(Scripted(503, "", headers={"Retry-After": when}))
    [outcome] = deliver(WebhookChannel(receiver.hook_url, KEY, timeout=5))
    assert isinstance(outcome, Retryable)
    assert outcome.retry_after is not None
    assert 100 < outcome.retry_after <= 120


@pytest.mark.parametrize("status", [301, 400, 404, 410, 422])
def test_other_answers_are_rejected(receiver: WebhookReceiver, status: int) -> None:
    headers = {"Location": "http://127.0.0.1:9/elsewhere"} if status == 301 else {}
    receiver.fail_next(Scripted(status, '{"error":"no"}', headers=headers))
    [outcome] = deliver(WebhookChannel(receiver.hook_url, KEY, timeout=5))
    assert isinstance(outcome, Rejected)
    assert outcome.reason == f"webhook: HTTP {status}"
    assert outcome.answer == f'HTTP {status} {{"error":"no"}}'


def test_a_slow_receiver_is_a_retryable_timeout(receiver: WebhookReceiver) -> None:
    receiver.fail_next(Scripted(200, "{}", delay_s=1.0))
    [outcome] = deliver(WebhookChannel(receiver.hook_url, KEY, timeout=0.2))
    assert isinstance(outcome, Retryable)
    assert "no answer within" in outcome.reason


def test_each_recipient_goes_to_its_own_receiver(receiver: WebhookReceiver) -> None:
    with WebhookReceiver.running(KEY) as other:
        routes = {"ops": receiver.hook_url, "rep-7": other.hook_url}
        channel = WebhookChannel(None, KEY, timeout=5, recipients=routes)
        ops = sample_notification(channel="WEBHOOK", recipient="ops", notification_id="n-ops")
        rep = sample_notification(channel="WEBHOOK", recipient="rep-7", notification_id="n-rep")
        stray = sample_notification(channel="WEBHOOK", recipient="sales", notification_id="n-x")
        first, second, third = deliver(channel, ops, rep, stray)
        assert (first, second) == (None, None)
        assert list(receiver.deliveries) == ["n-ops"]
        assert list(other.deliveries) == ["n-rep"]
        assert isinstance(third, Rejected)
        assert "recipient 'sales' is not in webhook_recipients (known: ops, rep-7)" in str(third)
        assert receiver.hook_url not in str(third)
