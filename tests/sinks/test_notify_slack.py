"""The Slack channel against a local incoming webhook that answers as Slack documents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.sinks.notify.slack import SlackChannel
from connectors.sinks.notify.templates import render_slack
from tests.fakes import Scripted
from tests.sinks.notify_servers import SlackWebhook, free_port, sample_notification, slack_error


@pytest.fixture
def slack() -> Iterator[SlackWebhook]:
    with SlackWebhook.running() as server:
        yield server


def deliver(channel: SlackChannel, *records: dict[str, Any]) -> list[Outcome]:
    async def run() -> list[Outcome]:
        try:
            return await channel.deliver(list(records) or [sample_notification(channel="SLACK")])
        finally:
            await channel.close()

    return asyncio.run(run())


def test_posts_the_rendered_message_as_json(slack: SlackWebhook) -> None:
    record = sample_notification(channel="SLACK", recipient="sales-leads")
    assert deliver(SlackChannel(slack.webhook_url, timeout=5), record) == [None]
    [received] = slack.requests
    assert received.method == "POST"
    assert received.path == SlackWebhook.PATH
    assert received.headers["Content-Type"] == "application/json"
    assert received.body == render_slack(record)
    assert received.body["text"].startswith("New lead for Dana Rep: *Ada Lovelace*")
    assert [b["type"] for b in received.body["blocks"]] == [
        "header",
        "section",
        "section",
        "context",
    ]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, "invalid_payload"),
        (400, "no_text"),
        (403, "action_prohibited"),
        (404, "no_service"),
        (404, "channel_not_found"),
        (410, "channel_is_archived"),
    ],
)
def test_slack_refusals_are_rejected_with_slacks_answer(
    slack: SlackWebhook, status: int, error: str
) -> None:
    slack.fail_next(slack_error(status, error))
    [outcome] = deliver(SlackChannel(slack.webhook_url, timeout=5))
    assert isinstance(outcome, Rejected)
    assert outcome.reason == f"slack: HTTP {status}"
    assert outcome.answer == f"HTTP {status} {error}"


def test_rate_limit_is_retryable_after_slacks_wait(slack: SlackWebhook) -> None:
    slack.fail_next(slack_error(429, "rate_limited", retry_after=7))
    [outcome] = deliver(SlackChannel(slack.webhook_url, timeout=5))
    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == 7.0
    assert "429" in outcome.reason


def test_server_errors_are_retryable_until_slack_recovers(slack: SlackWebhook) -> None:
    slack.server_errors(3, status=500, body="rollup_error")
    channel = SlackChannel(slack.webhook_url, timeout=5)
    for _ in range(3):
        [outcome] = deliver(channel)
        assert isinstance(outcome, Retryable)
        assert outcome.answer == "HTTP 500 rollup_error"
    assert deliver(channel) == [None]
    assert len(slack.requests) == 4


def test_a_slow_answer_is_a_retryable_timeout(slack: SlackWebhook) -> None:
    slack.fail_next(Scripted(200, "ok", delay_s=1.0, content_type="text/html"))
    [outcome] = deliver(SlackChannel(slack.webhook_url, timeout=0.2))
    assert isinstance(outcome, Retryable)
    assert "no answer within 0.2 s" in outcome.reason


def test_an_unreachable_webhook_is_retryable() -> None:
    [outcome] = deliver(SlackChannel(f"http://127.0.0.1:{free_port()}/services/x", timeout=2))
    assert isinstance(outcome, Retryable)


def test_our_payload_passes_slacks_own_checks(slack: SlackWebhook) -> None:
    # The fake answers invalid_payload / no_text for what Slack cannot post.
    for record in (sample_notification(), sample_notification(notification_id="2")):
        assert deliver(SlackChannel(slack.webhook_url, timeout=5), record) == [None]
    assert all(json.dumps(r.body) for r in slack.requests)


def test_a_record_that_cannot_render_is_rejected_without_a_call(slack: SlackWebhook) -> None:
    [outcome] = deliver(SlackChannel(slack.webhook_url), sample_notification(template="nope"))
    assert isinstance(outcome, Rejected)
    assert "unknown template 'nope'" in outcome.reason
    assert slack.requests == []


def test_each_recipient_goes_to_its_own_webhook(slack: SlackWebhook) -> None:
    routes = {"#ops": slack.hook("#ops"), "rep-7": slack.hook("@dana (DM)")}
    channel = SlackChannel(slack.webhook_url, timeout=5, recipients=routes)
    ops = sample_notification(channel="SLACK", recipient="#ops", notification_id="n-ops")
    rep = sample_notification(channel="SLACK", recipient="rep-7", notification_id="n-rep")
    assert deliver(channel, ops, rep) == [None, None]
    assert [where for where, _ in slack.posted] == ["#ops", "@dana (DM)"]
    assert [payload for _, payload in slack.posted] == [render_slack(ops), render_slack(rep)]


def test_an_unknown_recipient_is_rejected_by_name_not_sent_elsewhere(slack: SlackWebhook) -> None:
    ops_url = slack.hook("#ops")
    channel = SlackChannel(slack.webhook_url, timeout=5, recipients={"#ops": ops_url})
    stray = sample_notification(channel="SLACK", recipient="#sales")
    ops = sample_notification(channel="SLACK", recipient="#ops", notification_id="n-ops")
    first, second = deliver(channel, stray, ops)
    assert isinstance(first, Rejected)
    assert str(first) == (
        "slack: recipient '#sales' is not in slack_recipients (known: #ops); "
        "add it there with the secret that holds its URL"
    )
    assert ops_url not in str(first) and "services" not in str(first)  # no token in the reason
    assert second is None  # the next one is not held up
    assert [where for where, _ in slack.posted] == ["#ops"]


def test_without_a_map_every_recipient_goes_to_the_one_webhook(slack: SlackWebhook) -> None:
    records = [
        sample_notification(channel="SLACK", recipient=r, notification_id=r)
        for r in ("#ops", "rep-7")
    ]
    assert deliver(SlackChannel(slack.webhook_url, timeout=5), *records) == [None, None]
    assert [where for where, _ in slack.posted] == ["#general", "#general"]


def test_a_revoked_recipient_webhook_is_rejected_with_slacks_answer(slack: SlackWebhook) -> None:
    gone = slack.url + "/services/T00000000/B99999999/revoked"
    channel = SlackChannel(None, timeout=5, recipients={"#ops": gone})
    [outcome] = deliver(channel, sample_notification(channel="SLACK", recipient="#ops"))
    assert isinstance(outcome, Rejected)
    assert outcome.answer == "HTTP 404 no_service"
    assert slack.posted == []
