"""Multi-system qualification (issue 21, part 2), told end to end on the real broker:
two Typeform leads, as Typeform sends them, go through the gateway, the worker, the
enrichment connector (against a provider on loopback), the router and the sinks.

Ana works at Acme Robotics (a known company) and lives in San Francisco, inside the
San Francisco branch's area: the form alone scores her below the routing band; the
provider's firmographics lift her to MQL and she goes to the branch's rep. Ben works at
Bigco, also known, but lives in New York, outside every branch: he gets the polite
out-of-area e-mail, the out-of-service-area tag and no rep, by the router's declared
rule, not by silence. The CRM store is checked field by field, and the outbox."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.sinks.crm.sql import SqlCrmStore, open_store
from connectors.sources.enrichment import TOKEN_SECRET
from streams.clock import FileClock
from streams.registry import register_catalog
from streams.serde import AvroSerde
from streams.settings import Settings, secret_env
from streams.topics import AUDIT, CONTACT_EVENTS, REP_ROSTER, ensure_topics
from tests.conftest import free_port
from tests.fakes.enrichment import FakeEnrichment, rate_limited
from tests.kafka_helpers import (
    _running,
    producer,
    read_all,
    running_gateway,
    running_sink,
    running_worker,
    settings_env,
    wait_for,
    worker_metric,
)
from tests.webhooks import SECRETS, post, signed

pytestmark = pytest.mark.integration

# A Wednesday, 10:00 in New York: inside the workflows' sending hours.
T0 = datetime(2026, 11, 18, 15, 0, tzinfo=UTC)
KEY = "sk_test_enrichment_it_77"
ANA, BEN = "ana.silva@acme.example", "ben.ode@bigco.example"
CARA = "cara.lim@healthco.example"
COMPANIES = {
    "acme.example": {
        "name": "Acme Robotics",
        "category": {"industry": "SaaS"},
        "metrics": {"employees": 250, "annualRevenue": 40_000_000},
        "geo": {"countryCode": "US"},
    },
    "healthco.example": {
        "name": "Healthco Clinics",
        "category": {"industry": "Healthcare"},
        "metrics": {"employees": 40},
        "geo": {"countryCode": "US"},
    },
    "bigco.example": {
        "name": "Bigco",
        "category": {"industry": "Fintech"},
        "metrics": {"employees": 1200, "annualRevenue": 300_000_000},
        "geo": {"countryCode": "US"},
    },
}
PEOPLE = {
    ANA: {
        "name": {"fullName": "Ana Silva"},
        "employment": {"title": "VP Operations", "seniority": "vp"},
    },
    BEN: {
        "name": {"fullName": "Ben Ode"},
        "employment": {"title": "Director of IT", "seniority": "director"},
    },
}


def rep(rep_id: str, team: str) -> dict[str, Any]:
    return {
        "rep_id": rep_id,
        "name": rep_id.title(),
        "email": f"{rep_id}@northside.example",
        "teams": [team],
        "timezone": "America/Los_Angeles",
        "work_start": "00:00",
        "work_end": "23:59",
        "work_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    }


# Nobody in South Bay's team nor in inbound: a South Bay lead finds no rep until
# enrichment tells the healthcare rule about it.
REPS = [rep("rep-sam", "sf-metro"), rep("rep-eve", "east-bay"), rep("rep-hana", "healthcare")]


def typeform(
    event_id: str,
    token: str,
    name: str,
    email: str,
    postcode: str,
    minute: int,
    **more: str,
) -> bytes:
    """A form_response webhook as Typeform sends it (see tests/fixtures/webhooks); ``more``
    are short-text answers by their field's ref."""
    at = (T0 + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")
    fields = [
        ("AbC1", "name", "short_text"),
        ("AbC2", "email", "email"),
        ("AbC3", "postcode", "short_text"),
        ("AbC4", "service", "multiple_choice"),
    ]
    answers = [
        {
            "type": "text",
            "text": name,
            "field": {"id": "AbC1", "type": "short_text", "ref": "name"},
        },
        {"type": "email", "email": email, "field": {"id": "AbC2", "type": "email", "ref": "email"}},
        {
            "type": "text",
            "text": postcode,
            "field": {"id": "AbC3", "type": "short_text", "ref": "postcode"},
        },
        {
            "type": "choice",
            "choice": {"label": "Heat pump installation"},
            "field": {"id": "AbC4", "type": "multiple_choice", "ref": "service"},
        },
    ]
    for n, (ref, text) in enumerate(more.items()):
        fields.append((f"XtR{n}", ref, "short_text"))
        answers.append(
            {
                "type": "text",
                "text": text,
                "field": {"id": f"XtR{n}", "type": "short_text", "ref": ref},
            }
        )
    return json.dumps(
        {
            "event_id": event_id,
            "event_type": "form_response",
            "form_response": {
                "form_id": "qUaL21",
                "token": token,
                "submitted_at": at,
                "landed_at": at,
                "hidden": {"utm_source": "google", "page_url": "https://northside.example/quote"},
                "definition": {
                    "id": "qUaL21",
                    "title": "Request a quote",
                    "fields": [{"id": i, "ref": r, "type": t, "title": r} for i, r, t in fields],
                },
                "answers": answers,
            },
        }
    ).encode()


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    store: SqlCrmStore
    provider: FakeEnrichment
    tmp_path: Path


@pytest.fixture
def pipeline(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> Iterator[Pipeline]:
    clock = tmp_path / "clock"
    FileClock.write(clock, T0)
    with ExitStack() as stack:
        provider = stack.enter_context(FakeEnrichment.running(KEY, COMPANIES, PEOPLE))
        # The provider is busy at first: the connector waits out its Retry-After.
        provider.fail_next(rate_limited(1))
        settings = settings.model_copy(
            update={
                "clock": f"file:{clock}",
                "gateway_port": free_port(),
                "crm_database_url": f"sqlite:///{tmp_path / 'crm.db'}",
                "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
                "notify_outbox": tmp_path / "outbox.jsonl",
                "enrichment_url": provider.url,
                "enrichment_provider": "loopback-clearbit",
            }
        )
        ensure_topics(settings)
        register_catalog(registry, settings)
        roster = AvroSerde(registry, "rep", REP_ROSTER.full_name(settings))
        out = producer(settings)
        for each in REPS:
            out.produce(roster.topic, key=each["rep_id"].encode(), value=roster.encode(each))
        out.flush(10)
        stack.enter_context(running_worker(settings, tmp_path / "worker.log"))
        stack.enter_context(running_gateway(settings, tmp_path / "gateway.log", SECRETS))
        for which in ("crm", "notify"):
            each_settings = settings.model_copy(update={"metrics_port": free_port()})
            stack.enter_context(running_sink(each_settings, which, tmp_path / f"{which}.log"))
        enrich_settings = settings.model_copy(update={"metrics_port": free_port()})
        env = settings_env(enrich_settings) | {
            "SWITCHBOARD_LOG_LEVEL": "info",
            secret_env(TOKEN_SECRET): KEY,
        }
        log = tmp_path / "enrich.log"
        stack.enter_context(
            _running(["enrich"], env, log, lambda: b"consuming" in log.read_bytes(), 30)
        )
        yield Pipeline(settings, open_store(settings.crm_database_url), provider, tmp_path)


def deliver(settings: Settings, body: bytes) -> float:
    url = f"http://127.0.0.1:{settings.gateway_port}/webhooks/typeform"
    answer = post(url, *signed("typeform", body, url))
    assert answer.status == 200 and answer.body["accepted"] == 1, answer
    return time.monotonic()


def outbox(settings: Settings) -> list[dict[str, Any]]:
    path = settings.notify_outbox
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def by_email(store: SqlCrmStore, email: str) -> dict[str, Any] | None:
    return next((c for c in store.rows("contacts") if c["email"] == email), None)


def test_a_known_lead_inside_the_area_and_one_outside_it(
    pipeline: Pipeline, registry: SchemaRegistryClient
) -> None:
    settings, store = pipeline.settings, pipeline.store
    deliver(settings, typeform("01JQUAL0ANA", "tok-ana-21", "Ana Silva", ANA, "94110", 1))
    deliver(settings, typeform("01JQUAL0BEN", "tok-ben-21", "Ben Ode", BEN, "10001", 2))
    # Cara says she owns the practice: MQL on the form alone, routed at once, to nobody.
    cara_form = typeform(
        "01JQUAL0CARA", "tok-cara-21", "Cara Lim", CARA, "95112", 3, title="Owner", region="CA"
    )
    deliver(settings, cara_form)

    def settled() -> bool:
        ana, ben, cara = by_email(store, ANA), by_email(store, BEN), by_email(store, CARA)
        return (
            cara is not None
            and cara["owner_id"] == "rep-hana"
            and ana is not None
            and ana["owner_id"] == "rep-sam"
            and ben is not None
            and "out-of-service-area" in ben["properties"].get("workflow_tags", "")
            and ben["properties"].get("industry") == "fintech"
        )

    wait_for(settled, "both leads enriched, placed, scored and routed", 120)

    ana = by_email(store, ANA)
    assert ana is not None
    assert (ana["first_name"], ana["last_name"]) == ("Ana", "Silva")
    assert ana["owner_id"] == "rep-sam"  # the San Francisco branch's team, sf-metro
    assert ana["company"] == "Acme Robotics"  # from the provider: the form did not ask
    assert ana["title"] == "VP Operations"
    props = ana["properties"]
    assert (props["industry"], props["company_size"]) == ("saas", "250")
    assert (props["annual_revenue"], props["seniority"]) == ("40000000", "vp")
    assert (props["service_area"], props["service_branch"]) == ("in", "San Francisco")
    assert float(props["distance_km"]) < 5
    assert props["postcode"] == "94110"
    assert props["lead_band"] == "MQL"
    # form 15 + firmographics capped at 40 (industry, size, title, country, revenue,
    # seniority, in area, near a branch)
    assert props["lead_score"] == "55"

    ben = by_email(store, BEN)
    assert ben is not None
    assert ben["owner_id"] is None  # no rep for a lead the business cannot serve
    assert ben["company"] == "Bigco"
    bprops = ben["properties"]
    assert (bprops["service_area"], bprops["service_branch"]) == ("out", "East Bay")
    assert float(bprops["distance_km"]) > 4000
    assert bprops["industry"] == "fintech" and bprops["company_size"] == "1200"
    assert "out-of-service-area" in bprops["workflow_tags"].split(",")

    wait_for(lambda: len(outbox(settings)) >= 3, "the outreach e-mails", 60)
    sent = {(m["recipient"], m["template"]) for m in outbox(settings)}
    assert (ANA, "web_lead_welcome") in sent  # Ana's first outreach
    assert (BEN, "out_of_area_reply") in sent  # Ben's polite answer
    assert (BEN, "web_lead_welcome") not in sent
    assert ("rep-sam@northside.example", "new_lead") in sent  # Sam is told of Ana
    assert not any(m["template"] == "new_lead" and "Ben" in json.dumps(m) for m in outbox(settings))
    [reply] = [m for m in outbox(settings) if m["template"] == "out_of_area_reply"]
    assert reply["rendered"]["text"].startswith("Hi Ben,")
    assert "outside the area" in reply["rendered"]["text"]

    # One company call per domain, the 429 (the first call) waited out.
    provider = pipeline.provider
    assert sorted(provider.looked_up("companies")) == [
        "acme.example",
        "bigco.example",
        "healthco.example",
    ]
    assert len(provider.requests) == len(provider.lookups) + 1

    # A connector that starts over (a new consumer group reads every command again) asks
    # again and publishes the same events: the contact stage ignores them.
    again = settings.model_copy(
        update={"metrics_port": free_port(), "app_id": f"{settings.app_id}-again"}
    )
    env = settings_env(again) | {"SWITCHBOARD_LOG_LEVEL": "info", secret_env(TOKEN_SECRET): KEY}
    log = pipeline.tmp_path / "enrich-again.log"
    with _running(["enrich"], env, log, lambda: b"consuming" in log.read_bytes(), 30):
        wait_for(lambda: log.read_text().count("enriched c-") == 3, "the second enrichment", 60)
    events = AvroSerde(
        registry,
        CONTACT_EVENTS.schema,
        CONTACT_EVENTS.full_name(settings),
        discriminator="event_type",
    )
    enriched = [
        e
        for e in (events.decode(m.value()) for m in read_all(settings, events.topic))
        if e["event_type"] == "CONTACT_ENRICHED"
    ]
    assert sorted(e["identity"]["email"] for e in enriched) == [ANA, ANA, BEN, BEN, CARA, CARA]
    assert len({e["event_id"] for e in enriched}) == 3
    seen = 'switchboard_events_total{event_type="CONTACT_ENRICHED"'
    wait_for(lambda: worker_metric(settings, seen) == 6, "the worker to take all six", 60)
    time.sleep(2)  # identity forwards them to the contact stage within a checkpoint or two

    # The audit tells why: the area checks, the enrichment, the router's two decisions.
    audit = AvroSerde(registry, AUDIT.schema, AUDIT.full_name(settings))
    entries = [audit.decode(m.value()) for m in read_all(settings, audit.topic)]
    ana_id, ben_id = ana["contact_id"], ben["contact_id"]
    decisions = {(e["contact_id"], e["stage"], e["decision"]) for e in entries}
    assert (ana_id, "area", "in_area") in decisions
    assert (ben_id, "area", "out_of_area") in decisions
    assert (ana_id, "enrichment", "enriched") in decisions
    enrichments = [e for e in entries if e["stage"] == "enrichment"]
    assert len(enrichments) == 3  # once each
    assert {e["inputs"]["enriched.industry"] for e in enrichments} == {
        "saas",
        "fintech",
        "healthcare",
    }
    [ana_routed] = [e for e in entries if e["contact_id"] == ana_id and e["stage"] == "routing"]
    assert (ana_routed["decision"], ana_routed["inputs"]["rule"]) == ("assigned", "nearest-branch")
    assert ana_routed["inputs"]["area.branch"] == "San Francisco"
    assert ana_routed["inputs"]["profile.company_size"] == "250"
    [ben_routed] = [e for e in entries if e["contact_id"] == ben_id and e["stage"] == "routing"]
    assert (ben_routed["decision"], ben_routed["inputs"]["rule"]) == ("unassigned", "out-of-area")

    # Cara: no rep on the form alone; enrichment (healthcare, US) routes her again.
    cara = by_email(store, CARA)
    assert cara is not None and cara["owner_id"] == "rep-hana"
    assert cara["properties"]["service_branch"] == "South Bay"
    assert "distance_km" not in cara["properties"]  # a postcode list has no centre
    cara_routed = [
        (e["decision"], e["inputs"]["rule"])
        for e in sorted(entries, key=lambda e: e["recorded_at"])
        if e["contact_id"] == cara["contact_id"] and e["stage"] == "routing"
    ]
    assert cara_routed == [("unassigned", ""), ("assigned", "west-coast-healthcare")]
