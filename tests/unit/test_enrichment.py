"""The enrichment provider client over real HTTP on loopback (tests/fakes/enrichment.py):
answers mapped to profile fields, the per-domain cache, free-mail domains, 404, 429 with
Retry-After, 5xx, timeouts, refusals, and the event it publishes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import pytest

from connectors.policy import Backoff
from connectors.sources.enrichment import (
    Enrichment,
    Provider,
    ProviderDown,
    ProviderRejected,
    enrich,
    enriched_event,
)
from processors.contact import advance
from processors.scoring import load_model
from processors.state import ContactState
from streams.settings import FREE_MAIL_DOMAINS
from tests.fakes import Scripted
from tests.fakes.enrichment import FakeEnrichment, rate_limited

KEY = "sk_test_enrichment_4f2a9c"
FREE = frozenset(FREE_MAIL_DOMAINS)
ACME = {
    "name": "Acme Robotics",
    "category": {"industry": "SaaS", "sector": "Information Technology"},
    "metrics": {"employees": 250, "annualRevenue": 40_000_000, "raised": 12_000_000},
    "geo": {"countryCode": "us", "city": "San Francisco"},
}
ANA = {
    "name": {"fullName": "Ana Silva", "givenName": "Ana"},
    "employment": {"title": "VP Operations", "seniority": "VP", "name": "Acme", "role": "ops"},
}
T = TypeVar("T")


@pytest.fixture
def provider_server() -> Iterator[FakeEnrichment]:
    with FakeEnrichment.running(
        KEY, companies={"acme.example": ACME}, people={"ana@acme.example": ANA}
    ) as server:
        yield server


def with_provider(
    server: FakeEnrichment,
    body: Callable[[Provider], Awaitable[T]],
    **options: Any,
) -> T:
    async def main() -> T:
        async with aiohttp.ClientSession() as session:
            settings: dict[str, Any] = {
                "rate_per_s": 1000.0,
                "timeout_s": 2.0,
                "attempts": 4,
                "backoff": Backoff(base_s=0.01, cap_s=0.05),
            }
            provider = Provider(
                url=server.url, token=options.pop("token", KEY), session=session, **settings
            )
            for name, value in options.items():
                setattr(provider, name, value)
            return await body(provider)

    return asyncio.run(main())


def test_a_known_company_and_person_become_profile_fields(
    provider_server: FakeEnrichment,
) -> None:
    found = with_provider(provider_server, lambda p: enrich(p, "ana@acme.example", FREE))
    assert found.status == "found"
    assert found.domain == "acme.example"
    assert found.fields() == {
        "company": "Acme Robotics",  # the company's own name over the person's employer
        "industry": "saas",
        "company_size": "250",
        "annual_revenue": "40000000",
        "country": "US",
        "title": "VP Operations",
        "seniority": "vp",
    }
    for request in provider_server.requests:
        assert request.headers["Authorization"] == f"Bearer {KEY}"


def test_a_thousand_leads_from_one_company_cost_one_company_call(
    provider_server: FakeEnrichment,
) -> None:
    async def many(provider: Provider) -> list[Enrichment]:
        return [await enrich(provider, f"lead{i}@acme.example", FREE) for i in range(1000)]

    found = with_provider(provider_server, many)
    assert provider_server.looked_up("companies") == ["acme.example"]
    assert all(f.company is not None and f.company["company_size"] == "250" for f in found)
    assert all(f.person is None for f in found)  # unknown people: 404, the company stands


def test_a_free_mail_domain_is_never_looked_up_as_a_company(
    provider_server: FakeEnrichment,
) -> None:
    found = with_provider(provider_server, lambda p: enrich(p, "ana.silva@gmail.com", FREE))
    assert provider_server.looked_up("companies") == []
    assert provider_server.looked_up("people") == ["ana.silva@gmail.com"]
    assert (found.domain, found.status) == (None, "not_found")


def test_unknown_is_not_found_at_once_and_cached(provider_server: FakeEnrichment) -> None:
    async def twice(provider: Provider) -> tuple[Enrichment, Enrichment]:
        first = await enrich(provider, "bo@nowhere.example", FREE)
        return first, await enrich(provider, "bo@nowhere.example", FREE)

    first, second = with_provider(provider_server, twice)
    assert first.status == second.status == "not_found"
    assert first.fields() == {}
    assert len(provider_server.requests) == 2  # one company and one person call, once


def test_429_waits_for_retry_after_then_succeeds(provider_server: FakeEnrichment) -> None:
    provider_server.fail_next(rate_limited(1))
    started = time.monotonic()
    company = with_provider(provider_server, lambda p: p.company("acme.example"))
    waited = time.monotonic() - started
    assert company is not None and company["company"] == "Acme Robotics"
    assert waited >= 1.0, "Retry-After: 1 is a floor under the backoff"
    assert len(provider_server.requests) == 2


def test_server_errors_are_retried_with_backoff(provider_server: FakeEnrichment) -> None:
    provider_server.server_errors(2, status=502)
    company = with_provider(provider_server, lambda p: p.company("acme.example"))
    assert company is not None and company["industry"] == "saas"
    assert len(provider_server.requests) == 3


def test_a_timeout_is_retried(provider_server: FakeEnrichment) -> None:
    provider_server.fail_next(Scripted(200, "{}", delay_s=1.5))
    person = with_provider(provider_server, lambda p: p.person("ana@acme.example"), timeout_s=0.3)
    assert person is not None and person["title"] == "VP Operations"
    assert len(provider_server.requests) == 2


def test_a_provider_that_stays_down_gives_up_after_its_attempts(
    provider_server: FakeEnrichment,
) -> None:
    provider_server.outage(30, status=503)
    with pytest.raises(ProviderDown, match=r"4 attempts failed.*HTTP 503"):
        with_provider(provider_server, lambda p: p.company("acme.example"))
    assert len(provider_server.requests) == 4


def test_a_refused_token_is_not_retried_and_not_repeated(
    provider_server: FakeEnrichment,
) -> None:
    wrong = "sk_live_wrong_token_0000"
    with pytest.raises(ProviderRejected, match="HTTP 401") as refused:
        with_provider(provider_server, lambda p: p.company("acme.example"), token=wrong)
    assert wrong not in str(refused.value)
    assert len(provider_server.requests) == 1


def test_an_answer_off_the_documented_shape_names_the_field(
    provider_server: FakeEnrichment,
) -> None:
    provider_server.companies["odd.example"] = {"metrics": {"employees": "lots"}}
    with pytest.raises(ProviderRejected, match=r"field metrics\.employees"):
        with_provider(provider_server, lambda p: p.company("odd.example"))


def test_the_rate_limit_spaces_calls(provider_server: FakeEnrichment) -> None:
    async def calls(provider: Provider) -> None:
        for i in range(21):
            await provider.person(f"p{i}@acme.example")

    started = time.monotonic()
    with_provider(provider_server, calls, limiter=_limiter(10))
    assert time.monotonic() - started >= 1.0  # 21 calls at 10/s with a burst of 10


def _limiter(rate: float) -> Any:
    from connectors.policy import RateLimiter

    return RateLimiter(rate, burst=int(rate))


def test_the_event_id_is_the_contact_and_the_answer() -> None:
    found = Enrichment(
        email="ana@acme.example",
        domain="acme.example",
        company={"industry": "saas", "company_size": "250"},
        person=None,
    )
    at = datetime(2026, 11, 21, 16, 0, tzinfo=UTC)
    later = datetime(2026, 11, 22, tzinfo=UTC)
    key, event = enriched_event("c-1", found, "clearbit", at, at)
    _, again = enriched_event("c-1", found, "clearbit", at, later)  # after a restart
    changed = Enrichment(found.email, found.domain, {"industry": "fintech"}, None)
    _, other = enriched_event("c-1", changed, "clearbit", at, at)
    assert key == b"email:ana@acme.example"
    assert event["event_id"] == again["event_id"] != other["event_id"]
    assert (again["event_time"], again["received_time"]) == (at, later)
    assert event["profile"]["industry"] == {"value": "saas", "origin": "enrichment"}
    assert event["payload"]["status"] == "found" and event["payload"]["company_found"]


def test_enrichment_fills_blanks_never_overrides_the_person_and_rescores() -> None:
    model = load_model()
    form = {
        "event_id": "typeform:1",
        "event_type": "FORM_SUBMITTED",
        "source_system": "typeform",
        "event_time": datetime(2026, 11, 21, 15, 58, tzinfo=UTC),
        "received_time": datetime(2026, 11, 21, 15, 58, tzinfo=UTC),
        "identity": {"email": "ana@acme.example", "external_ids": {}},
        "profile": {},
        "payload": {"form_id": "f", "fields": {"title": "Office manager"}, "utm": {}},
    }
    state = advance(ContactState(contact_id="c-1"), form, model).state
    found = Enrichment("ana@acme.example", "acme.example", {"industry": "saas"}, None)
    found = Enrichment(
        found.email,
        found.domain,
        {"industry": "saas", "company_size": "250"},
        {"title": "VP Operations", "seniority": "vp"},
    )
    at = datetime(2026, 11, 21, 16, tzinfo=UTC)
    _, event = enriched_event("c-1", found, "clearbit", at, at)
    after = advance(state, event, model)
    assert after.score is not None
    assert after.state.profile["title"] == "Office manager"  # the person's own answer stands
    assert after.state.profile["industry"] == "saas"
    assert after.state.profile_origin["industry"] == "enrichment"
    assert after.state.profile["seniority"] == "vp"
    # mid-size-company, target-industry and senior-buyer now count
    assert after.score.components["firmographic"] - state.score_components["firmographic"] == 25
    assert advance(after.state, event, model).score is None  # the same event again: nothing
