"""Notification channels: Slack incoming webhooks (``slack``), e-mail over SMTP
(``email``), SMS through Twilio's Messages API (``sms``) and signed generic webhooks
(``webhook``), each a Destination (connectors.delivery) that renders the record's
template (``templates``) and delivers it once.

A channel maps one notification to one call and classifies the answer; the delivery
runtime owns retries, Retry-After, rate limits, dead letters and the idempotency ledger."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.http import Answer, request


async def deliver_each(
    records: Sequence[dict[str, Any]], deliver_one: Callable[[dict[str, Any]], Awaitable[None]]
) -> list[Outcome]:
    """``deliver_one`` each record in turn, one outcome per record. A Rejected record does not
    stop the next one; a Retryable says the channel itself is failing, so the records
    after it are not tried and share that outcome (the runtime retries them all)."""
    outcomes: list[Outcome] = []
    for record in records:
        try:
            await deliver_one(record)
        except Rejected as exc:
            outcomes.append(exc)
        except Retryable as exc:
            return outcomes + [exc] * (len(records) - len(outcomes))
        else:
            outcomes.append(None)
    return outcomes


class HttpChannel:
    """A channel that POSTs one notification per call to ``url`` (Slack, Twilio, webhooks):
    the session, the call and its settings live here; a channel says what it posts.

    ``recipients`` maps a notification's ``recipient`` to a URL of its own (a Slack
    channel's or a rep's DM's incoming webhook, a team's webhook receiver). With such a
    map, a recipient it does not list is Rejected by name, never sent to ``url`` or to
    another's URL; without one, every notification goes to ``url``."""

    name = "http"
    max_batch = 1
    in_order = False
    recipients_setting = "recipients"  # the setting that fills ``recipients``, for errors

    def __init__(
        self,
        url: str | None,
        timeout: float = 10.0,
        recipients: Mapping[str, str] | None = None,
    ) -> None:
        if url is None and not recipients:
            raise ValueError("a channel needs a URL or a recipient -> URL map")
        self.url = url
        self.recipients = dict(recipients or {})
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def url_for(self, record: Mapping[str, Any]) -> str:
        """Where ``record`` goes: its recipient's URL, or the one URL when there is no map."""
        if not self.recipients:
            assert self.url is not None
            return self.url
        recipient = str(record.get("recipient") or "")
        url = self.recipients.get(recipient)
        if url is None:
            shown = recipient if len(recipient) <= 80 else recipient[:80] + "..."
            raise Rejected(
                f"{self.name}: recipient {shown!r} is not in {self.recipients_setting} "
                f"(known: {', '.join(sorted(self.recipients))}); add it there with the "
                "secret that holds its URL"
            )
        return url

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        return await deliver_each(records, self._deliver_one)

    async def _deliver_one(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    async def post(self, what: str, url: str | None = None, **kwargs: Any) -> Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        target = url or self.url
        assert target is not None
        return await request(
            self._session,
            "POST",
            target,
            what=what,
            timeout_s=self.timeout,
            allow_redirects=False,
            **kwargs,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
