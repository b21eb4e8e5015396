"""The load generator: a realistic multi-system feed in the providers' own webhook
formats, reproducible from a seed.

Each simulated person follows a story: they arrive by phone (the voice-AI assistant or
a plain call) or by a web form, then may get nurture e-mails (opened, clicked, replied),
a call back from a rep, book and sometimes cancel a meeting, move through CRM stages,
pay, and have a field job done; many go silent part-way (``story``: one function per
chapter, and one per provider's webhook). Stories interleave, so the feed looks like
many systems talking at once. Requests go through the gateway over HTTP (signed with
the sources' secrets) or, mapped by the same source connectors, straight to Kafka."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp

from connectors.sources import signatures
from connectors.sources.base import WebhookRequest
from connectors.sources.identity import strongest_key
from connectors.sources.publisher import Publisher
from connectors.sources.registry import SOURCES
from streams.settings import Settings

FIRST = ["ana", "bruno", "carla", "dev", "elena", "farid", "grace", "hugo", "ines", "jon"]
LAST = ["silva", "costa", "nguyen", "okafor", "schmidt", "tanaka", "garcia", "kowalski"]
SERVICES = ["boiler replacement", "heat pump install", "annual service", "leak repair"]
JOB_TYPES = {
    "boiler replacement": "boiler_installation",
    "heat pump install": "heat_pump_install",
    "annual service": "maintenance",
    "leak repair": "repair",
}
REPS = ["rep.jordan@northside.example", "rep.priya@northside.example", "rep.sam@northside.example"]
STAGES = [
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "contractsent",
    "closedwon",
]


@dataclass(frozen=True)
class Webhook:
    """One provider request: which source, and its body as the provider sends it."""

    source: str
    body: bytes
    form: bool = False

    @property
    def content_type(self) -> str:
        return "application/x-www-form-urlencoded" if self.form else "application/json"


@dataclass(frozen=True)
class Person:
    n: int
    first: str
    last: str
    email: str
    phone: str
    crm_id: str
    service: str


class Stories:
    """Interleaved per-person stories; ``next()`` is the feed's next webhook."""

    def __init__(self, seed: int, active: int = 200) -> None:
        self.random = random.Random(seed)
        self.active = active
        self.people = 0
        self.stories: list[Iterator[Webhook]] = []

    def _person(self) -> Person:
        self.people += 1
        n, r = self.people, self.random
        first, last = r.choice(FIRST), r.choice(LAST)
        return Person(
            n,
            first,
            last,
            f"{first}.{last}.{n}@example.com",
            f"+1415{r.randrange(2000000, 9999999)}",
            str(100000 + n),
            r.choice(SERVICES),
        )

    def next(self) -> Webhook:
        while True:
            while len(self.stories) < self.active:
                self.stories.append(story(self._person(), self.random))
            index = self.random.randrange(len(self.stories))
            try:
                return next(self.stories[index])
            except StopIteration:
                self.stories.pop(index)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _json(source: str, data: Any) -> Webhook:
    return Webhook(source, json.dumps(data).encode())


def _form(source: str, fields: dict[str, str]) -> Webhook:
    return Webhook(source, urlencode(fields).encode(), form=True)


def story(p: Person, r: random.Random) -> Iterator[Webhook]:
    """One person's webhooks, chapter by chapter; many go silent part-way. Every draw
    comes from ``r`` in a fixed order, so a seed always tells the same stories."""
    uid = f"{p.n}-{r.getrandbits(32):08x}"
    by_phone = yield from _first_contact(p, r, uid)
    if r.random() < 0.25:
        return  # silence after first contact
    if by_phone:  # a phone lead also fills in the web form
        yield _web_form(p, uid)
    reached = yield from _nurture(p, r, uid)
    if not reached:
        return  # the e-mail bounced
    rep = r.choice(REPS)
    if r.random() < 0.7:
        yield _twilio_call_back(p, r, uid)
    met = yield from _meeting(p, r, uid, rep)
    if not met or r.random() < 0.3:
        return  # cancelled, or silence before the deal
    yield from _deal(p, r)
    if r.random() < 0.5:
        yield from _paid_and_done(p, r, uid)


# The chapters, in the order of a story. A chapter that can end the story returns
# whether it goes on.


def _first_contact(p: Person, r: random.Random, uid: str) -> Generator[Webhook, None, bool]:
    """The person arrives: through the voice-AI assistant (40%), a plain call (25%) or
    the quote form (35%). True when by phone."""
    arrival = r.random()
    if arrival < 0.4:
        yield _vapi_call_report(p, r, uid)
    elif arrival < 0.65:
        yield _twilio_inbound_call(p, r, uid)
    else:
        yield _typeform_response(p, r, uid)
    return arrival < 0.65


def _nurture(p: Person, r: random.Random, uid: str) -> Generator[Webhook, None, bool]:
    """A nurture e-mail is delivered; 60% open it, and may click and reply; of the rest,
    5% bounce. False when it bounced."""
    message_id = f"<{uid}@mg.northside.example>"
    yield _mailgun("delivered", p, uid, message_id)
    if r.random() < 0.6:
        yield _mailgun("opened", p, uid, message_id)
        if r.random() < 0.4:
            yield _mailgun("clicked", p, uid, message_id, url="https://northside.example/book")
        if r.random() < 0.2:
            yield _mailgun_reply(p, uid, message_id)
    elif r.random() < 0.05:
        yield _mailgun("failed", p, uid, message_id)
        return False
    return True


def _meeting(p: Person, r: random.Random, uid: str, rep: str) -> Generator[Webhook, None, bool]:
    """Half book a site visit with ``rep``, and a tenth of them cancel it. False when
    cancelled."""
    if r.random() < 0.5:
        yield _calendly("invitee.created", p, uid, rep)
        if r.random() < 0.1:
            yield _calendly("invitee.canceled", p, uid, rep)
            return False
    return True


def _deal(p: Person, r: random.Random) -> Iterator[Webhook]:
    """The CRM gets the contact's e-mail, then the deal moves through one or more stages."""
    yield _hubspot_change(r, "contact.propertyChange", int(p.crm_id), "email", p.email)
    for stage in STAGES[: r.randint(1, len(STAGES))]:
        yield _hubspot_change(r, "deal.propertyChange", 900000 + p.n, "dealstage", stage)


def _paid_and_done(p: Person, r: random.Random, uid: str) -> Iterator[Webhook]:
    """The invoice is paid; for 60%, the field job is then scheduled and completed."""
    yield _stripe_invoice_paid(p, r, uid)
    if r.random() < 0.6:
        for status, previous in (("scheduled", "created"), ("completed", "in_progress")):
            yield _job(p, uid, status, previous)


# Each provider's webhook, in its own format. The draws from ``r`` happen in the order
# the fields are written: reordering them changes every seed's feed.


def _vapi_call_report(p: Person, r: random.Random, uid: str) -> Webhook:
    """Vapi's end-of-call report of an inbound call the assistant took."""
    return _json(
        "vapi",
        {
            "message": {
                "type": "end-of-call-report",
                "endedReason": "customer-ended-call",
                "endedAt": _iso(_now()),
                "durationSeconds": r.randint(40, 600),
                "call": {
                    "id": f"call-{uid}",
                    "type": "inboundPhoneCall",
                    "customer": {"number": p.phone},
                },
                "analysis": {
                    "summary": f"{p.first.title()} asked about {p.service}.",
                    "structuredData": {
                        "name": f"{p.first.title()} {p.last.title()}",
                        "outcome": r.choice(["qualified", "not_ready"]),
                        "requested_service": p.service,
                        "next_step": "book site visit",
                        "email": p.email if r.random() < 0.6 else None,
                    },
                },
                "assistant": {"name": "Riley (front desk)"},
            }
        },
    )


def _twilio_inbound_call(p: Person, r: random.Random, uid: str) -> Webhook:
    """Twilio's status callback of the person's call to the office, answered or not."""
    status = "no-answer" if r.random() < 0.3 else "completed"
    return _form(
        "twilio",
        {
            "AccountSid": "AC" + "0" * 32,
            "CallSid": f"CA{uid}",
            "From": p.phone,
            "To": "+14155550100",
            "CallStatus": status,
            "Direction": "inbound",
            "CallDuration": "0" if status == "no-answer" else str(r.randint(30, 400)),
            "Timestamp": _now().strftime("%a, %d %b %Y %H:%M:%S +0000"),
        },
    )


def _typeform_response(p: Person, r: random.Random, uid: str) -> Webhook:
    """Typeform's response to the quote form, with the campaign it came from."""
    return _json(
        "typeform",
        {
            "event_id": f"tf-{uid}",
            "event_type": "form_response",
            "form_response": {
                "form_id": "lT4Z3j",
                "token": f"tok-{uid}",
                "submitted_at": _iso(_now()),
                "definition": {"title": "Request a quote"},
                "hidden": {"utm_source": r.choice(["google", "facebook", "newsletter"])},
                "answers": [
                    {"type": "email", "email": p.email, "field": {"id": "e", "ref": "email"}},
                    {
                        "type": "phone_number",
                        "phone_number": p.phone,
                        "field": {"id": "p", "ref": "phone"},
                    },
                    {
                        "type": "choice",
                        "choice": {"label": p.service},
                        "field": {"id": "s", "ref": "service"},
                    },
                ],
            },
        },
    )


def _web_form(p: Person, uid: str) -> Webhook:
    """The site's own contact form (the generic ``forms`` source)."""
    return _json(
        "forms",
        {
            "submission_id": f"sub-{uid}",
            "form_id": "contact-us",
            "submitted_at": _iso(_now()),
            "email": p.email,
            "phone": p.phone,
            "fields": {"service": p.service},
        },
    )


def _mailgun_reply(p: Person, uid: str, message_id: str) -> Webhook:
    """Mailgun's inbound route: the person's reply to the nurture e-mail."""
    return _form(
        "mailgun-inbound",
        {
            "sender": p.email,
            "recipient": "quotes@mg.northside.example",
            "subject": "Re: your quote",
            "stripped-text": "Sounds good, when can you come?",
            "Message-Id": f"<reply-{uid}@example.com>",
            "In-Reply-To": message_id,
            "timestamp": str(int(time.time())),
            "token": "t",
            "signature": "s",
        },
    )


def _twilio_call_back(p: Person, r: random.Random, uid: str) -> Webhook:
    """Twilio's status callback of a rep's call back to the person."""
    return _form(
        "twilio",
        {
            "AccountSid": "AC" + "0" * 32,
            "CallSid": f"CAout{uid}",
            "From": "+14155550100",
            "To": p.phone,
            "CallStatus": r.choice(["completed", "completed", "no-answer"]),
            "Direction": "outbound-dial",
            "CallDuration": str(r.randint(0, 300)),
        },
    )


def _hubspot_change(
    r: random.Random, subscription: str, object_id: int, name: str, value: str
) -> Webhook:
    """HubSpot's notice that one property of a contact or a deal changed."""
    return _json(
        "hubspot",
        [
            {
                "eventId": r.getrandbits(40),
                "subscriptionType": subscription,
                "objectId": object_id,
                "occurredAt": int(time.time() * 1000),
                "propertyName": name,
                "propertyValue": value,
            }
        ],
    )


def _stripe_invoice_paid(p: Person, r: random.Random, uid: str) -> Webhook:
    """Stripe's ``invoice.paid`` event for the person's job."""
    return _json(
        "stripe",
        {
            "id": f"evt_{uid}",
            "type": "invoice.paid",
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": f"in_{uid}",
                    "amount_paid": r.randint(150, 12000) * 100,
                    "currency": "usd",
                    "customer": f"cus_{p.n}",
                    "customer_email": p.email,
                    "customer_name": f"{p.first.title()} {p.last.title()}",
                }
            },
        },
    )


def _job(p: Person, uid: str, status: str, previous: str) -> Webhook:
    """The field-service system's notice that the job moved from ``previous`` to ``status``."""
    return _json(
        "jobs",
        {
            "event_id": f"job-{uid}-{status}",
            "occurred_at": _iso(_now()),
            "job": {
                "id": f"job-{uid}",
                "type": JOB_TYPES[p.service],
                "status": status,
                "previous_status": previous,
                "technician": "tech-sam",
            },
            "customer": {"id": f"cust-{p.n}", "email": p.email, "phone": p.phone},
        },
    )


def _mailgun(event: str, p: Person, uid: str, message_id: str, url: str | None = None) -> Webhook:
    data: dict[str, Any] = {
        "id": f"{event}-{uid}",
        "event": event,
        "timestamp": time.time(),
        "recipient": p.email,
        "message": {"headers": {"message-id": message_id, "subject": "Your quote"}},
    }
    if url:
        data["url"] = url
    if event == "failed":
        data["severity"] = "permanent"
        data["reason"] = "bounce"
    return _json(
        "mailgun",
        {"signature": {"timestamp": "0", "token": "t", "signature": "s"}, "event-data": data},
    )


def _calendly(event: str, p: Person, uid: str, rep: str) -> Webhook:
    start = _now() + timedelta(days=2)
    return _json(
        "calendly",
        {
            "event": event,
            "created_at": _iso(_now()),
            "payload": {
                "uri": f"https://api.calendly.com/scheduled_events/{uid}/invitees/{uid}",
                "email": p.email,
                "name": f"{p.first.title()} {p.last.title()}",
                "scheduled_event": {
                    "uri": f"https://api.calendly.com/scheduled_events/{uid}",
                    "name": "Site visit",
                    "start_time": _iso(start),
                    "end_time": _iso(start + timedelta(minutes=45)),
                    "event_memberships": [{"user_email": rep}],
                },
                "cancellation": {"canceled_by": p.first.title(), "reason": "changed plans"}
                if event == "invitee.canceled"
                else None,
            },
        },
    )


def sign(webhook: Webhook, url: str, secret: bytes) -> tuple[bytes, dict[str, str]]:
    """Body and headers as the provider would send them (Mailgun signs inside the body)."""
    now = int(time.time())
    body = webhook.body
    headers = {"Content-Type": webhook.content_type}
    name = webhook.source
    if name in ("stripe", "calendly", "forms", "jobs"):
        header = {"stripe": "Stripe-Signature", "calendly": "Calendly-Webhook-Signature"}.get(
            name, "X-Switchboard-Signature"
        )
        headers[header] = signatures.sign_timestamped(body, secret, now)
    elif name == "twilio":
        params = dict(WebhookRequest(body, headers).form_fields())
        headers["X-Twilio-Signature"] = signatures.sign_twilio(url, params, secret)
    elif name == "vapi":
        headers["X-Vapi-Secret"] = secret.decode()
    elif name == "typeform":
        headers["Typeform-Signature"] = signatures.sign_typeform(body, secret)
    elif name == "hubspot":
        ts = str(now * 1000)
        headers["X-HubSpot-Request-Timestamp"] = ts
        headers["X-HubSpot-Signature-v3"] = signatures.sign_hubspot_v3(
            "POST", url, body, ts, secret
        )
    elif name in ("mailgun", "mailgun-inbound"):
        token = f"{time.monotonic_ns():x}"
        sig = {
            "timestamp": str(now),
            "token": token,
            "signature": signatures.sign_mailgun(str(now), token, secret),
        }
        if name == "mailgun":
            data = json.loads(body)
            data["signature"] = sig
            body = json.dumps(data).encode()
        else:
            fields = WebhookRequest(body, headers).form_fields() | sig
            body = urlencode(fields).encode()
    return body, headers


@dataclass
class LoadReport:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        rate = self.sent / self.elapsed_s if self.elapsed_s else 0.0
        lines = [
            f"sent {self.sent} webhooks in {self.elapsed_s:.1f}s ({rate:,.0f}/s); "
            f"answers: {dict(sorted(self.statuses.items()))}",
            "by source: " + ", ".join(f"{k}={v}" for k, v in sorted(self.by_source.items())),
        ]
        if self.latencies_s:
            lines.append(
                f"latency p50 {self.percentile(0.5) * 1000:.1f} ms, "
                f"p95 {self.percentile(0.95) * 1000:.1f} ms, "
                f"p99 {self.percentile(0.99) * 1000:.1f} ms, "
                f"mean {statistics.fmean(self.latencies_s) * 1000:.1f} ms"
            )
        return "\n".join(lines)


async def run_load(
    settings: Settings,
    *,
    rate: float,
    duration: float | None = None,
    count: int | None = None,
    seed: int = 1,
    target: str = "gateway",
    gateway_url: str | None = None,
    secrets: dict[str, bytes] | None = None,
    concurrency: int = 64,
) -> LoadReport:
    """Send webhooks at ``rate`` per second (0: as fast as possible) for ``duration``
    seconds or ``count`` webhooks, whichever ends first."""
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    stories = Stories(seed)
    report = LoadReport()
    limit = asyncio.Semaphore(concurrency)
    base = (gateway_url or f"http://{settings.gateway_bind}:{settings.gateway_port}").rstrip("/")
    publisher = Publisher(settings) if target == "kafka" else None
    session = aiohttp.ClientSession() if target == "gateway" else None
    pending: set[asyncio.Task[None]] = set()

    async def deliver(webhook: Webhook) -> None:
        started = time.perf_counter()
        try:
            if publisher is not None:
                status = await _published(publisher, webhook)
            else:
                assert session is not None and secrets is not None
                status = await _posted(session, base, webhook, secrets[webhook.source])
        except Exception as exc:
            status = type(exc).__name__
        report.latencies_s.append(time.perf_counter() - started)
        report.statuses[status] += 1
        limit.release()

    start = time.perf_counter()
    try:
        while True:
            elapsed = time.perf_counter() - start
            if (duration is not None and elapsed >= duration) or (
                count is not None and report.sent >= count
            ):
                break
            if rate > 0:
                await _sleep_until(start + report.sent / rate)
            webhook = stories.next()
            if secrets is not None and webhook.source not in secrets:
                continue
            await limit.acquire()
            task = asyncio.create_task(deliver(webhook))
            pending.add(task)
            task.add_done_callback(pending.discard)
            report.sent += 1
            report.by_source[webhook.source] += 1
        await asyncio.gather(*pending)
    finally:
        report.elapsed_s = time.perf_counter() - start
        if session is not None:
            await session.close()
        if publisher is not None:
            publisher.close()
    return report


async def _published(publisher: Publisher, webhook: Webhook) -> str:
    """``webhook`` mapped by its source connector and written straight to Kafka."""
    request = WebhookRequest(webhook.body, {"Content-Type": webhook.content_type})
    events = SOURCES[webhook.source].parse(request, datetime.now(UTC))
    await publisher.publish_events([(strongest_key(e["identity"]), e) for e in events])
    return "published"


async def _posted(
    session: aiohttp.ClientSession, base: str, webhook: Webhook, secret: bytes
) -> str:
    """``webhook`` signed and posted to the gateway at ``base``; the answer's status."""
    url = f"{base}/webhooks/{webhook.source}"
    body, headers = sign(webhook, url, secret)
    async with session.post(url, data=body, headers=headers) as response:
        await response.read()
        return str(response.status)


async def _sleep_until(due: float) -> None:
    """Wait for the ``time.perf_counter()`` moment ``due``, unless it has passed."""
    if due > time.perf_counter():
        await asyncio.sleep(due - time.perf_counter())
