"""The e-mail channel against a real SMTP server (aiosmtpd) on loopback: plain, STARTTLS
with AUTH, implicit TLS, and every way delivery fails."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.sinks.notify.email import EmailChannel, message_id
from tests.sinks.notify_servers import (
    LOOPBACK,
    SelfSigned,
    SmtpServer,
    free_port,
    sample_notification,
    self_signed,
    silent_server,
    smtp_server,
)

SENDER = "switchboard@notify.example.com"
USER = ("switchboard", "s3cret-pass")


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> SelfSigned:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def plain() -> Iterator[SmtpServer]:
    with smtp_server() as server:
        yield server


def deliver(channel: EmailChannel, *records: dict[str, Any]) -> list[Outcome]:
    return asyncio.run(channel.deliver(list(records)))


def one(channel: EmailChannel, record: dict[str, Any] | None = None) -> Outcome:
    [outcome] = deliver(channel, record or sample_notification())
    return outcome


def test_delivers_the_rendered_message_with_a_stable_message_id(plain: SmtpServer) -> None:
    channel = EmailChannel(plain.host, plain.port, SENDER, timeout=5)
    assert one(channel) is None

    [mail] = plain.handler.mail
    assert mail.mail_from == SENDER
    assert mail.rcpt_tos == ["dana.rep@example.com"]
    message = mail.message()
    assert message["From"] == SENDER
    assert message["To"] == "dana.rep@example.com"
    assert message["Subject"] == "New lead for you: score 87"
    assert message["Date"] == "Sun, 01 Mar 2026 09:13:05 +0000"
    expected_id = message_id("3f1c0a9e5b7d4c2a8e6f1b3d5a7c9e0f", "notify.example.com")
    assert message["Message-ID"] == expected_id
    assert message["X-Switchboard-Notification-Id"] == "3f1c0a9e5b7d4c2a8e6f1b3d5a7c9e0f"
    assert message["Auto-Submitted"] == "auto-generated"
    body = message.get_content()
    assert "Ada Lovelace was just assigned to you." in body
    assert "Recommended action: call back within 5 minutes" in body


def test_a_redelivery_is_the_same_message(plain: SmtpServer) -> None:
    channel = EmailChannel(plain.host, plain.port, SENDER, timeout=5)
    assert deliver(channel, sample_notification(), sample_notification()) == [None, None]
    first, second = (m.message() for m in plain.handler.mail)
    assert first["Message-ID"] == second["Message-ID"]
    assert first.as_bytes() == second.as_bytes()
    other = EmailChannel(plain.host, plain.port, SENDER, timeout=5)
    assert one(other, sample_notification(notification_id="another")) is None
    assert plain.handler.mail[2].message()["Message-ID"] != first["Message-ID"]


def test_starttls_and_auth(cert: SelfSigned) -> None:
    with smtp_server(tls=cert, require_starttls=True, credentials=USER) as server:
        channel = EmailChannel(
            server.host,
            server.port,
            SENDER,
            starttls=True,
            username=USER[0],
            password=USER[1],
            ssl_context=cert.client_context(),
            timeout=5,
        )
        assert one(channel) is None
        [mail] = server.handler.mail
        assert mail.tls and mail.authenticated
        assert mail.rcpt_tos == ["dana.rep@example.com"]


def test_wrong_password_is_rejected_with_the_servers_answer(cert: SelfSigned) -> None:
    with smtp_server(tls=cert, credentials=USER) as server:
        channel = EmailChannel(
            server.host,
            server.port,
            SENDER,
            starttls=True,
            username=USER[0],
            password="wrong",
            ssl_context=cert.client_context(),
            timeout=5,
        )
        outcome = one(channel)
        assert isinstance(outcome, Rejected)
        assert "authentication failed" in outcome.reason
        assert outcome.answer.startswith("535 ")
        assert server.handler.mail == []


def test_credentials_are_never_sent_in_the_clear(cert: SelfSigned) -> None:
    # auth_require_tls: the server offers no AUTH before STARTTLS, so nothing is sent.
    with smtp_server(tls=cert, credentials=USER) as server:
        channel = EmailChannel(
            server.host, server.port, SENDER, username=USER[0], password=USER[1], timeout=5
        )
        outcome = one(channel)
        assert isinstance(outcome, Rejected)
        assert "SMTPNotSupportedError" in outcome.reason
        assert server.handler.mail == []


def test_a_server_that_requires_starttls_refuses_plain_mail(cert: SelfSigned) -> None:
    with smtp_server(tls=cert, require_starttls=True) as server:
        outcome = one(EmailChannel(server.host, server.port, SENDER, timeout=5))
        assert isinstance(outcome, Rejected)
        assert outcome.answer.startswith("530 ")


def test_implicit_tls(cert: SelfSigned) -> None:
    with smtp_server(tls=cert, implicit_tls=True) as server:
        channel = EmailChannel(
            server.host,
            server.port,
            SENDER,
            implicit_tls=True,
            ssl_context=cert.client_context(),
            timeout=5,
        )
        assert one(channel) is None
        assert server.handler.mail[0].tls


def test_a_certificate_that_does_not_verify_is_rejected(cert: SelfSigned) -> None:
    with smtp_server(tls=cert) as server:
        # The system trust store does not know the test's self-signed certificate.
        channel = EmailChannel(server.host, server.port, SENDER, starttls=True, timeout=5)
        outcome = one(channel)
        assert isinstance(outcome, Rejected)
        assert "certificate" in outcome.reason
        assert server.handler.mail == []


def test_transient_recipient_reply_is_retryable(plain: SmtpServer) -> None:
    plain.handler.rcpt_replies.append("451 4.3.0 Mailbox temporarily unavailable")
    [outcome] = deliver(
        EmailChannel(plain.host, plain.port, SENDER, timeout=5), sample_notification()
    )
    assert isinstance(outcome, Retryable)
    assert outcome.answer == "451 4.3.0 Mailbox temporarily unavailable"
    assert plain.handler.mail == []


def test_permanent_recipient_reply_is_rejected(plain: SmtpServer) -> None:
    plain.handler.rcpt_replies.append("550 5.1.1 No such user here")
    outcome = one(EmailChannel(plain.host, plain.port, SENDER, timeout=5))
    assert isinstance(outcome, Rejected)
    assert outcome.reason == "smtp: recipient refused"
    assert outcome.answer == "550 5.1.1 No such user here"


def test_replies_to_data_are_classified_too(plain: SmtpServer) -> None:
    channel = EmailChannel(plain.host, plain.port, SENDER, timeout=5)
    plain.handler.data_replies.append("452 4.3.1 Insufficient system storage")
    [outcome] = deliver(channel, sample_notification())
    assert isinstance(outcome, Retryable)
    plain.handler.data_replies.append("554 5.6.0 Message content rejected")
    outcome = one(channel)
    assert isinstance(outcome, Rejected)
    assert outcome.answer == "554 5.6.0 Message content rejected"
    assert plain.handler.mail == []


def test_refused_connection_is_retryable() -> None:
    channel = EmailChannel(LOOPBACK, free_port(), SENDER, timeout=2)
    [outcome] = deliver(channel, sample_notification())
    assert isinstance(outcome, Retryable)
    assert "ConnectionRefusedError" in outcome.reason


def test_a_server_that_never_answers_times_out_retryably() -> None:
    with silent_server() as port:
        channel = EmailChannel(LOOPBACK, port, SENDER, timeout=0.3)
        [outcome] = deliver(channel, sample_notification())
        assert isinstance(outcome, Retryable)
    assert outcome.reason == "smtp: timed out"


@pytest.mark.parametrize("recipient", ["", "dana.rep", "dana rep@example.com", "+14155550123"])
def test_recipient_must_be_an_address(plain: SmtpServer, recipient: str) -> None:
    channel = EmailChannel(plain.host, plain.port, SENDER, timeout=5)
    outcome = one(channel, sample_notification(recipient=recipient))
    assert isinstance(outcome, Rejected)
    assert "field recipient" in outcome.reason
    assert plain.handler.mail == []


def test_a_bad_record_does_not_stop_the_next(plain: SmtpServer) -> None:
    channel = EmailChannel(plain.host, plain.port, SENDER, timeout=5)
    bad = sample_notification(template="nope")
    outcomes = deliver(channel, bad, sample_notification())
    assert isinstance(outcomes[0], Rejected) and outcomes[1] is None
    assert len(plain.handler.mail) == 1


def test_misconfiguration_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="not both"):
        EmailChannel(LOOPBACK, 25, SENDER, starttls=True, implicit_tls=True)
    with pytest.raises(ValueError, match="go together"):
        EmailChannel(LOOPBACK, 25, SENDER, username="only-a-name")
    with pytest.raises(ValueError, match="not an address"):
        EmailChannel(LOOPBACK, 25, "not an address")
    # The settings' default sender, fine for a local relay.
    assert EmailChannel(LOOPBACK, 25, "switchboard@localhost").domain == "localhost"


def test_a_failing_server_fails_the_rest_of_the_call_without_trying_it(plain: SmtpServer) -> None:
    plain.handler.data_replies.append("421 4.3.2 Service shutting down")
    outcomes = deliver(
        EmailChannel(plain.host, plain.port, SENDER, timeout=5),
        sample_notification(),
        sample_notification(notification_id="second"),
    )
    assert [type(o) for o in outcomes] == [Retryable, Retryable]
    assert plain.handler.mail == []  # the second was not sent, so a retry doubles nothing
