"""The caller lookup: who is on the phone, for a voice AI during the call and for any
agent with the token (``GET /v1/contacts/lookup?phone=…|email=…``).

The read model is a materialised view of the workers' own tables, built from their
changelog topics (``identity``: identifier -> contact id, ``aliases``: retired contact
-> survivor, ``contacts``: contact id -> state) and the rep roster, read committed. The
workers pay nothing for it (the changelogs are written anyway, once per dirty key per
checkpoint), an answer is a dictionary read (no call to a worker, no query to a CRM
that may be HubSpot), and it is as fresh as the last checkpoint: a lookup reflects every
event a worker processed one checkpoint interval ago. Any number of lookups can run side
by side, each with the whole view; one starts by reading the compacted changelogs.

``caller_card`` is pure: (state, roster, now) in, what a person answering the phone
wants to see first out."""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from processors.routing import Rep, rep_from_record
from processors.state import CLOSED_STAGES
from streams.engine import changelog_topic, from_changelog
from streams.kafka import arrived, watermarks
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings, secret, secret_env
from streams.tables import PartitionStore
from streams.topics import REP_ROSTER
from streams.web import LOOKUP_PATH as PATH
from streams.web import LOOKUP_TOKEN_SECRET as TOKEN_SECRET

log = logging.getLogger(__name__)

TABLES = ("identity", "aliases", "contacts")
SHOWN = 5  # bookings, tasks and deals a card shows at most

LOOKUPS = Counter("switchboard_lookups_total", "Caller lookups answered, by outcome.", ["outcome"])
LOOKUP_SECONDS = Histogram(
    "switchboard_lookup_seconds",
    "Time to answer a caller lookup, from the view.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
# At zero from the start: the dashboard shows 0, not "No data", and increase() sees the
# first one.
for _outcome in ("found", "unknown", "bad_request", "warming_up"):
    LOOKUPS.labels(outcome=_outcome)
VIEW_READY = Gauge(
    "switchboard_lookup_ready", "1 once the lookup's view has read the changelogs to their end."
)

_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _ahead(value: str | None, now: datetime) -> bool:
    """A time of the state's JSON (ISO 8601) is at or after ``now``."""
    return value is not None and datetime.fromisoformat(value) >= now


def owner_card(rep: Rep | None, owner_id: str, now: datetime) -> dict[str, Any]:
    if rep is None:
        return {"rep_id": owner_id, "name": None, "email": None, "available_now": None}
    if rep.out_of_office:
        available, why = False, "out of office"
    elif not rep.working_at(now):
        available, why = False, "outside working hours"
    else:
        available, why = True, "working now"
    return {
        "rep_id": rep.rep_id,
        "name": rep.name,
        "email": rep.email,
        "available_now": available,
        "availability": why,
    }


def caller_card(state: dict[str, Any], reps: dict[str, Rep], now: datetime) -> dict[str, Any]:
    """What a person answering the phone wants to see first, from a contact's state (as
    its table holds it, processors.state.ContactState's JSON)."""
    profile: dict[str, str] = state.get("profile") or {}
    identifiers: list[str] = state.get("identifiers") or []

    def first(prefix: str) -> str | None:
        return next((i[len(prefix) :] for i in identifiers if i.startswith(prefix)), None)

    name = " ".join(filter(None, (profile.get("first_name"), profile.get("last_name"))))
    bookings = sorted(_bookings(state), key=lambda b: b["starts_at"] or b["updated_at"])
    upcoming = [b for b in bookings if b["status"] not in _DONE and _ahead(b["starts_at"], now)]
    touches = {
        channel: {"inbound": state.get("last_inbound", {}).get(channel)}
        for channel in state.get("last_inbound") or {}
    }
    for channel, at in (state.get("last_outbound") or {}).items():
        touches.setdefault(channel, {})["outbound"] = at
    owner_id = state.get("owner_id")
    deals = [
        {
            "deal_id": d["deal_id"],
            "stage": d["stage"],
            "amount_minor": d.get("amount_minor"),
            "currency": d.get("currency"),
        }
        for d in (state.get("open_deals") or {}).values()
        if d["stage"] not in CLOSED_STAGES
    ]
    tasks = sorted(state.get("tasks") or [], key=lambda t: t["due_at"])
    return {
        "contact_id": state["contact_id"],
        "name": name or None,
        "first_name": profile.get("first_name"),
        "company": profile.get("company"),
        "email": first("email:"),
        "phone": first("phone:"),
        "address": ", ".join(
            filter(None, (profile.get(k) for k in ("address", "city", "postcode")))
        )
        or None,
        "service": profile.get("service"),
        "lifecycle_stage": state.get("lifecycle_stage"),
        "score": state.get("score"),
        "score_band": state.get("band"),
        "owner": owner_card(reps.get(owner_id), owner_id, now) if owner_id else None,
        "routing": state.get("routing"),
        "open_deals": deals[:SHOWN],
        "last_touch": touches,
        "open_tasks": [
            {"task_id": t["task_id"], "title": t["title"], "due_at": t["due_at"]}
            for t in tasks
            if _ahead(t["due_at"], now)
        ][:SHOWN],
        "next_booking": _booking(upcoming[0]) if upcoming else None,
        "recent_bookings": [_booking(b) for b in bookings[-SHOWN:]][::-1],
        "last_call": state.get("last_call"),
        "workflows": state.get("workflows") or {},
        "tags": state.get("tags") or [],
        "do_not_email": bool((state.get("consent") or {}).get("email_opt_out")),
        "do_not_text": bool((state.get("consent") or {}).get("sms_opt_out")),
    }


_DONE = {"completed", "cancelled", "canceled"}


def _bookings(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The contact's meetings and field-service jobs, in one shape."""
    found = [
        {
            "kind": "meeting",
            "ref": meeting_id,
            "title": m["title"],
            "status": m["status"],
            "starts_at": m.get("starts_at"),
            "who": m.get("host"),
            "location": m.get("location"),
            "updated_at": m["updated_at"],
        }
        for meeting_id, m in (state.get("meetings") or {}).items()
    ]
    found += [
        {
            "kind": "job",
            "ref": j.get("external_id") or job_id,
            "title": j["job_type"],
            "status": j["status"],
            "starts_at": j.get("scheduled_for"),
            "who": j.get("technician"),
            "location": None,
            "updated_at": j["updated_at"],
        }
        for job_id, j in (state.get("jobs") or {}).items()
    ]
    return found


def _booking(booking: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in booking.items() if k != "updated_at"}


def identifier_of(params: dict[str, str]) -> str:
    """The identifier asked for (``phone:+1…`` or ``email:…``), or ValueError naming the
    parameter. Numbers must be E.164 and addresses are compared lower-cased, as the
    sources normalise them."""
    phone, email = params.get("phone", "").strip(), params.get("email", "").strip()
    unknown = sorted(set(params) - {"phone", "email"})
    if unknown:
        raise ValueError(f"unknown parameter {unknown[0]!r}: give phone or email")
    if bool(phone) == bool(email):
        raise ValueError("give exactly one of phone (E.164, +14155550123) or email")
    if phone:
        if not _PHONE.match(phone):
            raise ValueError("parameter phone: not an E.164 number (+14155550123)")
        return f"phone:{phone}"
    if len(email) > 254 or not _EMAIL.match(email):
        raise ValueError("parameter email: not an e-mail address")
    return f"email:{email.lower()}"


class CallerView:
    """The view: each table of the workers, whole, in a store of its own (RocksDB under
    ``directory``, or memory), and the roster."""

    def __init__(self, directory: Path | None) -> None:
        self.tables = {
            name: PartitionStore(directory / name if directory else None) for name in TABLES
        }
        self.reps: dict[str, Rep] = {}
        self.ready = threading.Event()

    def apply(self, table: str, changes: dict[str, str | None], offset: int) -> None:
        self.tables[table].apply(changes, offset)

    def contact_id(self, identifier: str) -> str | None:
        found = self.tables["identity"].get(identifier)
        # A merge retires one of two ids; follow it to the survivor (chains are short).
        for _ in range(10):
            if found is None:
                return None
            survivor = self.tables["aliases"].get(found)
            if survivor is None:
                return found
            found = survivor
        return found

    def lookup(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        try:
            identifier = identifier_of(params)
        except ValueError as exc:
            LOOKUPS.labels(outcome="bad_request").inc()
            return 400, {"error": str(exc)}
        if not self.ready.is_set():
            LOOKUPS.labels(outcome="warming_up").inc()
            return 503, {"error": "the lookup is still reading the changelogs; retry shortly"}
        contact_id = self.contact_id(identifier)
        raw = self.tables["contacts"].get(contact_id) if contact_id else None
        if raw is None:
            LOOKUPS.labels(outcome="unknown").inc()
            LOOKUP_SECONDS.observe(time.perf_counter() - started)
            return 404, {"found": False}
        card = caller_card(json.loads(raw), self.reps, datetime.now(UTC))
        LOOKUPS.labels(outcome="found").inc()
        LOOKUP_SECONDS.observe(time.perf_counter() - started)
        return 200, {"found": True, "contact": card}


def follow(settings: Settings, view: CallerView, stop: threading.Event) -> None:
    """Read the changelogs and the roster into ``view`` until ``stop``: from the start,
    then as they grow. The view is ready once it reached their ends as they were."""
    topics = {changelog_topic(settings, table): table for table in TABLES}
    roster_topic = REP_ROSTER.full_name(settings)
    reps = AvroSerde(registry_client(settings.schema_registry_url), REP_ROSTER.schema, roster_topic)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"{settings.app_id}-lookup",  # never joined: partitions are assigned
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 50,
        }
    )
    try:
        everything = [*topics, roster_topic]
        # The changelogs are the workers' to create: a lookup started with them waits.
        while True:
            metadata = consumer.list_topics(timeout=10).topics
            missing = [t for t in everything if t not in metadata]
            if not missing or stop.wait(1.0):
                break
            log.info("lookup: waiting for %s (a worker creates them)", ", ".join(missing))
        if missing:
            return
        assigned = [
            TopicPartition(topic, p) for topic in everything for p in metadata[topic].partitions
        ]
        ends = {(tp.topic, tp.partition): watermarks(consumer, tp)[1] for tp in assigned}
        consumer.assign([TopicPartition(t.topic, t.partition, OFFSET_BEGINNING) for t in assigned])
        while not stop.is_set():
            messages = arrived(consumer, 1000, 0.1)
            batches: dict[str, dict[str, str | None]] = {}
            last: dict[str, int] = {}
            for message in messages:
                if message.error():
                    continue
                topic, raw = message.topic() or "", message.value()
                if topic == roster_topic:
                    rep_id = (message.key() or b"").decode()
                    if raw is None:
                        view.reps.pop(rep_id, None)
                    else:
                        view.reps[rep_id] = rep_from_record(reps.decode(raw))
                    continue
                table = topics[topic]
                key, value = from_changelog(message.key(), raw)
                batches.setdefault(table, {})[key] = value
                last[table] = max(last.get(table, -1), message.offset() or 0)
            for table, changes in batches.items():
                view.apply(table, changes, last[table])
            if not view.ready.is_set():
                positions = consumer.position(assigned)
                if all(
                    tp.offset >= ends[(tp.topic, tp.partition)]
                    for tp in positions
                    if ends[(tp.topic, tp.partition)] > 0
                ):
                    view.ready.set()
                    VIEW_READY.set(1)
                    log.info("lookup: view caught up with the changelogs")
    finally:
        consumer.close()


def run(settings: Settings) -> None:
    """Serve the lookup until SIGINT/SIGTERM."""
    token = secret(TOKEN_SECRET)
    if token is None:
        raise SystemExit(
            f"lookup: set {secret_env(TOKEN_SECRET)}: the lookup answers with contacts' "
            "personal data, and only to callers that carry it"
        )
    with tempfile.TemporaryDirectory(prefix="lookup-", dir=_data_dir(settings)) as directory:
        on_disk = settings.store.startswith("rocksdb")
        _serve(settings, CallerView(Path(directory) if on_disk else None), token)


def _serve(settings: Settings, view: CallerView, token: str) -> None:
    import signal

    from streams.web import serve

    serve(
        settings.lookup_bind,
        settings.lookup_port,
        {},
        token,
        queries={PATH: view.lookup},
        token_secret=TOKEN_SECRET,
        ready=view.ready.is_set,
    )
    print(
        f"lookup: http://{settings.lookup_bind}:{settings.lookup_port}{PATH}?phone=|email= "
        "(Bearer token); /metrics, /healthz",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    follow(settings, view, stop)


def _data_dir(settings: Settings) -> Path:
    path = settings.data_dir.parent / "lookup"  # beside the workers' tables
    path.mkdir(parents=True, exist_ok=True)
    return path
