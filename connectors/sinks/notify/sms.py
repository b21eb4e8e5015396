"""SMS through Twilio's Programmable Messaging API: POST ``To``, ``From`` and ``Body``
form-encoded to ``/2010-04-01/Accounts/{AccountSid}/Messages.json`` with HTTP basic auth
(Account SID : Auth Token). Twilio answers 201 with the Message resource (``status``
``queued`` or ``accepted``).

Errors, as documented (twilio.com/docs/usage/twilios-response; /docs/errors): a JSON
body ``{"code", "message", "more_info", "status"}``, e.g. 400 with 21211 (invalid
``To``), 21606 (``From`` cannot send SMS), 21610 (recipient unsubscribed); 401 with 20003
(bad credentials); 429 with 20429 (too many concurrent requests: "never processed and
always safe to retry"). 429 and 5xx are Retryable (with ``Retry-After`` when sent), any
other 4xx is Rejected with Twilio's code and message.

The Messages API takes no idempotency key, so the runtime's ledger of delivered
``notification_id``s is what keeps a redelivery from texting twice."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from connectors.delivery import Rejected
from connectors.http import raise_for_status
from connectors.sinks.notify import HttpChannel
from connectors.sinks.notify.templates import render_sms
from schemas import identifiers


def e164(value: str, field: str = "recipient") -> str:
    """The E.164 form of a number that already carries its country code (``+``)."""
    if not value.strip().startswith("+"):
        raise Rejected(f"field {field}: {value!r} is not an E.164 phone number (+CC...)")
    try:
        normalised = identifiers.phone(value, region="ZZ", field=field)
    except identifiers.InvalidIdentifier as exc:
        raise Rejected(str(exc)) from None
    if normalised is None:
        raise Rejected(f"field {field}: empty, an E.164 phone number is needed")
    return normalised


class SmsChannel(HttpChannel):
    name = "sms"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str = "https://api.twilio.com",
        timeout: float = 10.0,
    ) -> None:
        super().__init__(
            f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
            "/Messages.json",
            timeout,
        )
        self.headers = {"Authorization": aiohttp.encode_basic_auth(account_sid, auth_token)}
        self.from_number = from_number

    async def _deliver_one(self, record: dict[str, Any]) -> None:
        to = e164(str(record.get("recipient") or ""))
        form = {"To": to, "From": self.from_number, "Body": render_sms(record)}
        answer = await self.post("twilio", data=form, headers=self.headers)
        error = answer.json()
        what = "twilio"
        if answer.status >= 400 and isinstance(error, dict) and "code" in error:
            what = f"twilio error {error['code']} ({error.get('message', '')})"
        raise_for_status(answer, what)
