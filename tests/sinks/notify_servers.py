"""Real servers on loopback for the notification channels: an SMTP server (aiosmtpd) with
optional STARTTLS, implicit TLS and AUTH; a Slack incoming webhook, Twilio's Messages API
and a webhook receiver (aiohttp, on tests.fakes.FakeServer). Each records what it
received and can be scripted to fail the way the real service does. Tests and benchmarks
both use them.

Nothing here imports the channels' code: the receiver checks signatures with its own
implementation, so a test fails when the sender drifts from the documented scheme."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes import FakeServer, Scripted, json_response

LOOPBACK = "127.0.0.1"


def sample_notification(**overrides: Any) -> dict[str, Any]:
    """A notification as the router emits it (processors/router.py), decoded from Avro."""
    record: dict[str, Any] = {
        "notification_id": "3f1c0a9e5b7d4c2a8e6f1b3d5a7c9e0f",
        "channel": "EMAIL",
        "recipient": "dana.rep@example.com",
        "template": "new_lead",
        "subject": "New lead for you: score 87",
        "context": {
            "rep": "Dana Rep",
            "who": "Ada Lovelace",
            "company": "Analytical Engines Ltd",
            "contact_id": "c-000042",
            "identifiers": "email:ada@example.org, phone:+14155550123",
            "why_now": "score 87 (hot); rule enterprise-west matched",
            "score": "87",
            "recent_activity": "phone 2026-03-01 09:12Z, web 2026-02-28 17:40Z",
            "recommended_action": "call back within 5 minutes",
        },
        "contact_id": "c-000042",
        "issued_at": datetime(2026, 3, 1, 9, 13, 5, tzinfo=UTC),
        "causation_event_id": "evt-77",
    }
    record.update(overrides)
    return record


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


# -- TLS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelfSigned:
    """A certificate for 127.0.0.1 and localhost, made at test time."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts this certificate (and nothing else)."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(directory: Path) -> SelfSigned:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOOPBACK))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = SelfSigned(directory / "smtp-cert.pem", directory / "smtp-key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


# -- SMTP ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One message the SMTP server accepted: the envelope and the bytes of DATA."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    authenticated: bool

    def message(self) -> EmailMessage:
        return message_from_bytes(self.content, policy=policy.default)


class MailHandler:
    """Stores accepted mail. ``rcpt_replies`` and ``data_replies`` are answers (e.g.
    ``"451 4.3.0 Try again later"``) given, in order, instead of accepting."""

    def __init__(self) -> None:
        self.mail: list[Mail] = []
        self.rcpt_replies: list[str] = []
        self.data_replies: list[str] = []
        self._lock = threading.Lock()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self._lock:
            if self.rcpt_replies:
                return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            self.mail.append(
                Mail(
                    mail_from=str(envelope.mail_from),
                    rcpt_tos=list(envelope.rcpt_tos),
                    content=bytes(envelope.original_content or b""),
                    tls=_encrypted(server),
                    authenticated=bool(session.authenticated),
                )
            )
        return "250 2.0.0 Message accepted for delivery"


def _encrypted(server: SMTP) -> bool:
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


class Credentials:
    """An aiosmtpd authenticator for one user (PLAIN and LOGIN)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username.encode()
        self.password = password.encode()

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and hmac.compare_digest(data.login, self.username)
            and hmac.compare_digest(data.password, self.password)
        )
        return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: MailHandler
    controller: Controller


@contextmanager
def smtp_server(
    *,
    tls: SelfSigned | None = None,
    implicit_tls: bool = False,
    require_starttls: bool = False,
    credentials: tuple[str, str] | None = None,
) -> Iterator[SmtpServer]:
    """An aiosmtpd server on a free loopback port. With ``tls`` it offers STARTTLS (or,
    with ``implicit_tls``, speaks TLS from the first byte); with ``credentials`` it offers
    AUTH PLAIN/LOGIN, only once the connection is encrypted (``auth_require_tls``)."""
    handler = MailHandler()
    kwargs: dict[str, Any] = {}
    if tls is not None and implicit_tls:
        kwargs["ssl_context"] = tls.server_context()
    elif tls is not None:
        kwargs["tls_context"] = tls.server_context()
        kwargs["require_starttls"] = require_starttls
    if credentials is not None:
        kwargs["authenticator"] = Credentials(*credentials)
        kwargs["auth_require_tls"] = True
    controller = Controller(handler, hostname=LOOPBACK, port=free_port(), **kwargs)
    controller.start()
    try:
        yield SmtpServer(LOOPBACK, controller.port, handler, controller)
    finally:
        controller.stop()


@contextmanager
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung server)."""
    with socket.create_server((LOOPBACK, 0)) as sock:
        yield int(sock.getsockname()[1])


# -- Slack incoming webhook ------------------------------------------------------------


def slack_error(status: int, error: str, retry_after: int | None = None) -> Scripted:
    """Slack's answer: a bare error string (``invalid_payload``, ``no_service``...)."""
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Scripted(status, error, headers=headers, content_type="text/html")


class SlackWebhook(FakeServer):
    """``POST /services/T…/B…/…``: 200 ``ok``, or 400 ``invalid_payload`` / ``no_text``
    for a body Slack cannot post, as Slack does. Each incoming webhook posts to the one
    channel it was made for: ``webhook_url`` to ``channel``, and ``hook(name)`` makes
    another (a second channel, a person's DM); ``posted`` says where each message went. A
    URL no webhook has is answered 404 ``no_service``, as a revoked one is."""

    PATH = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"

    def __init__(self, channel: str = "#general") -> None:
        super().__init__()
        self.hooks: dict[str, str] = {self.PATH: channel}  # path -> the channel it posts to
        self.posted: list[tuple[str, dict[str, Any]]] = []  # (channel, payload) in order

    @property
    def webhook_url(self) -> str:
        return self.url + self.PATH

    def hook(self, channel: str) -> str:
        """A new incoming webhook's URL, posting to ``channel``."""
        path = f"/services/T00000000/B{len(self.hooks):08d}/{secrets.token_hex(12)}"
        self.hooks[path] = channel
        return self.url + path

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/services/{team}/{hook}/{token}", self._post)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        channel = self.hooks.get(request.path)
        if channel is None:
            return web.Response(status=404, text="no_service", content_type="text/html")
        try:
            payload = json.loads(await request.text())
        except ValueError:
            return web.Response(status=400, text="invalid_payload", content_type="text/html")
        if not isinstance(payload, dict):
            return web.Response(status=400, text="invalid_payload", content_type="text/html")
        if not payload.get("text") and not payload.get("blocks"):
            return web.Response(status=400, text="no_text", content_type="text/html")
        with self._lock:
            self.posted.append((channel, payload))
        return web.Response(text="ok", content_type="text/html")


# -- Twilio Messages API ---------------------------------------------------------------


def twilio_error(status: int, code: int, message: str, retry_after: int | None = None) -> Scripted:
    """Twilio's error body: ``{"code", "message", "more_info", "status"}``."""
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Scripted(status, json.dumps(body), headers=headers)


class TwilioMessages(FakeServer):
    """``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``: basic auth with the
    account's SID and token (else 401, error 20003); ``To`` (21604), ``From`` (21603) and
    ``Body`` (21602) required; 201 with the Message resource, status ``queued``."""

    def __init__(self, account_sid: str, auth_token: str) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token

    def routes(self, app: web.Application) -> None:
        app.router.add_post(f"/2010-04-01/Accounts/{self.account_sid}/Messages.json", self._post)

    def authorized(self, request: web.Request) -> web.StreamResponse | None:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if hmac.compare_digest(request.headers.get("Authorization", ""), f"Basic {expected}"):
            return None
        return _twilio_json(401, 20003, "Authenticate")

    async def _post(self, request: web.Request) -> web.StreamResponse:
        form = dict(parse_qsl(await request.text()))
        for name, code in (("To", 21604), ("From", 21603), ("Body", 21602)):
            if not form.get(name):
                return _twilio_json(400, code, f"A '{name}' parameter is required.")
        sid = "SM" + secrets.token_hex(16)
        return json_response(
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": form["To"],
                "from": form["From"],
                "body": form["Body"],
                "status": "queued",
                "num_segments": "1",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "error_code": None,
                "error_message": None,
                "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            },
            status=201,
        )


def _twilio_json(status: int, code: int, message: str) -> web.Response:
    scripted = twilio_error(status, code, message)
    return web.Response(status=status, text=scripted.body, content_type="application/json")


# -- Webhook receiver ------------------------------------------------------------------


def verify_signature(header: str, body: bytes, key: bytes, now: float, tolerance: float) -> bool:
    """``t=<unix>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>``, checked as a receiver would
    (any v1 may match; a stale ``t`` fails)."""
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, []).append(value)
    try:
        sent_at = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - sent_at) > tolerance:
        return False
    signed = b"%d." % sent_at + body
    expected = hmac.new(key, signed, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


@dataclass(frozen=True)
class Delivery:
    key: str
    body: bytes
    signature: str


class WebhookReceiver(FakeServer):
    """``POST /hooks/switchboard``: refuses (401) a missing or bad signature, answers 200
    and keeps the first delivery of each ``Idempotency-Key`` (``deliveries``); a repeat
    is answered 200 too but only counted in ``duplicates``."""

    PATH = "/hooks/switchboard"

    def __init__(self, signing_key: bytes, tolerance_s: float = 300.0) -> None:
        super().__init__()
        self.signing_key = signing_key
        self.tolerance_s = tolerance_s
        self.deliveries: dict[str, Delivery] = {}
        self.duplicates: list[str] = []

    @property
    def hook_url(self) -> str:
        return self.url + self.PATH

    def routes(self, app: web.Application) -> None:
        app.router.add_post(self.PATH, self._post)

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        header = request.headers.get("X-Switchboard-Signature", "")
        if not verify_signature(header, body, self.signing_key, time.time(), self.tolerance_s):
            return json_response({"error": "bad signature"}, status=401)
        key = request.headers.get("Idempotency-Key")
        if not key:
            return json_response({"error": "Idempotency-Key is required"}, status=400)
        if key in self.deliveries:
            self.duplicates.append(key)
        else:
            self.deliveries[key] = Delivery(key, body, header)
        return json_response({"received": key})
