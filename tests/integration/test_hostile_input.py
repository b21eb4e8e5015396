"""Issue 20, items 10, 6, 12 and 13: broken or hostile input, correctly signed the way
each provider signs and posted to a real gateway process, is refused with 400 naming the
field (and dead-lettered), or with 401 when no signature can hold; never 500, which
providers retry until they disable the endpoint. Nothing of a refused request is
published, not even the good events of a batch."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from connectors.sources import gateway as gateway_module
from connectors.sources.base import Event, Source, WebhookRequest
from connectors.sources.publisher import Publisher
from connectors.sources.registry import configured
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS
from tests import webhooks
from tests.conftest import Infra
from tests.gateway_process import Gateway, started
from tests.webhooks import SECRETS, Answer, fixture, signed

pytestmark = pytest.mark.integration

Request = tuple[bytes, dict[str, str]]  # (body, headers) ready to post


@pytest.fixture(scope="module")
def gateway(
    infra: Infra, session_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    # The default body limit: 100,000 nested lists (200 kB) must reach the parser.
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    with started(infra, f"{session_prefix}hostile-", log) as running:
        yield running


def post(url: str, body: bytes, headers: dict[str, str]) -> Answer:
    """tests.webhooks.post, but a body that is not JSON (aiohttp's own 500 page) is
    returned as the error rather than failing the test before its status is seen."""
    try:
        return webhooks.post(url, body, headers)
    except json.JSONDecodeError:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return Answer(response.status, dict(response.headers), {"error": "not JSON"})
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            return Answer(error.code, dict(error.headers), {"error": text})


def unique() -> str:
    return uuid.uuid4().hex[:10]


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def form(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixture("forms_submission.json"))
    return data | {"submission_id": f"sub-{unique()}"} | changes


def signed_bytes(source: str, body: bytes) -> Callable[[Gateway], Request]:
    return lambda gw: signed(source, body, gw.url(source))


def forms_json(**changes: Any) -> Callable[[Gateway], Request]:
    return lambda gw: signed("forms", json.dumps(form(**changes)).encode(), gw.url("forms"))


def stripe_created(created: int) -> Callable[[Gateway], Request]:
    def build(gw: Gateway) -> Request:
        data = json.loads(fixture("stripe_invoice_paid.json"))
        data.update(id=f"evt_{unique()}", created=created)
        return signed("stripe", json.dumps(data).encode(), gw.url("stripe"))

    return build


def vapi_text(old: str, new: str) -> Callable[[Gateway], Request]:
    """Vapi's example report with ``old`` replaced by ``new`` in the raw JSON text."""

    def build(gw: Gateway) -> Request:
        data = json.loads(fixture("vapi_end_of_call_report.json"))
        data["message"]["call"]["id"] = unique()
        data["message"]["durationSeconds"] = 247
        text = json.dumps(data).replace(old, new)
        assert new in text
        return signed("vapi", text.encode(), gw.url("vapi"))

    return build


def mailgun_timestamp(literal: str) -> Callable[[Gateway], Request]:
    def build(gw: Gateway) -> Request:
        text = fixture("mailgun_clicked.json").decode()
        text = text.replace("Ase7i2zsRYeDXztHGENqRA", unique()).replace("1795000500.123", literal)
        # tests.webhooks re-serialises the body: NaN survives json.loads and json.dumps.
        return signed("mailgun", text.encode(), gw.url("mailgun"))

    return build


def hubspot_second(occurred_at_ms: int) -> Callable[[Gateway], Request]:
    """HubSpot's batch with its second event's time replaced (the first is fine)."""

    def build(gw: Gateway) -> Request:
        batch = json.loads(fixture("hubspot_batch.json"))
        offset = int(uuid.uuid4().int % 10**9) * 10
        for sub in batch:
            sub["eventId"] += offset
        batch[1]["occurredAt"] = occurred_at_ms
        return signed("hubspot", json.dumps(batch).encode(), gw.url("hubspot"))

    return build


def jobs_with(system: str, **job: Any) -> Callable[[Gateway], Request]:
    def build(gw: Gateway) -> Request:
        data = json.loads(fixture("jobs_completed.json"))
        data.update(event_id=f"job-{unique()}", system=system)
        data["job"].update(job)
        return signed("jobs", json.dumps(data).encode(), gw.url("jobs"))

    return build


def deeply_nested(depth: int) -> Callable[[Gateway], Request]:
    def build(gw: Gateway) -> Request:
        head = json.dumps(form())[:-1].encode()  # without the closing brace
        body = head + b', "extra": ' + b"[" * depth + b"]" * depth + b"}"
        return signed("forms", body, gw.url("forms"))

    return build


def forms_raw_name(raw: bytes) -> Callable[[Gateway], Request]:
    """A form whose form_name is the raw bytes ``raw`` inside the JSON string."""

    def build(gw: Gateway) -> Request:
        body = json.dumps(form(form_name="@NAME@")).encode().replace(b"@NAME@", raw)
        return signed("forms", body, gw.url("forms"))

    return build


def inbound_fields(gw: Gateway) -> dict[str, str]:
    """Mailgun's inbound example as form fields, signed (timestamp, token, signature)."""
    text = fixture("mailgun_inbound.txt").replace(b"CAF%3Dx1", unique().encode())
    body, _ = signed("mailgun-inbound", text, gw.url("mailgun-inbound"))
    return dict(parse_qsl(body.decode()))


def inbound_with_bad_bytes(gw: Gateway) -> Request:
    body = (
        urlencode(inbound_fields(gw) | {"subject": "SUBJECT"})
        .encode()
        .replace(b"SUBJECT", b"Re\xff")
    )
    return body, {"Content-Type": "application/x-www-form-urlencoded"}


def multipart(fields: dict[str, str], bogus: str) -> Request:
    """``fields`` as multipart/form-data, the ``bogus`` one declaring a charset that
    does not exist."""
    boundary = f"b-{unique()}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n'
        f"Content-Type: text/plain{'; charset=x-bogus' if name == bogus else ''}\r\n\r\n"
        f"{value}\r\n"
        for name, value in fields.items()
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def inbound_bogus_charset(gw: Gateway) -> Request:
    return multipart(inbound_fields(gw), bogus="subject")


def twilio_signature(url: str, fields: dict[str, str]) -> str:
    """Twilio's scheme: base64 HMAC-SHA1 of the URL and the sorted name-value pairs."""
    data = url + "".join(name + fields[name] for name in sorted(fields))
    digest = hmac.new(SECRETS["twilio"].encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def twilio_fields() -> dict[str, str]:
    text = fixture("twilio_status_completed.txt").decode().replace("CA2a4b", f"CA{unique()}")
    return dict(parse_qsl(text)) | {"CallerName": "Ana Silva"}


def twilio_bogus_charset(gw: Gateway) -> Request:
    fields = twilio_fields()
    body, headers = multipart(fields, bogus="CallerName")
    return body, headers | {"X-Twilio-Signature": twilio_signature(gw.url("twilio"), fields)}


def twilio_bad_bytes(gw: Gateway) -> Request:
    """No Twilio signature can cover bytes that are not text: signed over the rest."""
    fields = twilio_fields()
    signature = twilio_signature(gw.url("twilio"), fields)
    body = urlencode(fields | {"CallerName": "CALLER"}).encode().replace(b"CALLER", b"Ana\xff")
    content_type = "application/x-www-form-urlencoded"
    return body, {"Content-Type": content_type, "X-Twilio-Signature": signature}


LONG = "9" * 400


def with_header(
    source: str, name: str, value: Callable[[str], str]
) -> Callable[[Gateway], Request]:
    """The provider's example, signed, with header ``name`` replaced by ``value(old)``."""
    example = {
        "stripe": "stripe_invoice_paid.json",
        "forms": "forms_submission.json",
        "jobs": "jobs_completed.json",
        "calendly": "calendly_invitee_created.json",
        "hubspot": "hubspot_batch.json",
        "vapi": "vapi_end_of_call_report.json",
    }[source]

    def build(gw: Gateway) -> Request:
        body, headers = signed(source, fixture(example), gw.url(source))
        return body, headers | {name: value(headers[name])}

    return build


def long_t(old: str) -> str:
    return "t=" + LONG + "," + old.split(",", 1)[1]


def mailgun_long_timestamp(gw: Gateway) -> Request:
    body, headers = signed("mailgun", fixture("mailgun_clicked.json"), gw.url("mailgun"))
    data = json.loads(body)
    data["signature"]["timestamp"] = LONG
    return json.dumps(data).encode(), headers


def inbound_long_timestamp(gw: Gateway) -> Request:
    body = urlencode(inbound_fields(gw) | {"timestamp": LONG}).encode()
    return body, {"Content-Type": "application/x-www-form-urlencoded"}


def unsigned(body: bytes) -> Callable[[Gateway], Request]:
    return lambda gw: (body, {"Content-Type": "application/json"})


@dataclass(frozen=True)
class Hostile:
    name: str
    source: str
    build: Callable[[Gateway], Request]
    status: int
    field: str | None  # the field a 400 names (None: the body as a whole)
    says: str  # a fragment of the error


NOW = datetime.now(UTC)

REFUSED = [
    # Item 10: each answered 500 (some after publishing), was accepted, or named no field.
    Hostile(
        "naive-time",
        "forms",
        forms_json(submitted_at="2026-11-21T15:40:00"),
        400,
        "submitted_at",
        "timezone",
    ),
    Hostile(
        "naive-time-calendly",
        "calendly",
        signed_bytes(
            "calendly",
            fixture("calendly_invitee_created.json").replace(
                b'"created_at": "2026-11-21T16:30:00.000000Z"',
                b'"created_at": "2026-11-21T16:30:00"',
            ),
        ),
        400,
        "created_at",
        "timezone",
    ),
    Hostile(
        "lone-surrogate-email",
        "forms",
        forms_json(email="\ud800@example.com"),
        400,
        "email",
        "UTF-8",
    ),
    Hostile(
        "lone-surrogate-bytes",
        "forms",
        forms_raw_name(b"\xed\xa0\x80"),  # what json.loads decodes with surrogatepass
        400,
        "form_name",
        "UTF-8",
    ),
    Hostile("invalid-utf8-json", "forms", forms_raw_name(b"\xff"), 400, None, "not valid JSON"),
    Hostile("stripe-created-huge", "stripe", stripe_created(99999999999999), 400, "created", ""),
    Hostile(
        "stripe-created-negative", "stripe", stripe_created(-99999999999999), 400, "created", ""
    ),
    Hostile(
        "mailgun-timestamp-nan",
        "mailgun",
        mailgun_timestamp("NaN"),
        400,
        "event-data.timestamp",
        "NaN",
    ),
    Hostile(
        "vapi-duration-infinity",
        "vapi",
        vapi_text('"durationSeconds": 247', '"durationSeconds": Infinity'),
        400,
        "message.durationSeconds",
        "Infinity",
    ),
    Hostile(
        "vapi-duration-1e999",
        "vapi",
        vapi_text('"durationSeconds": 247', '"durationSeconds": 1e999'),
        400,
        "message.durationSeconds",
        "finite",
    ),
    Hostile("nested-100000", "forms", deeply_nested(100_000), 400, None, "nested too deeply"),
    Hostile("nested-200", "forms", deeply_nested(200), 400, "extra", "nested deeper than"),
    Hostile("inbound-invalid-utf8", "mailgun-inbound", inbound_with_bad_bytes, 400, "subject", ""),
    Hostile("inbound-bogus-charset", "mailgun-inbound", inbound_bogus_charset, 400, "subject", ""),
    Hostile("twilio-bogus-charset", "twilio", twilio_bogus_charset, 400, "CallerName", "charset"),
    Hostile(
        "hubspot-batch-huge-time",
        "hubspot",
        hubspot_second(99999999999999999),
        400,
        "1.occurredAt",
        "",
    ),
    Hostile(
        # Not the event's time, but in its payload: written, it could not be read back.
        "payload-time-past-9999-in-utc",
        "jobs",
        jobs_with("fieldservice", scheduled_for="9999-12-31T23:59:59-14:00"),
        400,
        "job.scheduled_for",
        "out of range",
    ),
    # Item 6: times no clock may start from.
    Hostile(
        "hubspot-batch-future",
        "hubspot",
        hubspot_second(int((NOW + timedelta(days=1)).timestamp() * 1000)),
        400,
        "occurredAt",
        "ahead of the gateway's clock",
    ),
    Hostile(
        "stripe-an-hour-ahead",
        "stripe",
        stripe_created(int((NOW + timedelta(hours=1)).timestamp())),
        400,
        "created",
        "max_event_skew_s is 300",
    ),
    Hostile(
        "form-in-2099",
        "forms",
        forms_json(submitted_at="2099-01-01T00:00:00Z"),
        400,
        "submitted_at",
        "",
    ),
    Hostile(
        "form-year-9999",
        "forms",
        forms_json(submitted_at="9999-12-31T23:59:59-14:00"),
        400,
        "submitted_at",
        "out of range",
    ),
    Hostile(
        "form-in-1999",
        "forms",
        forms_json(submitted_at="1999-12-31T23:59:59Z"),
        400,
        "submitted_at",
        "before the year 2000",
    ),
    # Item 12: the jobs format's free-text system.
    Hostile("jobs-system-stripe", "jobs", jobs_with("stripe"), 400, "system", "not a configured"),
    Hostile("jobs-system-unknown", "jobs", jobs_with("acme crm"), 400, "system", ""),
    # Item 13: e-mail addresses that would reach an SMTP To: header.
    Hostile("email-list", "forms", forms_json(email="a@b.c,evil@x.io"), 400, "email", ""),
    Hostile(
        "email-newline",
        "forms",
        forms_json(email="ana@example.com\r\nBcc:evil@x.io"),
        400,
        "email",
        "",
    ),
    Hostile("email-nul", "forms", forms_json(email="ana\x00@example.com"), 400, "email", ""),
    # Unauthenticated, or unverifiable: 401 and nothing stored.
    Hostile("twilio-invalid-utf8", "twilio", twilio_bad_bytes, 401, None, ""),
    Hostile(
        "stripe-t-400-digits",
        "stripe",
        with_header("stripe", "Stripe-Signature", long_t),
        401,
        None,
        "not a number",
    ),
    Hostile(
        "forms-t-400-digits",
        "forms",
        with_header("forms", "X-Switchboard-Signature", long_t),
        401,
        None,
        "not a number",
    ),
    Hostile(
        "jobs-t-400-digits",
        "jobs",
        with_header("jobs", "X-Switchboard-Signature", long_t),
        401,
        None,
        "not a number",
    ),
    Hostile(
        "calendly-t-400-digits",
        "calendly",
        with_header("calendly", "Calendly-Webhook-Signature", long_t),
        401,
        None,
        "not a number",
    ),
    Hostile(
        "hubspot-timestamp-400-digits",
        "hubspot",
        with_header("hubspot", "X-HubSpot-Request-Timestamp", lambda _: LONG),
        401,
        None,
        "not a number",
    ),
    Hostile(
        "mailgun-timestamp-400-digits", "mailgun", mailgun_long_timestamp, 401, None, "not a number"
    ),
    Hostile(
        "inbound-timestamp-400-digits",
        "mailgun-inbound",
        inbound_long_timestamp,
        401,
        None,
        "not a number",
    ),
    Hostile(
        "vapi-secret-not-utf8",
        "vapi",
        with_header("vapi", "X-Vapi-Secret", lambda _: "\xff"),  # sent as the byte 0xff
        401,
        None,
        "does not match",
    ),
    Hostile(
        "stripe-v1-not-utf8",
        "stripe",
        with_header("stripe", "Stripe-Signature", lambda old: old.split(",")[0] + ",v1=\xff"),
        401,
        None,
        "does not match",
    ),
    Hostile("mailgun-not-json", "mailgun", unsigned(b"{not json"), 401, None, "not valid JSON"),
    Hostile("mailgun-nested", "mailgun", unsigned(b"[" * 100_000), 401, None, "nested too deeply"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_hostile_input_is_refused_and_nothing_is_published(gateway: Gateway, case: Hostile) -> None:
    events, letters = len(gateway.events_now()), len(gateway.dead_letters_now())
    body, headers = case.build(gateway)
    answer = post(gateway.url(case.source), body, headers)
    assert answer.status == case.status, answer.body
    assert case.says in answer.body["error"]
    assert answer.body.get("field") == case.field
    assert len(gateway.events_now()) == events, "a refused request published events"
    # Every body is unique, and partitions have no order between them: match by body.
    found = [d for d in gateway.dead_letters_now() if d["original_value"] == body]
    if case.status == 401:  # unauthenticated: never stored
        assert len(gateway.dead_letters_now()) == letters
        return
    assert len(found) == 1, "expected one dead letter with the raw request"
    assert found[0]["source"] == case.source
    assert found[0]["reason"] == answer.body["error"]
    if case.field is not None:
        assert case.field in found[0]["reason"]
    assert SECRETS[case.source] not in found[0]["reason"]


def sent(gateway: Gateway, source: str, build: Callable[[Gateway], Request]) -> Answer:
    return post(gateway.url(source), *build(gateway))


def test_a_dead_letter_keeps_a_header_that_is_not_utf8_as_sent(gateway: Gateway) -> None:
    """aiohttp reads undecodable header bytes as surrogates; storing them answered 500."""
    body, headers = signed(
        "forms", b'{"submission_id": "' + unique().encode(), gateway.url("forms")
    )
    answer = post(gateway.url("forms"), body, headers | {"User-Agent": "bot\xff"})
    assert answer.status == 400
    [letter] = [d for d in gateway.dead_letters_now() if d["original_value"] == body]
    assert letter["original_headers"]["User-Agent"] == b"bot\xff"


def test_a_twilio_timestamp_in_utc_without_zone_is_read_as_utc(gateway: Gateway) -> None:
    """RFC 5322's "-0000" parsed to a naive time, published and then answered 500."""
    text = fixture("twilio_status_completed.txt").replace(b"%2B0000", b"-0000")
    body = text.replace(b"CA2a4b", b"CA" + unique().encode())
    answer = sent(gateway, "twilio", signed_bytes("twilio", body))
    assert answer.status == 200, answer.body
    [event_id] = answer.body["event_ids"]
    [event] = [e for e in gateway.events_now() if e["event_id"] == event_id]
    assert event["event_time"] == datetime(2026, 11, 21, 16, 20, 5, tzinfo=UTC)


def test_an_event_within_the_skew_limit_is_accepted(gateway: Gateway) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=60)
    answer = sent(gateway, "forms", forms_json(submitted_at=iso(soon)))
    assert answer.status == 200, answer.body


def test_a_configured_job_system_is_accepted_and_namespaces_the_event(gateway: Gateway) -> None:
    answer = sent(gateway, "jobs", jobs_with("servicetitan"))
    assert answer.status == 200, answer.body
    [event_id] = answer.body["event_ids"]
    assert event_id.startswith("servicetitan:job-")


def test_job_systems_may_not_name_another_source() -> None:
    with pytest.raises(ValueError, match="may not name another source: stripe"):
        configured(Settings(job_systems=["servicetitan", "stripe"]))
    with pytest.raises(ValueError, match="job_systems"):
        Settings(job_systems=["Acme CRM"])  # a metric label: lower-case identifiers only


# In-process: a gateway whose mapping or signature check fails in a way no input above
# reaches must still not answer 500.


class RecordingPublisher(Publisher):
    def __init__(self) -> None:  # no Kafka
        self.published: list[tuple[bytes, dict[str, Any]]] = []
        self.letters: list[dict[str, Any]] = []

    async def publish_events(self, records: list[tuple[bytes, dict[str, Any]]]) -> None:
        self.published.extend(records)

    async def publish_dead_letter(self, key: bytes | None, letter: dict[str, Any]) -> None:
        self.letters.append(letter)


SECRET = b"s3cret-of-the-broken-source"


def broken_source(verify_fails: bool) -> Source:
    def verify(request: WebhookRequest, secret: bytes, now: float) -> None:
        if verify_fails:
            raise ZeroDivisionError(f"verify saw {secret.decode()}")

    def parse(request: WebhookRequest, received: datetime) -> list[Event]:
        raise KeyError(f"a bug that quotes the header {request.header('X-Secret')}")

    return Source("forms", "webform", "broken", verify, parse, time_field="submitted_at")


def in_process(verify_fails: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[int, Any, Any]:
    monkeypatch.setattr(
        gateway_module, "configured", lambda _s: {"forms": broken_source(verify_fails)}
    )
    publisher = RecordingPublisher()
    app = gateway_module.create_gateway(Settings(), publisher, {"forms": SECRET})

    async def call(application: web.Application) -> tuple[int, Any]:
        async with TestClient(TestServer(application)) as client:
            response = await client.post(
                "/webhooks/forms", data=b"{}", headers={"X-Secret": SECRET.decode()}
            )
            return response.status, await response.json()

    status, body = asyncio.run(call(app))
    return status, body, publisher


def test_an_unexpected_mapping_error_is_a_400_dead_letter_without_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, body, publisher = in_process(False, monkeypatch)
    assert status == 400
    assert body["error"].startswith("payload could not be mapped: KeyError:")
    assert "[secret]" in body["error"] and SECRET.decode() not in body["error"]
    assert publisher.published == []
    [letter] = publisher.letters
    assert letter["reason"] == body["error"]
    assert letter["error_type"] == "invalid_payload"


def test_an_unexpected_signature_check_error_is_a_401_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    status, body, publisher = in_process(True, monkeypatch)
    assert status == 401
    assert body == {"error": "signature could not be checked: ZeroDivisionError"}
    assert publisher.published == publisher.letters == []


def test_a_refused_body_just_under_the_limit_is_dead_lettered_whole_not_a_503(
    gateway: Gateway,
) -> None:
    """Issue 20, item 14: the body limit was above what the producer may send (1 MiB
    against 1,000,000 bytes), so a near-limit body the gateway refused could not be
    dead-lettered and the provider got 503 for ever. The limits are now consistent (the
    settings refuse anything else): it is a 400, with the whole body kept."""
    limit = gateway.settings.gateway_max_body_bytes
    assert limit + 16_384 <= gateway.settings.kafka_max_message_bytes
    body = b'{"submission_id": "' + unique().encode() + b'", "x": "' + b"y" * limit
    body = body[: limit - 10]  # not JSON: cut short
    url = gateway.url("forms")
    answer = post(url, *signed("forms", body, url, None))
    assert answer.status == 400, answer.body
    assert answer.body["error"].startswith("body is not valid JSON")
    [letter] = [d for d in gateway.dead_letters_now() if d["original_value"] == body]
    assert letter["error_type"] == "malformed_body"


def test_an_event_kafka_refuses_as_too_large_is_a_413_not_a_retry_loop(
    infra: Infra, session_prefix: str, tmp_path: Path
) -> None:
    """Issue 20, item 14: a topic whose max.message.bytes is under the event (here 2 KB)
    used to answer 503, which the provider retries for ever. A retry cannot help: 413,
    and the request goes to the dead letters."""
    data: dict[str, Any] = json.loads(fixture("forms_submission.json"))
    data["submission_id"] = unique()
    data["fields"]["message"] = "a long message " * 400  # 6 kB: over the topic's limit
    body = json.dumps(data).encode()

    with started(infra, f"{session_prefix}small-", tmp_path / "gateway.log") as gateway:
        admin = AdminClient({"bootstrap.servers": gateway.settings.kafka_bootstrap})
        small = ConfigResource(
            ConfigResource.Type.TOPIC,
            CONTACT_EVENTS.full_name(gateway.settings),
            incremental_configs=[
                ConfigEntry(
                    "max.message.bytes", "2048", incremental_operation=AlterConfigOpType.SET
                )
            ],
        )
        for future in admin.incremental_alter_configs([small]).values():
            future.result(30)
        answer = post(gateway.url("forms"), *signed("forms", body, gateway.url("forms"), None))
        assert answer.status == 413, answer.body
        assert "Kafka refused the record" in answer.body["error"]
        letters = gateway.dead_letters_now()
    assert [(d["error_type"], d["original_value"]) for d in letters] == [("too_large", body)]


def test_a_mailgun_token_is_good_for_its_request_only(gateway: Gateway) -> None:
    """Issue 20, item 11: Mailgun signs only timestamp + token, not the body. Whoever saw
    one signed request could, within the timestamp's five minutes, sign any body with
    it. The gateway remembers each token with its body: the same request again (a retry
    that lost our answer) gets the same answer and publishes nothing new; the token with
    another body is refused, and nothing of it is published or stored."""
    first = json.loads(fixture("mailgun_clicked.json"))
    first["event-data"]["id"] = unique()
    url = gateway.url("mailgun")
    body, headers = signed("mailgun", json.dumps(first).encode(), url)
    accepted = post(url, body, headers)
    assert accepted.status == 200, accepted.body
    again = post(url, body, headers)  # a retry: the same answer
    assert (again.status, again.body) == (accepted.status, accepted.body)

    forged = json.loads(body)
    forged["event-data"] |= {"id": unique(), "recipient": "mallory@example.com"}
    refused = post(url, json.dumps(forged).encode(), headers)
    assert refused.status == 401
    assert refused.body == {"error": "the signature's token was already used with another body"}

    ids = [e["event_id"] for e in gateway.events_now()]
    assert ids.count(f"mailgun:{first['event-data']['id']}") == 1
    assert f"mailgun:{forged['event-data']['id']}" not in ids
    letters = gateway.dead_letters_now()
    assert not [d for d in letters if b"mallory" in d["original_value"]]


@pytest.mark.parametrize(
    ("source", "duration", "kept"),
    [("vapi", "1e9", 86_400), ("vapi", "-30", 0), ("twilio", "99999999999", 86_400)],
)
def test_a_call_duration_is_clamped_to_a_day(
    gateway: Gateway, source: str, duration: str, kept: int
) -> None:
    """Issue 20, item 6: a finite but absurd duration (31 years, negative, past Avro's
    int) is kept within 0..86,400 s, not carried into talk-time totals and scoring."""
    if source == "vapi":
        body, headers = vapi_text('"durationSeconds": 247', f'"durationSeconds": {duration}')(
            gateway
        )
        call_id = json.loads(body)["message"]["call"]["id"]
    else:
        fields = twilio_fields() | {"CallDuration": duration}
        body = urlencode(fields).encode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": twilio_signature(gateway.url("twilio"), fields),
        }
        call_id = fields["CallSid"]
    answer = post(gateway.url(source), body, headers)
    assert answer.status == 200, answer.body
    [event] = [e for e in gateway.events_now() if call_id in e["event_id"]]
    assert event["payload"]["duration_seconds"] == kept
