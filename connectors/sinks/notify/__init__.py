"""Notification channels: Slack incoming webhooks (``slack``), e-mail over SMTP
(``email``), SMS through Twilio's Messages API (``sms``) and signed generic webhooks
(``webhook``), each a Destination (connectors.sinks.delivery) that renders the record's
template (``templates``) and delivers it once.

A channel maps one notification to one call and classifies the answer; the delivery
runtime owns retries, Retry-After, rate limits, dead letters and the idempotency ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from connectors.sinks.delivery import Outcome, Rejected, Retryable


async def deliver_each(
    records: Sequence[dict[str, Any]], send: Callable[[dict[str, Any]], Awaitable[None]]
) -> list[Outcome]:
    """``send`` each record in turn, one outcome per record. A Rejected record does not
    stop the next one; a Retryable says the channel itself is failing, so the records
    after it are not tried and share that outcome (the runtime retries them all)."""
    outcomes: list[Outcome] = []
    for record in records:
        try:
            await send(record)
        except Rejected as exc:
            outcomes.append(exc)
        except Retryable as exc:
            return outcomes + [exc] * (len(records) - len(outcomes))
        else:
            outcomes.append(None)
    return outcomes
