"""The HTTP ingestion gateway: ``POST /webhooks/<source>`` for every source connector.

For each request, in order: the body is read up to the size limit (413 past it), the
provider's signature is checked (401, and nothing is written), the payload is mapped
to canonical events (400 naming the field), and the events are written to Kafka with
acks=all before the answer (503 with Retry-After when Kafka cannot take them, so the
provider retries). Every 400 and 413 also goes to the dead-letter topic with the raw
request, its source and the reason."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.sources.base import Rejected, SignatureRejected, WebhookRequest
from connectors.sources.identity import strongest_key
from connectors.sources.publisher import Publisher, PublishFailed
from connectors.sources.registry import SOURCES
from streams import metrics
from streams.dlq import dead_letter
from streams.serde import SchemaViolation
from streams.settings import Settings, secret_env

log = logging.getLogger(__name__)

STAGE = "gateway"
REJECTION_REASONS = (
    "bad_signature",
    "stale_timestamp",
    "malformed_body",
    "invalid_payload",
    "too_large",
    "kafka_unavailable",
)
RETRY_AFTER_S = 30
# What of an oversized body is kept in the dead letter: enough to see what it was.
OVERSIZED_KEPT_BYTES = 64 * 1024

PUBLISHER = web.AppKey("publisher", Publisher)


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
    limit = settings.gateway_max_body_bytes
    declare_sources(sorted(secrets), clock())

    async def webhook(request: web.Request) -> web.Response:
        name = request.match_info["source"]
        started = time.perf_counter()
        response = await _handle(request, name)
        if name in SOURCES:  # bounded label values only
            metrics.GATEWAY_REQUESTS.labels(source=name, status=str(response.status)).inc()
            metrics.GATEWAY_SECONDS.labels(source=name).observe(time.perf_counter() - started)
        return response

    async def _handle(request: web.Request, name: str) -> web.Response:
        source = SOURCES.get(name)
        if source is None:
            return _error(404, f"no source named {name!r}; have: {', '.join(sorted(SOURCES))}")
        secret = secrets.get(name)
        if secret is None:
            return _error(404, f"source {name!r} is not enabled: set {secret_env(name)}")
        received = datetime.now(UTC)

        body, complete = await _read_limited(request, limit)
        if not complete:
            declared = request.content_length
            size = f"{declared} bytes" if declared is not None else f"more than {limit} bytes"
            reason = f"body of {size} exceeds the {limit}-byte limit"
            return await _reject(name, 413, "too_large", reason, body, request)

        webhook_request = WebhookRequest(
            body=body,
            headers=request.headers,
            url=_called_url(request, settings.gateway_public_url),
            method=request.method,
        )
        try:
            source.verify(webhook_request, secret, clock())
        except SignatureRejected as exc:
            metrics.SOURCE_REJECTED.labels(source=name, reason=exc.reason).inc()
            return _error(401, str(exc))

        try:
            events = source.parse(webhook_request, received)
            keyed = [(strongest_key(event["identity"]), event) for event in events]
        except Rejected as exc:
            return await _reject(name, exc.status, exc.reason, str(exc), body, request, exc.field)

        try:
            with metrics.SOURCE_PUBLISH_SECONDS.labels(source=name).time():
                await request.app[PUBLISHER].publish_events(keyed)
        except SchemaViolation as exc:
            return await _reject(name, 400, "invalid_payload", str(exc), body, request)
        except PublishFailed as exc:
            log.warning("%s: Kafka unavailable, answering 503: %s", name, exc)
            metrics.SOURCE_REJECTED.labels(source=name, reason="kafka_unavailable").inc()
            return _unavailable(str(exc))
        for _, event in keyed:
            metrics.SOURCE_EVENTS.labels(source=name, event_type=event["event_type"]).inc()
            delay = (received - event["event_time"]).total_seconds()
            metrics.SOURCE_DELAY.labels(source=name).observe(max(delay, 0.0))
        if keyed:
            metrics.SOURCE_LAST_EVENT.labels(source=name).set(clock())
        return web.json_response(
            {"accepted": len(keyed), "event_ids": [event["event_id"] for _, event in keyed]}
        )

    async def _reject(
        name: str,
        status: int,
        reason: str,
        message: str,
        body: bytes,
        request: web.Request,
        field: str | None = None,
    ) -> web.Response:
        """Answer ``status`` after the raw request is safely in the dead-letter topic."""
        metrics.SOURCE_REJECTED.labels(source=name, reason=reason).inc()
        headers = {
            k: v.encode() for k, v in request.headers.items() if k.lower() != "authorization"
        }
        letter = dead_letter(
            stage=STAGE, error=message, error_type=reason, value=body, source=name, headers=headers
        )
        try:
            await request.app[PUBLISHER].publish_dead_letter(f"source:{name}".encode(), letter)
        except PublishFailed as exc:
            # Not even the dead letter could be written: make the provider retry.
            metrics.SOURCE_REJECTED.labels(source=name, reason="kafka_unavailable").inc()
            return _unavailable(str(exc))
        body_json: dict[str, Any] = {"error": message}
        if field is not None:
            body_json["field"] = field
        if status == 413:
            body_json["limit_bytes"] = limit
        return web.json_response(body_json, status=status)

    async def metrics_page(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"sources": sorted(secrets)})

    # The body is read by hand, to dead-letter what is over the limit.
    app = web.Application(client_max_size=limit + 1)
    app[PUBLISHER] = publisher
    app.router.add_post("/webhooks/{source}", webhook)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    return app


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


async def _read_limited(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """(body, True), or (its first bytes, False) when it is over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        return await request.content.read(OVERSIZED_KEPT_BYTES), False
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:OVERSIZED_KEPT_BYTES], False
    return b"".join(chunks), True


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
