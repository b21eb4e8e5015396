"""Backfill import: ``switchboard import FILE --source NAME``.

* JSONL, one provider payload per line, for any webhook source (``stripe``, ``hubspot``,
  ...): each line is mapped and validated exactly as the gateway would (signatures are
  not checked: the file is the operator's). For ``twilio`` and ``mailgun-inbound`` a line
  is a JSON object of the form fields.
* CSV with ``--source contacts``: a CRM contact export (``email``, ``phone``, ``crm_id``
  or ``id``, optional ``updated_at``; every other column is a property), each row a
  CONTACT_UPDATED event from ``--system`` (the CRM's name).

Files are read as UTF-8 (a byte-order mark is skipped), whatever the machine's locale.
Rows that fail (a CSV row with more or fewer cells than the header included) go to a
report file with the line number and the reason; the accepted ones are published with an
idempotent, acks=all producer, and a row counts as accepted only once Kafka acknowledged
every event of it: the others are listed as not written. Re-importing a file yields the
same event ids, so the pipeline ignores what it has already seen."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
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


# A cell past the header's columns, or the value of one a short row lacks (csv.DictReader).
_EXTRA = "\x00extra"
_MISSING = "\x00missing"


def _rows(handle: TextIO, source: str) -> Iterator[tuple[int, Any]]:
    if source == CONTACTS:
        reader = csv.DictReader(handle, restkey=_EXTRA, restval=_MISSING)
        for row in reader:
            yield reader.line_num, row
        return
    for number, line in enumerate(handle, start=1):
        if line.strip():
            yield number, line.rstrip("\n")


def _open(path: Path) -> TextIO:
    return path.open(encoding="utf-8-sig", newline="")


def map_row(source: str, raw: Any, system: str, received: datetime) -> list[Event]:
    if source == CONTACTS:
        _whole(raw)
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


def _whole(row: dict[str, Any]) -> None:
    """A CSV row must have a cell per header column, no more, no fewer."""
    columns = len(row) - (1 if _EXTRA in row else 0)
    if _EXTRA in row:
        cells = columns + len(row[_EXTRA])
        raise Rejected(f"row has {cells} cells, the header {columns} columns")
    missing = [name for name, value in row.items() if value is _MISSING]
    if missing:
        raise Rejected(
            f"row has {columns - len(missing)} cells, the header {columns} columns "
            f"(no {', '.join(missing)})",
            field=missing[0],
        )


def run_import(
    settings: Settings,
    path: Path,
    source: str,
    *,
    system: str = "crm",
    report: Path | None = None,
    show_progress: bool = True,
    flush_timeout_s: float = 60.0,
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
    with _open(path) as counting:
        total = sum(1 for _ in _rows(counting, source))
    unacknowledged: dict[int, int] = {}  # line -> its events Kafka has not acknowledged yet
    failed: dict[int, str] = {}  # line -> why Kafka did not take it

    def delivered(line: int, error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failed.setdefault(line, error.str())
        unacknowledged[line] -= 1
        if not unacknowledged[line]:
            del unacknowledged[line]

    received = datetime.now(UTC)
    columns = (
        TextColumn("importing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with (
        _open(path) as handle,
        report.open("w", encoding="utf-8") as rejected,
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
                if encoded:
                    unacknowledged[number] = len(encoded)
                for key, value in encoded:
                    while True:
                        try:
                            producer.produce(
                                topic, key=key, value=value, on_delivery=partial(delivered, number)
                            )
                            break
                        except BufferError:
                            producer.poll(0.1)
                summary.accepted_rows += 1
                summary.events += len(encoded)
            producer.poll(0)
            progress.advance(task)
        producer.flush(flush_timeout_s)
    for line in unacknowledged:
        failed.setdefault(line, f"not acknowledged by Kafka within {flush_timeout_s:g} s")
    summary.accepted_rows -= len(failed)
    summary.undelivered = [f"line {line}: {why}" for line, why in sorted(failed.items())]
    if summary.rejected == 0:
        report.unlink()
        summary.report = None
    return summary
