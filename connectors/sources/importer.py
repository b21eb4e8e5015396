"""Backfill import: ``switchboard import FILE --source NAME``.

* JSONL, one provider payload per line, for any webhook source (``stripe``, ``hubspot``,
  ...): each line is mapped and validated exactly as the gateway would (signatures are
  not checked: the file is the operator's). For ``twilio`` and ``mailgun-inbound`` a line
  is a JSON object of the form fields.
* CSV with ``--source contacts``: a CRM contact export (``email``, ``phone``, ``crm_id``
  or ``id``, optional ``updated_at``; every other column is a property), each row a
  CONTACT_UPDATED event from ``--system`` (the CRM's name).

Rows that fail go to a report file with the line number and the reason; the accepted
ones are published with an idempotent, acks=all producer. Re-importing a file yields
the same event ids, so the pipeline ignores what it has already seen."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlencode

from confluent_kafka import KafkaError, Message, Producer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from connectors.sources import canonical, identity
from connectors.sources.base import Event, Rejected, WebhookRequest
from connectors.sources.identity import strongest_key
from connectors.sources.registry import SOURCES
from streams.kafka import producer_config
from streams.serde import AvroSerde, SchemaViolation, registry_client
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS

CONTACTS = "contacts"
FORM_SOURCES = {"twilio", "mailgun-inbound"}
_IDENTITY_COLUMNS = {"email", "phone", "crm_id", "id", "updated_at"}


@dataclass
class ImportSummary:
    rows: int = 0
    accepted_rows: int = 0
    events: int = 0
    rejected: int = 0
    report: Path | None = None
    undelivered: list[str] = field(default_factory=list)


def contact_row_events(row: dict[str, str], system: str, received: datetime) -> list[Event]:
    crm_id = (row.get("crm_id") or row.get("id") or "").strip() or None
    ident = identity.identity(
        email_address=row.get("email"), phone_number=row.get("phone"), crm_id=crm_id
    )
    properties = {
        k: v for k, v in row.items() if k not in _IDENTITY_COLUMNS and v not in (None, "")
    }
    updated = row.get("updated_at") or ""
    event_time = received
    if updated:
        try:
            event_time = datetime.fromisoformat(updated.replace("Z", "+00:00"))
        except ValueError:
            raise Rejected(
                f"field updated_at: {updated!r} is not an ISO 8601 time", field="updated_at"
            ) from None
        if event_time.tzinfo is None:
            event_time = event_time.replace(tzinfo=UTC)
    # The same row imported again is the same event.
    digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:16]
    who = crm_id or ident["email"] or ident["phone"] or "unknown"
    return [
        canonical.event(
            system=system,
            provider_event_id=f"import:{who}:{digest}",
            event_type="CONTACT_UPDATED",
            event_time=event_time,
            received=received,
            identity=ident,
            payload={"properties": properties, "previous": {}},
        )
    ]


def _rows(handle: TextIO, source: str) -> Iterator[tuple[int, Any]]:
    if source == CONTACTS:
        reader = csv.DictReader(handle)
        for number, row in enumerate(reader, start=2):  # line 1 is the header
            yield number, row
        return
    for number, line in enumerate(handle, start=1):
        if line.strip():
            yield number, line.rstrip("\n")


def map_row(source: str, raw: Any, system: str, received: datetime) -> list[Event]:
    if source == CONTACTS:
        return contact_row_events(raw, system, received)
    if source in FORM_SOURCES:
        try:
            fields = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise Rejected(f"line is not valid JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise Rejected("line is not a JSON object of form fields")
        body = urlencode({k: str(v) for k, v in fields.items()}).encode()
        request = WebhookRequest(body, {"Content-Type": "application/x-www-form-urlencoded"})
    else:
        request = WebhookRequest(raw.encode(), {"Content-Type": "application/json"})
    return SOURCES[source].parse(request, received)


def run_import(
    settings: Settings,
    path: Path,
    source: str,
    *,
    system: str = "crm",
    report: Path | None = None,
    show_progress: bool = True,
) -> ImportSummary:
    if source != CONTACTS and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}: use contacts or one of {', '.join(SOURCES)}")
    topic = CONTACT_EVENTS.full_name(settings)
    serde = AvroSerde(
        registry_client(settings.schema_registry_url),
        CONTACT_EVENTS.schema,
        topic,
        discriminator="event_type",
    )
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    report = report or path.with_name(path.name + ".rejected.jsonl")
    summary = ImportSummary(report=report)
    total = sum(1 for _ in _rows(path.open(newline=""), source))

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            key = (message.key() or b"").decode(errors="replace")
            summary.undelivered.append(f"{key}: {error.str()}")

    received = datetime.now(UTC)
    columns = (
        TextColumn("importing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        path.open(newline="") as handle,
        report.open("w") as rejected,
        Progress(*columns, disable=not show_progress) as progress,
    ):
        task = progress.add_task(path.name, total=total)
        for number, raw in _rows(handle, source):
            summary.rows += 1
            try:
                events = map_row(source, raw, system, received)
                encoded = [(strongest_key(e["identity"]), serde.encode(e)) for e in events]
            except (Rejected, SchemaViolation) as exc:
                summary.rejected += 1
                rejected.write(
                    json.dumps(
                        {
                            "line": number,
                            "reason": str(exc),
                            "field": getattr(exc, "field", None),
                            "row": raw,
                        }
                    )
                    + "\n"
                )
            else:
                for key, value in encoded:
                    while True:
                        try:
                            producer.produce(topic, key=key, value=value, on_delivery=delivered)
                            break
                        except BufferError:
                            producer.poll(0.1)
                summary.accepted_rows += 1
                summary.events += len(encoded)
            producer.poll(0)
            progress.advance(task)
        producer.flush(60)
    if summary.rejected == 0:
        report.unlink()
        summary.report = None
    return summary
