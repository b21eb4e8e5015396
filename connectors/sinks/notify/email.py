"""E-mail over SMTP (stdlib ``smtplib`` in a worker thread): the rendered subject and
plain-text body, from ``sender`` to the record's ``recipient``.

The Message-ID is derived from ``notification_id`` (and the Date from ``issued_at``), so
a redelivery is the same message and a receiver can drop the copy; the raw id travels in
``X-Switchboard-Notification-Id``. ``Auto-Submitted: auto-generated`` (RFC 3834) keeps
vacation responders from answering.

Transport security: ``implicit_tls`` (SMTPS, port 465) or ``starttls`` (submission,
port 587); credentials are only sent after one of them unless the server allows it.
Each message opens its own connection: simple, and the runtime bounds the rate.

Reply classes (RFC 5321 4.2.1): 4yz is transient, so Retryable; 5yz is permanent, so
Rejected with the server's code and text (535 bad credentials included). A refused,
reset or timed-out connection is Retryable; a certificate that does not verify, or a
server without STARTTLS or AUTH when they are asked for, is Rejected (configuration)."""

from __future__ import annotations

import asyncio
import hashlib
import smtplib
import ssl
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from connectors.delivery import DeliveryError, Outcome, Rejected, Retryable
from connectors.sinks.notify import deliver_each
from connectors.sinks.notify.templates import render_text
from schemas import identifiers

NOTIFICATION_ID_HEADER = "X-Switchboard-Notification-Id"


def message_id(notification_id: str, domain: str) -> str:
    """The same Message-ID for every delivery of one notification."""
    digest = hashlib.sha256(notification_id.encode()).hexdigest()[:32]
    return f"<{digest}.notification@{domain}>"


def address(value: str, field: str = "recipient") -> str:
    try:
        normalised = identifiers.email(value, field=field)
    except identifiers.InvalidIdentifier as exc:
        raise Rejected(str(exc)) from None
    if normalised is None or any(c.isspace() or ord(c) < 32 for c in normalised):
        raise Rejected(f"field {field}: {value!r} is not an e-mail address")
    return normalised


def _reply(code: int, text: bytes | str) -> str:
    text = text.decode(errors="replace") if isinstance(text, bytes) else text
    return f"{code} {text}"


def classify(exc: Exception) -> DeliveryError:
    """What an smtplib failure means for the delivery: see the module docstring."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        code, text = next(iter(exc.recipients.values()))
        return _by_code("smtp: recipient refused", code, text)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return _by_code("smtp: authentication failed", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(f"smtp: {type(exc).__name__}", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        # smtplib reports a read that timed out as a disconnection.
        if isinstance(exc.__context__, TimeoutError):
            return Retryable("smtp: timed out", str(exc))
        return Retryable("smtp: server disconnected", str(exc))
    if isinstance(exc, smtplib.SMTPException):  # e.g. no STARTTLS or AUTH offered
        return Rejected(f"smtp: {type(exc).__name__}", str(exc))
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Rejected("smtp: the server's certificate does not verify", str(exc))
    if isinstance(exc, TimeoutError):
        return Retryable("smtp: timed out", str(exc))
    return Retryable(f"smtp: {type(exc).__name__}", str(exc))  # refused, reset, TLS


def _by_code(reason: str, code: int, text: bytes | str) -> DeliveryError:
    answer = _reply(code, text)
    if 500 <= code < 600:
        return Rejected(reason, answer)
    return Retryable(reason, answer)


class EmailChannel:
    name = "email"
    max_batch = 1
    in_order = False

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if starttls and implicit_tls:
            raise ValueError("email: choose starttls (port 587) or implicit_tls (465), not both")
        if (username is None) != (password is None):
            raise ValueError("email: username and password go together")
        self.host = host
        self.port = port
        local, _, domain = sender.strip().rpartition("@")
        if not local or not domain or any(c.isspace() for c in sender.strip()):
            raise ValueError(f"email: sender {sender!r} is not an address (name@host)")
        self.sender = sender.strip()
        self.domain = domain
        self.starttls = starttls
        self.implicit_tls = implicit_tls
        self.username = username
        self.password = password
        self.timeout = timeout
        self.ssl_context = ssl_context or ssl.create_default_context()

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        return await deliver_each(records, self._deliver_one)

    def compose(self, record: dict[str, Any]) -> EmailMessage:
        """The message for ``record``; Rejected when its recipient or template is wrong."""
        recipient = address(str(record.get("recipient") or ""))
        subject, body = render_text(record)
        notification_id = str(record["notification_id"])
        issued_at = record.get("issued_at")
        if not isinstance(issued_at, datetime):
            issued_at = datetime.now(UTC)
        elif issued_at.tzinfo is None:
            issued_at = issued_at.replace(tzinfo=UTC)  # Avro timestamps are UTC
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = format_datetime(issued_at.astimezone(UTC))
        message["Message-ID"] = message_id(notification_id, self.domain)
        message[NOTIFICATION_ID_HEADER] = notification_id
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(body)
        return message

    async def _deliver_one(self, record: dict[str, Any]) -> None:
        message = self.compose(record)
        try:
            await asyncio.to_thread(self._transmit, message)
        except (smtplib.SMTPException, OSError) as exc:
            raise classify(exc) from exc

    def _transmit(self, message: EmailMessage) -> None:
        smtp: smtplib.SMTP
        if self.implicit_tls:
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=self.ssl_context
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls:
                smtp.starttls(context=self.ssl_context)
            if self.username is not None and self.password is not None:
                smtp.login(self.username, self.password)
            smtp.send_message(message, from_addr=self.sender, to_addrs=[message["To"]])
        finally:
            # The message is accepted once DATA is answered 250; a failed QUIT changes nothing.
            with suppress(smtplib.SMTPException, OSError):
                smtp.quit()
            smtp.close()

    async def close(self) -> None:
        """Nothing to close: each message uses its own connection."""
