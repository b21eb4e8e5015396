"""Enrichment: a connector (``switchboard enrich``) that asks an external provider about
new contacts and publishes what it said back as a CONTACT_ENRICHED source event.

What it reads: the CRM command topic's UPSERT_CONTACT commands. The contact stage already
writes one for every new contact and again whenever the CRM fields change, so it also
sees the e-mail a phone-first contact gives later; the audit topic's ``contact_created``
comes once, before that e-mail may be known. Either way the workers do no extra work: this
is one more consumer group on a topic they already write.

The provider speaks the shape of the well-known company/person APIs (Clearbit-like):

- ``GET {url}/v2/companies/find?domain=acme.com`` -> ``{"name", "domain", "category":
  {"industry"}, "metrics": {"employees", "annualRevenue"}, "geo": {"countryCode"}}``
- ``GET {url}/v2/people/find?email=ana@acme.com`` -> ``{"name": {"fullName"},
  "employment": {"title", "seniority", "domain", "name"}}``

with ``Authorization: Bearer <SWITCHBOARD_SECRET_ENRICHMENT_TOKEN>``. 404 is "unknown":
the contact gets a ``not_found`` event at once, so nothing waits for it. 408, 429 (its
Retry-After is honoured) and 5xx and timeouts are retried with exponential backoff, up to
``enrichment_attempts`` calls; then the command is dead-lettered (replayable) and the
connector goes on with the next contact: a provider that is down delays enrichment, it
never stops it for the others, nor scoring and routing (see the README: leads are scored
and routed at once, and enrichment that comes later rescores them). Any other status
(401, 403, 422) is dead-lettered at once with the provider's answer; the token is never
in a log or a letter.

Answers are cached per domain and per e-mail (LRU, ``enrichment_cache_size``): a thousand
leads from one company cost one company call. A free-mail domain (gmail.com) is never
looked up as a company. Calls are rate limited (``enrichment_rate_per_s``).

The event id is derived from the contact, the e-mail and the provider's answer, so a
restart that enriches a contact again publishes the same event, which the contact stage
ignores (it dedupes by event id)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
from confluent_kafka import Consumer, Message
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.delivery import Rejected, Retryable
from connectors.http import raise_for_status, request
from connectors.policy import Backoff, RateLimiter
from connectors.sources.base import Event
from connectors.sources.publisher import Publisher
from streams import metrics
from streams.dlq import message_dead_letter
from streams.kafka import commit_batch, group_consumer_config
from streams.serde import AvroSerde, SerdeError, registry_client
from streams.settings import Settings, secret, secret_env
from streams.topics import CRM_COMMANDS

log = logging.getLogger("switchboard.enrichment")

SYSTEM = "enrichment"
TOKEN_SECRET = "enrichment_token"
STAGE = "enrichment"  # dead letters' stage
Status = Literal["found", "not_found"]
T = TypeVar("T")


# ---- the provider's answers ------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CompanyCategory(_Lenient):
    industry: str | None = None


class CompanyMetrics(_Lenient):
    employees: int | None = Field(None, ge=0)
    annualRevenue: int | None = Field(None, ge=0)


class CompanyGeo(_Lenient):
    countryCode: str | None = None


class Company(_Lenient):
    name: str | None = None
    domain: str | None = None
    category: CompanyCategory = Field(default_factory=CompanyCategory)
    metrics: CompanyMetrics = Field(default_factory=CompanyMetrics)
    geo: CompanyGeo = Field(default_factory=CompanyGeo)

    def fields(self) -> dict[str, str]:
        found = {
            "company": self.name,
            "industry": self.category.industry.lower() if self.category.industry else None,
            "company_size": self.metrics.employees,
            "annual_revenue": self.metrics.annualRevenue,
            "country": self.geo.countryCode.upper() if self.geo.countryCode else None,
        }
        return {k: str(v) for k, v in found.items() if v is not None and str(v).strip()}


class PersonName(_Lenient):
    fullName: str | None = None


class Employment(_Lenient):
    title: str | None = None
    seniority: str | None = None
    name: str | None = None  # the employer's name
    domain: str | None = None


class Person(_Lenient):
    name: PersonName = Field(default_factory=PersonName)
    employment: Employment = Field(default_factory=Employment)

    def fields(self) -> dict[str, str]:
        job = self.employment
        found = {
            "title": job.title,
            "seniority": job.seniority.lower() if job.seniority else None,
            "company": job.name,
        }
        return {k: v.strip() for k, v in found.items() if v and v.strip()}


@dataclass(frozen=True)
class Enrichment:
    """What the provider said about one e-mail and its domain."""

    email: str
    domain: str | None  # None: a free-mail address
    company: dict[str, str] | None  # None: unknown (404) or not looked up
    person: dict[str, str] | None

    @property
    def status(self) -> Status:
        return "not_found" if self.company is None and self.person is None else "found"

    def fields(self) -> dict[str, str]:
        """The profile fields, the person's employer's name giving way to the company's."""
        return {**(self.person or {}), **(self.company or {})}


class ProviderRejected(Exception):
    """The provider refused a call for a reason retrying cannot change (401, 403, 422)
    or answered something that is not the documented shape."""


class ProviderDown(Exception):
    """Every attempt failed with a retryable error."""


# ---- the provider client -----------------------------------------------------------------


class LRU(OrderedDict[str, T]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: str, value: T) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


@dataclass
class Provider:
    """The provider over HTTP: rate limited, retried, cached."""

    url: str
    token: str
    session: aiohttp.ClientSession
    rate_per_s: float = 5.0
    timeout_s: float = 5.0
    attempts: int = 5
    backoff: Backoff = field(default_factory=Backoff)
    cache_size: int = 10_000
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.rate_per_s, burst=max(int(self.rate_per_s), 1))
        # None stands for "unknown to the provider" (a 404), which is worth caching too.
        self.companies: LRU[dict[str, str] | None] = LRU(self.cache_size)
        self.people: LRU[dict[str, str] | None] = LRU(self.cache_size)
        self.calls = 0

    async def company(self, domain: str) -> dict[str, str] | None:
        if domain in self.companies:
            metrics.ENRICHMENT_CACHE.labels(kind="company", outcome="hit").inc()
            return self.companies[domain]
        metrics.ENRICHMENT_CACHE.labels(kind="company", outcome="miss").inc()
        answer = await self._get("companies", "domain", domain)
        found = None if answer is None else _parsed(Company, answer, "company").fields()
        self.companies.put(domain, found)
        return found

    async def person(self, email: str) -> dict[str, str] | None:
        if email in self.people:
            metrics.ENRICHMENT_CACHE.labels(kind="person", outcome="hit").inc()
            return self.people[email]
        metrics.ENRICHMENT_CACHE.labels(kind="person", outcome="miss").inc()
        answer = await self._get("people", "email", email)
        found = None if answer is None else _parsed(Person, answer, "person").fields()
        self.people.put(email, found)
        return found

    async def _get(self, kind: str, param: str, value: str) -> Any | None:
        """The JSON answer, None on 404; ProviderDown after ``attempts`` retryable
        failures, ProviderRejected on any other refusal."""
        url = f"{self.url.rstrip('/')}/v2/{kind}/find?{param}={quote(value, safe='@')}"
        what = f"enrichment {kind}/find"
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        last: Retryable | None = None
        for attempt in range(1, self.attempts + 1):
            await self.limiter.acquire()
            self.calls += 1
            try:
                answer = await request(
                    self.session, "GET", url, what=what, timeout_s=self.timeout_s, headers=headers
                )
            except Retryable as exc:
                last = exc
            else:
                status = answer.status
                metrics.ENRICHMENT_CALLS.labels(kind=kind, status=str(status)).inc()
                if status == 404:
                    return None
                if 200 <= status < 300:
                    data = answer.json()
                    if not isinstance(data, dict):
                        raise ProviderRejected(f"{what}: HTTP {status} without a JSON object")
                    return data
                try:
                    raise_for_status(answer, what)
                except Retryable as exc:
                    last = exc
                except Rejected as exc:
                    raise ProviderRejected(str(exc)) from None
            if attempt < self.attempts:
                assert last is not None
                metrics.ENRICHMENT_CALLS.labels(kind=kind, status="retry").inc()
                await self.sleep(self.backoff.delay(attempt, last.retry_after))
        raise ProviderDown(f"{what}: {self.attempts} attempts failed, the last: {last}")


def _parsed(model: type[Company] | type[Person], data: Any, what: str) -> Company | Person:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ProviderRejected(
            f"the provider's {what} answer: field {where}: {first['msg']}"
        ) from None


async def enrich(provider: Provider, email: str, free_domains: frozenset[str]) -> Enrichment:
    """Ask about ``email`` and, unless it is a mailbox provider's, its domain."""
    domain = email.rpartition("@")[2].lower() or None
    if domain in free_domains:
        domain = None
    company = await provider.company(domain) if domain else None
    person = await provider.person(email)
    return Enrichment(email=email, domain=domain, company=company, person=person)


# ---- the event ---------------------------------------------------------------------------


def enriched_event(
    contact_id: str, found: Enrichment, provider_name: str, at: datetime, now: datetime
) -> tuple[bytes, Event]:
    """The CONTACT_ENRICHED event (keyed by the e-mail, as a source keys by the strongest
    identifier it has) for what the provider said. Its id depends on the contact, the
    e-mail and the answer only, so enriching again after a restart is the same event.

    Its event time is ``at``, when the contact was as the command showed it: enrichment
    describes the contact, it is nothing the person did, so it must not age the score's
    behavioural points (scoring decays in event time); ``now`` is when it was received."""
    fields = found.fields()
    answer = json.dumps(
        [contact_id, found.email, found.status, sorted(fields.items())], separators=(",", ":")
    )
    digest = hashlib.sha256(answer.encode()).hexdigest()[:32]
    event: Event = {
        "event_id": f"{SYSTEM}:{digest}",
        "event_type": "CONTACT_ENRICHED",
        "source_system": SYSTEM,
        "event_time": min(at, now),
        "received_time": now,
        "identity": {"email": found.email, "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": None,
        "profile": {k: {"value": v, "origin": "enrichment"} for k, v in fields.items()},
        "payload": {
            "provider": provider_name,
            "status": found.status,
            "domain": found.domain,
            "company_found": found.company is not None,
            "person_found": found.person is not None,
            "fields": fields,
        },
    }
    return f"email:{found.email}".encode(), event


# ---- the connector -----------------------------------------------------------------------


class EnrichmentConfigError(ValueError):
    pass


@dataclass
class Connector:
    settings: Settings
    publisher: Publisher
    commands: AvroSerde
    provider: Provider
    free_domains: frozenset[str]
    # (contact id, e-mail) already enriched in this run: the upserts our own events cause
    # come back here, and need no call.
    done: LRU[bool] = field(default_factory=lambda: LRU(100_000))
    enriched: int = 0

    @property
    def group_id(self) -> str:
        return f"{self.settings.app_id}-enrichment"

    async def handle(self, message: Message) -> None:
        """Enrich the contact of one command, if it is an UPSERT_CONTACT with an e-mail
        not enriched yet; dead-letter what cannot be."""
        try:
            command = self.commands.decode(message.value())
        except SerdeError as exc:
            await self._dead_letter(message, exc, "UndecodableMessage", 0)
            return
        if command["command_type"] != "UPSERT_CONTACT":
            return
        if (command.get("causation_event_id") or "").startswith(f"{SYSTEM}:"):
            return  # the CRM upsert our own event caused
        email = (command["payload"].get("email") or "").lower()
        contact_id = command["contact_id"]
        if not email or "@" not in email or f"{contact_id}|{email}" in self.done:
            return
        try:
            found = await enrich(self.provider, email, self.free_domains)
        except ProviderDown as exc:
            await self._dead_letter(message, exc, "RetryBudgetExhausted", self.provider.attempts)
            return
        except ProviderRejected as exc:
            await self._dead_letter(message, exc, "Rejected", 1)
            return
        provider = self.settings.enrichment_provider
        now = datetime.now(UTC)
        key, event = enriched_event(contact_id, found, provider, command["issued_at"], now)
        await self.publisher.publish_events([(key, event)])
        self.done.put(f"{contact_id}|{email}", True)
        self.enriched += 1
        metrics.ENRICHMENTS.labels(status=found.status).inc()
        log.info("enriched %s: %s (%d fields)", contact_id, found.status, len(found.fields()))

    async def _dead_letter(
        self, message: Message, error: BaseException, kind: str, attempts: int
    ) -> None:
        log.warning("enrichment: dead-lettering %s: %s", message.key(), error)
        letter = message_dead_letter(message, stage=STAGE, error=error, error_type=kind)
        letter["attempts"] = attempts
        await self.publisher.publish_dead_letter(message.key(), letter)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = Consumer(group_consumer_config(self.settings, self.group_id))
        consumer.subscribe([self.commands.topic])
        log.info("enrichment: consuming %s as group %s", self.commands.topic, self.group_id)
        try:
            while not stop.is_set():
                batch = await asyncio.to_thread(consumer.consume, 200, 0.5)
                good = [m for m in batch if m.error() is None]
                for message in good:
                    await self.handle(message)  # published before its offset is committed
                if good:
                    await asyncio.to_thread(commit_batch, consumer, good)
        finally:
            consumer.close()


def build(settings: Settings, session: aiohttp.ClientSession) -> Connector:
    if not settings.enrichment_url:
        raise EnrichmentConfigError("set enrichment_url (SWITCHBOARD_ENRICHMENT_URL)")
    token = secret(TOKEN_SECRET)
    if token is None:
        raise EnrichmentConfigError(f"set the provider's token in {secret_env(TOKEN_SECRET)}")
    topic = CRM_COMMANDS.full_name(settings)
    commands = AvroSerde(
        registry_client(settings.schema_registry_url),
        CRM_COMMANDS.schema,
        topic,
        discriminator=CRM_COMMANDS.discriminator,
    )
    provider = Provider(
        url=settings.enrichment_url,
        token=token,
        session=session,
        rate_per_s=settings.enrichment_rate_per_s,
        timeout_s=settings.enrichment_timeout_s,
        attempts=settings.enrichment_attempts,
        cache_size=settings.enrichment_cache_size,
    )
    free = frozenset(d.lower() for d in settings.enrichment_free_domains)
    return Connector(settings, Publisher(settings), commands, provider, free)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as session:
        connector = build(settings, session)
        try:
            await connector.run(stop)
        finally:
            connector.publisher.close()
