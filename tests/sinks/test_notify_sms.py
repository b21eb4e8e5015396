"""The SMS channel against a local Twilio Messages API: form fields, basic auth, and
Twilio's error bodies classified."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import pytest

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.sinks.notify.sms import SmsChannel
from connectors.sinks.notify.templates import render_sms
from tests.fakes import Scripted
from tests.sinks.notify_servers import TwilioMessages, sample_notification, twilio_error

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-auth-token-1234"
FROM = "+15005550006"


@pytest.fixture
def twilio() -> Iterator[TwilioMessages]:
    with TwilioMessages.running(SID, TOKEN) as server:
        yield server


def channel(server: TwilioMessages, token: str = TOKEN, timeout: float = 5) -> SmsChannel:
    return SmsChannel(SID, token, FROM, base_url=server.url, timeout=timeout)


def text(recipient: str = "+14155550123", **overrides: Any) -> dict[str, Any]:
    return sample_notification(channel="SMS", recipient=recipient, **overrides)


def deliver(sms: SmsChannel, *records: dict[str, Any]) -> list[Outcome]:
    async def run() -> list[Outcome]:
        try:
            return await sms.deliver(list(records) or [text()])
        finally:
            await sms.close()

    return asyncio.run(run())


def test_posts_to_from_and_body_with_basic_auth(twilio: TwilioMessages) -> None:
    record = text("+1 (415) 555-0123")
    assert deliver(channel(twilio), record) == [None]
    [received] = twilio.requests
    assert received.method == "POST"
    assert received.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert received.headers["Content-Type"] == "application/x-www-form-urlencoded"
    scheme, credentials = received.headers["Authorization"].split()
    assert scheme == "Basic"
    assert base64.b64decode(credentials).decode() == f"{SID}:{TOKEN}"
    assert dict(parse_qsl(received.body)) == {
        "To": "+14155550123",
        "From": FROM,
        "Body": render_sms(record),
    }


@pytest.mark.parametrize("recipient", ["4155550123", "dana.rep@example.com", "+1", ""])
def test_recipient_must_be_e164(twilio: TwilioMessages, recipient: str) -> None:
    [outcome] = deliver(channel(twilio), text(recipient))
    assert isinstance(outcome, Rejected)
    assert "field recipient" in outcome.reason
    assert twilio.requests == []


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (21211, "The 'To' number +15555555555 is not a valid phone number."),
        (21610, "Attempt to send to unsubscribed recipient"),
        (21606, "The 'From' phone number provided is not a valid message-capable number."),
    ],
)
def test_twilio_refusals_are_rejected_with_code_and_message(
    twilio: TwilioMessages, code: int, message: str
) -> None:
    twilio.fail_next(twilio_error(400, code, message))
    [outcome] = deliver(channel(twilio))
    assert isinstance(outcome, Rejected)
    assert outcome.reason == f"twilio error {code} ({message}): HTTP 400"
    assert f'"more_info": "https://www.twilio.com/docs/errors/{code}"' in outcome.answer


def test_bad_credentials_are_rejected(twilio: TwilioMessages) -> None:
    [outcome] = deliver(channel(twilio, token="wrong"))
    assert isinstance(outcome, Rejected)
    assert outcome.reason == "twilio error 20003 (Authenticate): HTTP 401"


def test_too_many_requests_is_retryable_after_twilios_wait(twilio: TwilioMessages) -> None:
    twilio.fail_next(twilio_error(429, 20429, "Too Many Requests", retry_after=2))
    [outcome] = deliver(channel(twilio))
    assert isinstance(outcome, Retryable)
    assert outcome.retry_after == 2.0
    assert "20429" in outcome.reason


def test_server_errors_are_retryable_until_twilio_recovers(twilio: TwilioMessages) -> None:
    twilio.server_errors(2, status=503)
    sms = channel(twilio)
    for _ in range(2):
        [outcome] = deliver(sms)
        assert isinstance(outcome, Retryable)
    assert deliver(sms) == [None]


def test_a_slow_answer_is_a_retryable_timeout(twilio: TwilioMessages) -> None:
    twilio.fail_next(Scripted(201, "{}", delay_s=1.0))
    [outcome] = deliver(channel(twilio, timeout=0.2))
    assert isinstance(outcome, Retryable)
    assert "no answer within" in outcome.reason
