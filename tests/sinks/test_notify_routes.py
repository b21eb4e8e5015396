"""Which notification destinations settings make: recipient -> URL maps whose URLs come
from secrets in the environment, and a clear error when one is missing."""

from __future__ import annotations

import pytest

from connectors.sinks.factory import SinkConfigError, notify_destinations
from connectors.sinks.notify.slack import SlackChannel
from connectors.sinks.notify.webhook import WebhookChannel
from streams.settings import Settings


def test_recipient_urls_come_from_the_named_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHBOARD_SECRET_SLACK_OPS", "https://hooks.example/ops-token")
    monkeypatch.setenv("SWITCHBOARD_SECRET_SLACK_DANA", "https://hooks.example/dana-token")
    monkeypatch.setenv("SWITCHBOARD_SECRET_OPS_HOOK", "https://ops.example/hook?token=t")
    monkeypatch.setenv("SWITCHBOARD_SECRET_NOTIFY_WEBHOOK_KEY", "k")
    monkeypatch.delenv("SWITCHBOARD_SECRET_SLACK_WEBHOOK_URL", raising=False)
    settings = Settings(
        slack_recipients={"#ops": "slack_ops", "rep-7": "slack_dana"},
        webhook_recipients={"ops": "ops_hook"},
    )
    found = notify_destinations(settings)
    slack, webhook = found["slack"], found["webhook"]
    assert isinstance(slack, SlackChannel) and isinstance(webhook, WebhookChannel)
    assert slack.url is None
    assert slack.recipients == {
        "#ops": "https://hooks.example/ops-token",
        "rep-7": "https://hooks.example/dana-token",
    }
    assert (webhook.url, webhook.recipients) == (None, {"ops": "https://ops.example/hook?token=t"})


def test_a_missing_recipient_secret_stops_the_sink_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SWITCHBOARD_SECRET_SLACK_OPS", raising=False)
    with pytest.raises(SinkConfigError) as error:
        notify_destinations(Settings(slack_recipients={"#ops": "slack_ops"}))
    assert str(error.value) == (
        "slack_recipients['#ops'] needs the environment variable SWITCHBOARD_SECRET_SLACK_OPS"
    )


def test_operations_recipients_must_be_reachable() -> None:
    with pytest.raises(ValueError, match=r"operations_recipients: '#sales' is not a key of"):
        Settings(slack_recipients={"#ops": "slack_ops"}, operations_recipients=["#sales"])
    with pytest.raises(ValueError, match="'ops team' is not an e-mail address"):
        Settings(operations_channel="EMAIL", operations_recipients=["ops team"])
    fine = Settings(operations_channel="EMAIL", operations_recipients=["ops@example.com"])
    assert fine.operations_recipients == ["ops@example.com"]
