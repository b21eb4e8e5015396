"""The HTTP ingestion gateway: ``POST /webhooks/<source>`` for every source connector.

For each request, in order: the body is read up to the size limit (413 past it), the
provider's signature is checked (401, and nothing is written), the payload is mapped
to canonical events and every one of them checked (400 naming the field), and only then
are the events written to Kafka with acks=all before the answer (503 with Retry-After
when Kafka cannot take them, so the provider retries). Every 400 after the signature
held also goes to the dead-letter topic with the raw request (and only the headers of
STORED_HEADERS: never a credential), its source and the reason. Nothing unauthenticated
is stored: a body over the limit cannot be verified, so a 413 is only counted.

No input answers 500: providers retry a 5xx until they disable the endpoint, so a
mapping that fails unexpectedly is a 400 dead letter naming the error, and a signature
check that does is a 401.

``Gateway`` holds these steps as methods, in that order: ``webhook`` (the handler,
which counts the answer) -> ``_handle`` (404, ``_read_limited``, 413) ->
``_authenticate`` -> ``_once`` (replayed nonces) -> ``_accept`` (``_mapped``,
``_publish``, ``_count``, ``_answer``); ``_reject`` writes the dead letter."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.sources.base import Event, Rejected, SignatureRejected, Source, WebhookRequest
from connectors.sources.canonical import check_event_time
from connectors.sources.identity import strongest_key
from connectors.sources.publisher import Publisher, PublishFailed, RecordTooLarge
from connectors.sources.registry import SOURCES, configured
from connectors.sources.replay import ReusedNonce, SeenNonces
from connectors.sources.signatures import DEFAULT_TOLERANCE_S
from connectors.sources.vapi_tools import LookupFailed
from streams import metrics
from streams.dlq import dead_letter
from streams.serde import SchemaViolation
from streams.settings import Settings, secret, secret_env
from streams.web import LOOKUP_PATH, LOOKUP_TOKEN_SECRET

log = logging.getLogger(__name__)

STAGE = "gateway"
REJECTION_REASONS = (
    "bad_signature",
    "stale_timestamp",
    "malformed_body",
    "invalid_payload",
    "too_large",
    "kafka_unavailable",
    "replayed",
)
RETRY_AFTER_S = 30
# The request headers a dead letter keeps (an allow-list: a provider's shared secret,
# cookies or signatures that could be replayed are never stored).
STORED_HEADERS = frozenset({"content-type", "content-length", "user-agent", "x-request-id"})
# An error message that quotes the input is cut to this many characters.
MAX_REASON_CHARS = 1000

Keyed = list[tuple[bytes, Event]]


def secrets_from_environment() -> dict[str, bytes]:
    """Each source's signing secret from ``SWITCHBOARD_SECRET_<SOURCE>``; a source
    without one is not served."""
    found = {}
    for name in SOURCES:
        value = os.environ.get(secret_env(name))
        if value:
            found[name] = value.encode()
    return found


def create_gateway(
    settings: Settings,
    publisher: Publisher,
    secrets: dict[str, bytes],
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """The gateway's application: the webhooks, ``/metrics`` and ``/healthz``."""
    gateway = Gateway(settings, publisher, secrets, clock)
    declare_sources(sorted(secrets), clock())
    # The body is read by hand (_read_limited), to count and answer what is over the limit.
    app = web.Application(client_max_size=gateway.limit + 1)
    app.on_cleanup.append(gateway.lookup.close)
    app.router.add_post("/webhooks/{source}", gateway.webhook)
    app.router.add_get("/metrics", _metrics_page)
    app.router.add_get("/healthz", gateway.healthz)
    return app


@dataclass(frozen=True, slots=True)
class Incoming:
    """A webhook whose body is read: what each later step of the request looks at."""

    name: str  # the source, from the path
    source: Source
    secret: bytes  # the source's signing secret, also scrubbed from every message
    webhook: WebhookRequest  # the body, the headers as received, the URL called
    received: datetime


class CallerLookup:
    """A contact's card from the caller lookup (``streams.web``), for a source's answer
    (a Vapi assistant asking who is calling); one HTTP session, opened on first use."""

    def __init__(self, settings: Settings) -> None:
        self.token = secret(LOOKUP_TOKEN_SECRET)
        self.url = settings.lookup_url.rstrip("/") + LOOKUP_PATH
        self.timeout_s = settings.lookup_timeout_s
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, kind: str, value: str) -> dict[str, Any] | None:
        """The card of whoever has this ``kind`` ("phone" or "email") of ``value``, None
        when it knows nobody by it; LookupFailed when it cannot tell."""
        if self.token is None:
            log.warning("caller lookup: %s is not set", secret_env(LOOKUP_TOKEN_SECRET))
            raise LookupFailed("no token")
        if self.session is None:
            self.session = aiohttp.ClientSession()
        try:
            async with self.session.get(
                self.url,
                params={kind: value},
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                if response.status == 404:
                    return None
                if response.status != 200:
                    raise LookupFailed(f"answered {response.status}")
                found: dict[str, Any] = (await response.json())["contact"]
                return found
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            log.warning("caller lookup at %s failed: %s", self.url, type(exc).__name__)
            raise LookupFailed(type(exc).__name__) from None

    async def close(self, _app: web.Application) -> None:
        if self.session is not None:
            await self.session.close()


class Gateway:
    """The sources served, with their secrets, and what happens to a webhook POST."""

    def __init__(
        self,
        settings: Settings,
        publisher: Publisher,
        secrets: dict[str, bytes],
        clock: Callable[[], float],
    ) -> None:
        self.publisher = publisher
        self.secrets = secrets
        self.clock = clock
        self.limit = settings.gateway_max_body_bytes
        self.public_url = settings.gateway_public_url
        self.max_skew_s = settings.max_event_skew_s
        self.sources = configured(settings)
        self.lookup = CallerLookup(settings)
        # A nonce is remembered as long as a signature over it could still be fresh.
        self.nonces = SeenNonces(window_s=DEFAULT_TOLERANCE_S + 60)

    async def webhook(self, request: web.Request) -> web.Response:
        """``POST /webhooks/<source>``: the answer, counted by source and status."""
        name = request.match_info["source"]
        started = time.perf_counter()
        response = await self._handle(request, name)
        if name in SOURCES:  # bounded label values only
            metrics.GATEWAY_REQUESTS.labels(source=name, status=str(response.status)).inc()
            metrics.GATEWAY_SECONDS.labels(source=name).observe(time.perf_counter() - started)
        return response

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"sources": sorted(self.secrets)})

    async def _handle(self, request: web.Request, name: str) -> web.Response:
        """404 for a source not served, 413 for a body over the limit, else the request
        authenticated and accepted."""
        source = self.sources.get(name)
        if source is None:
            return _error(404, f"no source named {name!r}; have: {', '.join(sorted(SOURCES))}")
        key = self.secrets.get(name)
        if key is None:
            return _error(404, f"source {name!r} is not enabled: set {secret_env(name)}")
        received = datetime.now(UTC)
        body = await _read_limited(request, self.limit)
        if body is None:  # unverifiable, so not stored: counted, and answered
            return _too_large(request, name, self.limit)
        webhook = WebhookRequest(
            body=body,
            headers=request.headers,
            url=_called_url(request, self.public_url),
            method=request.method,
        )
        incoming = Incoming(name, source, key, webhook, received)
        refused = self._authenticate(incoming)
        if refused is not None:
            return refused
        return await self._once(incoming)

    def _authenticate(self, incoming: Incoming) -> web.Response | None:
        """None when the provider's signature holds, else the 401 (nothing is stored)."""
        name = incoming.name
        try:
            incoming.source.verify(incoming.webhook, incoming.secret, self.clock())
        except SignatureRejected as exc:
            metrics.SOURCE_REJECTED.labels(source=name, reason=exc.reason).inc()
            return _error(401, str(exc))
        except Exception as exc:  # unverifiable is unauthenticated: 401, never stored
            if not isinstance(exc, Rejected):  # a bug to fix, not only bad input
                log.warning("%s: signature check failed on the input", name, exc_info=True)
            metrics.SOURCE_REJECTED.labels(source=name, reason="bad_signature").inc()
            why = str(exc) if isinstance(exc, Rejected) else type(exc).__name__
            message = f"signature could not be checked: {why}"
            return _error(401, _scrubbed(message, incoming.secret))
        return None

    async def _once(self, incoming: Incoming) -> web.Response:
        """The request accepted, once per nonce where the signature covers one instead of
        the body (Mailgun's token): the same request again gets the same answer and
        publishes nothing; the nonce with another body is a replay (401)."""
        source = incoming.source
        nonce = source.nonce(incoming.webhook) if source.nonce is not None else None
        if nonce is None:
            return await self._accept(incoming)
        key, body = f"{incoming.name}:{nonce}", incoming.webhook.body
        try:
            answered = self.nonces.lookup(key, body, self.clock())
        except ReusedNonce as exc:
            metrics.SOURCE_REJECTED.labels(source=incoming.name, reason="replayed").inc()
            return _error(401, str(exc))
        if answered is not None:  # the same request again: the same answer, nothing new
            return web.json_response(answered.body, status=answered.status)
        response = await self._accept(incoming)
        if response.status < 500:  # a 503 is retried, and must then be heard again
            assert isinstance(response.body, bytes)
            self.nonces.remember(
                key, body, response.status, json.loads(response.body), self.clock()
            )
        return response

    async def _accept(self, incoming: Incoming) -> web.Response:
        """Map and check, publish, count and answer an authenticated request."""
        # Everything is mapped and checked before anything is published: a request is
        # all accepted or all refused, so a provider's retry never half-duplicates.
        try:
            keyed = _mapped(incoming.source, incoming.webhook, incoming.received, self.max_skew_s)
        except Rejected as exc:
            message = _scrubbed(str(exc), incoming.secret)
            return await self._reject(incoming, exc.status, exc.reason, message, exc.field)
        except Exception as exc:
            log.warning("%s: mapping failed on the input", incoming.name, exc_info=True)
            message = f"payload could not be mapped: {type(exc).__name__}: {exc}"
            message = _scrubbed(message, incoming.secret)
            return await self._reject(incoming, 400, "invalid_payload", message)
        refused = await self._publish(incoming, keyed)
        if refused is not None:
            return refused
        self._count(incoming, keyed)
        return await self._answer(incoming, keyed)

    async def _publish(self, incoming: Incoming, keyed: Keyed) -> web.Response | None:
        """None once Kafka holds every event (acks=all); else the answer: a dead letter
        and 400 or 413 when a retry would fail the same way, 503 when it would not."""
        name = incoming.name
        try:
            with metrics.SOURCE_PUBLISH_SECONDS.labels(source=name).time():
                await self.publisher.publish_events(keyed)
        except SchemaViolation as exc:
            message = _scrubbed(str(exc), incoming.secret)
            return await self._reject(incoming, 400, "invalid_payload", message)
        except RecordTooLarge as exc:
            return await self._reject(incoming, 413, "too_large", str(exc))
        except PublishFailed as exc:
            log.warning("%s: Kafka unavailable, answering 503: %s", name, exc)
            metrics.SOURCE_REJECTED.labels(source=name, reason="kafka_unavailable").inc()
            return _unavailable(str(exc))
        return None

    def _count(self, incoming: Incoming, keyed: Keyed) -> None:
        """The published events by type, their delay, and the source's last event."""
        name = incoming.name
        for _, event in keyed:
            metrics.SOURCE_EVENTS.labels(source=name, event_type=event["event_type"]).inc()
            delay = (incoming.received - event["event_time"]).total_seconds()
            metrics.SOURCE_DELAY.labels(source=name).observe(max(delay, 0.0))
        if keyed:
            metrics.SOURCE_LAST_EVENT.labels(source=name).set(self.clock())

    async def _answer(self, incoming: Incoming, keyed: Keyed) -> web.Response:
        """The source's own answer when it makes one (Vapi's tool calls), else the events
        accepted and their ids."""
        if incoming.source.answer is not None:
            try:
                answered = await incoming.source.answer(incoming.webhook, self.lookup)
            except Exception:  # the events are in: they are acknowledged whatever happens
                log.warning("%s: the answer could not be made", incoming.name, exc_info=True)
                answered = None
            if answered is not None:
                return web.json_response(answered)
        return web.json_response(
            {"accepted": len(keyed), "event_ids": [event["event_id"] for _, event in keyed]}
        )

    async def _reject(
        self,
        incoming: Incoming,
        status: int,
        reason: str,
        message: str,
        field: str | None = None,
    ) -> web.Response:
        """Answer ``status`` after the raw request is safely in the dead-letter topic."""
        name = incoming.name
        metrics.SOURCE_REJECTED.labels(source=name, reason=reason).inc()
        # aiohttp keeps a header's undecodable bytes as surrogates: store the bytes sent.
        headers = {
            k: v.encode("utf-8", "surrogateescape")
            for k, v in incoming.webhook.headers.items()
            if k.lower() in STORED_HEADERS
        }
        body = incoming.webhook.body
        letter = dead_letter(
            stage=STAGE, error=message, error_type=reason, value=body, source=name, headers=headers
        )
        try:
            await self.publisher.publish_dead_letter(f"source:{name}".encode(), letter)
        except PublishFailed as exc:
            # Not even the dead letter could be written: make the provider retry.
            metrics.SOURCE_REJECTED.labels(source=name, reason="kafka_unavailable").inc()
            return _unavailable(str(exc))
        body_json: dict[str, Any] = {"error": message}
        if field is not None:
            body_json["field"] = field
        return web.json_response(body_json, status=status)


async def _metrics_page(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _mapped(
    source: Source, request: WebhookRequest, received: datetime, max_skew_s: float
) -> Keyed:
    """Every event of the request with its key, or Rejected for the first bad one."""
    events = source.parse(request, received)
    for event in events:
        try:
            check_event_time(
                event["event_time"], received, field=source.time_field, max_skew_s=max_skew_s
            )
        except Rejected as exc:
            if len(events) == 1:
                raise
            raise Rejected(f"event {event['event_id']}: {exc}", field=exc.field) from None
    return [(strongest_key(event["identity"]), event) for event in events]


def _scrubbed(message: str, secret: bytes) -> str:
    """``message`` fit for a response and a dead letter: never the source's secret (Vapi
    sends it as a header), no lone surrogate (it could not be encoded), not too long."""
    text = secret.decode(errors="replace")
    if text:
        message = message.replace(text, "[secret]")
    message = message.encode("utf-8", "backslashreplace").decode()
    if len(message) > MAX_REASON_CHARS:
        message = message[: MAX_REASON_CHARS - 3] + "..."
    return message


def declare_sources(served: list[str], now: float) -> None:
    """The served sources' series, at zero, and their silence counted from ``now``."""
    metrics.declare(
        metrics.SOURCE_REJECTED,
        ({"source": name, "reason": reason} for name in served for reason in REJECTION_REASONS),
    )
    dead = ("too_large", "malformed_body", "invalid_payload")
    metrics.declare(metrics.DEAD_LETTERS, ({"stage": STAGE, "error_type": r} for r in dead))
    for name in served:
        metrics.SOURCE_LAST_EVENT.labels(source=name).set(now)


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to be over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None
    return b"".join(chunks)


def _too_large(request: web.Request, name: str, limit: int) -> web.Response:
    """The 413 for a body over the limit, counted (an unverifiable body is not stored)."""
    declared = request.content_length
    size = f"{declared} bytes" if declared is not None else f"more than {limit} bytes"
    metrics.SOURCE_REJECTED.labels(source=name, reason="too_large").inc()
    return web.json_response(
        {"error": f"body of {size} exceeds the {limit}-byte limit", "limit_bytes": limit},
        status=413,
    )


def _called_url(request: web.Request, public_url: str | None) -> str:
    if public_url:
        return public_url.rstrip("/") + request.path_qs
    return str(request.url)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _unavailable(message: str) -> web.Response:
    return web.json_response(
        {"error": f"events could not be written durably, retry later: {message}"},
        status=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def run(settings: Settings) -> None:
    secrets = secrets_from_environment()
    if not secrets:
        raise SystemExit(
            "no source is enabled: set at least one of "
            + ", ".join(secret_env(name) for name in SOURCES)
        )
    publisher = Publisher(settings)
    app = create_gateway(settings, publisher, secrets)
    app.on_cleanup.append(lambda _app: _close(publisher))
    print(
        f"gateway: http://{settings.gateway_bind}:{settings.gateway_port}/webhooks/<source> "
        f"for {', '.join(sorted(secrets))}; /metrics and /healthz",
        flush=True,
    )
    web.run_app(
        app,
        host=settings.gateway_bind,
        port=settings.gateway_port,
        print=None,
        access_log=None,
        handle_signals=True,
    )


async def _close(publisher: Publisher) -> None:
    publisher.close()
