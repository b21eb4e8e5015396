"""Slack through an incoming webhook: POST the rendered template as JSON (``text`` plus
Block Kit ``blocks``) to the webhook's URL.

What Slack answers, as documented ("Improving error conditions for Incoming Webhooks",
api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks; "Rate
Limits", api.slack.com/docs/rate-limits; the Python SDK's ``WebhookClient`` docs):

- 200 with the body ``ok``: posted.
- 400 ``invalid_payload``, ``no_text`` or ``user_not_found``; 403 ``action_prohibited``;
  404 ``channel_not_found`` or ``no_service`` (the webhook was revoked); 410
  ``channel_is_archived``: Rejected with Slack's body, retrying cannot help.
- 429 with ``Retry-After`` (about one message a second per webhook, with short bursts):
  Retryable after that many seconds.
- 500 ``rollup_error`` and other 5xx, timeouts, refused connections: Retryable.

An incoming webhook posts to the one channel (or person) it was made for, so each
recipient has its own URL: ``recipients`` (settings ``slack_recipients``) maps a
notification's ``recipient`` to it, and a recipient without one is Rejected by name.

Incoming webhooks take no idempotency key: a redelivery is prevented by the runtime's
ledger of delivered ``notification_id``s, not by Slack."""

from __future__ import annotations

from typing import Any

from connectors.http import raise_for_status
from connectors.sinks.notify import HttpChannel
from connectors.sinks.notify.templates import render_slack


class SlackChannel(HttpChannel):
    name = "slack"
    recipients_setting = "slack_recipients"

    async def _deliver_one(self, record: dict[str, Any]) -> None:
        url = self.url_for(record)  # an incoming webhook posts to its own channel only
        payload = render_slack(record)
        raise_for_status(await self.post("slack", url, json=payload), "slack")
