"""A generic webhook: POST the notification as JSON (the record plus its rendered subject
and text) to one URL, signed so the receiver can trust it and keyed so it can deduplicate.

Headers:

- ``Idempotency-Key: <notification_id>``: the same on every redelivery of a notification;
  a receiver that has seen the key answers 2xx and does nothing.
- ``X-Switchboard-Signature: t=<unix seconds>,v1=<hex>``, Stripe's scheme: ``<hex>`` is
  HMAC-SHA256 with the shared signing key over ``"<t>.<raw body>"``. To verify, take ``t``
  and ``v1`` from the header, compute the HMAC over ``t``, a dot and the body bytes as
  received, compare in constant time, and refuse a ``t`` older than a tolerance of your
  choice (five minutes is common) so a captured request cannot be replayed later.

``recipients`` (settings ``webhook_recipients``) sends each recipient's notifications to
a URL of its own; a recipient it does not list is Rejected by name.

Answers: 2xx delivered; 408, 429 and 5xx Retryable (honouring ``Retry-After``); any other
status, redirects included, Rejected with the receiver's answer."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from connectors.http import raise_for_status
from connectors.sinks.notify import HttpChannel
from connectors.sinks.notify.templates import render_webhook

SIGNATURE_HEADER = "X-Switchboard-Signature"


def signature(key: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Switchboard-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookChannel(HttpChannel):
    name = "webhook"

    recipients_setting = "webhook_recipients"

    def __init__(
        self,
        url: str | None,
        signing_key: str | bytes,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        recipients: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(url, timeout, recipients)
        self.signing_key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self.clock = clock

    async def _deliver_one(self, record: dict[str, Any]) -> None:
        url = self.url_for(record)
        body = render_webhook(record)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": str(record["notification_id"]),
            SIGNATURE_HEADER: signature(self.signing_key, body, int(self.clock())),
        }
        raise_for_status(await self.post("webhook", url, data=body, headers=headers), "webhook")
