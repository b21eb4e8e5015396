"""Avro in the Confluent wire format (magic byte, 4-byte big-endian schema id, Avro
body): fastavro encodes and decodes, confluent-kafka's Schema Registry client resolves
schema ids (and caches them).

Records are plain dicts shaped by the ``schemas/`` contract. A record that does not fit
fails at the producer with an error that names the field; reads use the current
contract as reader schema, so data written with an older version resolves to it.

confluent-kafka's own AvroSerializer/AvroDeserializer are not used on this path: they
walk the whole schema for data-contract tags on every message, which made decoding
about 20x slower here (see ``make bench``), and we use no data-contract rules."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

import schemas
from streams.avro_reader import compile_reader
from streams.avro_writer import compile_writer

MAGIC_BYTE = 0


class SerdeError(Exception):
    """Base class: what went wrong, in words that name the field."""


class SchemaViolation(SerdeError):
    """A record does not match its schema (raised before anything is sent)."""


class UndecodableMessage(SerdeError):
    """Bytes that are not a valid Confluent-framed Avro record of the expected schema."""


def registry_client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": url, "timeout": 10})


def subject_for(topic: str) -> str:
    """Confluent's TopicNameStrategy, which is what the serializers use."""
    return f"{topic}-value"


def _camel(symbol: str) -> str:
    return "".join(part.capitalize() for part in symbol.lower().split("_"))


class AvroSerde:
    """Encode and decode one contract record type for one topic.

    ``discriminator`` names an enum field whose symbol selects the branch of the
    ``payload`` union (``MEETING_BOOKED`` -> record ``MeetingBooked``): union branches
    may share a shape, so the branch is always named rather than guessed."""

    def __init__(
        self,
        registry: SchemaRegistryClient,
        schema_name: str,
        topic: str,
        *,
        discriminator: str | None = None,
        through: str | None = None,
    ) -> None:
        self.schema_name = schema_name
        self.topic = topic
        self.discriminator = discriminator
        self._registry = registry
        self._schema_text = schemas.schema_text(schema_name)
        self._parsed = schemas.parsed(schema_name)
        self._namespace = schemas.schema_json(schema_name).get("namespace", "")
        self._schema_id: int | None = None
        self._header: bytes | None = None
        self._branches: dict[str, str] = {}  # discriminator symbol -> union branch name
        self._writers: dict[int, Any] = {}
        self._compiled = compile_writer(self._parsed)
        # What decode reads of a record written with the contract: all of it, or its
        # fields up to ``through`` (see leading).
        self._read = self._parsed if through is None else _leading(schema_name, through)
        self._compiled_read = compile_reader(self._read)

    def leading(self, through: str) -> AvroSerde:
        """A serde of the same topic whose decode stops after the field ``through``, for a
        stage that reads only the first fields and forwards the bytes unchanged: the rest
        is never decoded (Avro fields are written in order, so the first ones are read
        alone). A record written with another version of the schema is decoded whole, to
        resolve it. Bytes past ``through`` are not checked: the stage that decodes the
        record whole dead-letters it if they are wrong."""
        return AvroSerde(
            self._registry,
            self.schema_name,
            self.topic,
            discriminator=self.discriminator,
            through=through,
        )

    def schema_id(self) -> int:
        """The registry's id for this contract under the topic's subject. Schemas are
        registered ahead by `switchboard schemas register`: a producer only looks its
        contract up, so it can never register a schema by accident."""
        if self._schema_id is None:
            subject = subject_for(self.topic)
            try:
                found = self._registry.lookup_schema(subject, Schema(self._schema_text, "AVRO"))
            except Exception as exc:
                raise SerdeError(
                    f"{self.schema_name} is not registered under {subject} "
                    f"(run `switchboard schemas register`): {exc}"
                ) from exc
            if found.schema_id is None:
                raise SerdeError(f"the registry returned no id for {subject}")
            self._schema_id = found.schema_id
        return self._schema_id

    def _with_branch(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.discriminator is None:
            return record
        symbol = record.get(self.discriminator)
        payload = record.get("payload")
        if not isinstance(symbol, str):
            raise SchemaViolation(
                f"{self.schema_name}: field {self.discriminator} is {symbol!r}, expected one "
                "of the schema's symbols"
            )
        if isinstance(payload, tuple):
            return record
        branch = self._branches.get(symbol)
        if branch is None:  # worked out once per symbol: every CRM command asks
            branch = self._branches[symbol] = f"{self._namespace}.{_camel(symbol)}"
        return {**record, "payload": (branch, payload)}

    def validate(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record as it will be written; raises SchemaViolation naming each bad field."""
        prepared = self._with_branch(record)
        try:
            validate(prepared, self._parsed, raise_errors=True)
        except ValidationError as exc:
            raise SchemaViolation(f"{self.schema_name}: {_describe(exc.errors)}") from None
        return prepared

    def encode(self, record: dict[str, Any]) -> bytes:
        header = self._header
        if header is None:
            header = self._header = bytes([MAGIC_BYTE]) + self.schema_id().to_bytes(4, "big")
        prepared = record if self.discriminator is None else self._with_branch(record)
        if self._compiled is not None:
            # The compiled writer's fast path; whatever it refuses, fastavro writes or
            # refuses with its own words (streams.avro_writer).
            parts = [header]
            try:  # not contextlib.suppress: entering it cost 2% of a worker
                self._compiled(parts, prepared)
                return b"".join(parts)  # refuses a part that is no bytes, as += did
            except Exception:
                pass
        body = io.BytesIO()
        body.write(header)
        try:
            schemaless_writer(body, self._parsed, prepared)
        except Exception as exc:
            # The writer's own message is terse; validation names every bad field.
            self.validate(record)
            raise SchemaViolation(f"{self.schema_name}: {exc}") from exc
        return body.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if not data:
            raise UndecodableMessage("empty message value (expected Confluent-framed Avro)")
        if data[0] != MAGIC_BYTE or len(data) < 5:
            raise UndecodableMessage(
                f"not Confluent-framed Avro: first byte is {data[0]:#04x}, expected magic byte "
                f"0x00 followed by a 4-byte schema id ({len(data)} bytes in all)"
            )
        schema_id = int.from_bytes(data[1:5], "big")
        try:
            writer = self._writers.get(schema_id)
            if writer is None:
                writer = self._writer_schema(schema_id)
            # Schema resolution costs a third of the decode; skip it when the writer
            # used the contract itself.
            if writer is self._parsed:
                decoded = self._read_contract(data)
            else:
                decoded = schemaless_reader(io.BytesIO(data[5:]), writer, self._parsed)
        except Exception as exc:
            raise UndecodableMessage(
                f"cannot decode {self.schema_name} written with schema id {schema_id}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(decoded, dict):
            raise UndecodableMessage(f"decoded to {type(decoded).__name__}, expected a record")
        return decoded

    def _read_contract(self, data: bytes) -> Any:
        """Bytes written with the contract: the compiled reader's fast path; whatever it
        does not read, fastavro reads or refuses (streams.avro_reader)."""
        if self._compiled_read is not None:
            try:
                return self._compiled_read(data, 5)
            except Exception:
                pass
        return schemaless_reader(io.BytesIO(data[5:]), self._read, None)

    def _writer_schema(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is None:
            registered = self._registry.get_schema(schema_id)
            if registered.schema_type not in (None, "AVRO"):
                raise UndecodableMessage(
                    f"schema id {schema_id} is a {registered.schema_type} schema, not Avro"
                )
            written = json.loads(registered.schema_str or "")
            same = written == schemas.schema_json(self.schema_name)
            writer = self._parsed if same else parse_schema(written)
            self._writers[schema_id] = writer
        return writer


def _leading(schema_name: str, through: str) -> Any:
    """The parsed schema of ``schema_name``'s record cut after the field ``through``."""
    whole = schemas.schema_json(schema_name)
    names = [field["name"] for field in whole["fields"]]
    if through not in names:
        raise ValueError(f"{schema_name} has no field {through!r} (fields: {', '.join(names)})")
    return parse_schema({**whole, "fields": whole["fields"][: names.index(through) + 1]})


def _describe(errors: Sequence[Any]) -> str:
    """fastavro's findings as 'field Record.name: got X, expected A or B', one per field
    (a union reports one finding per branch; they are merged)."""
    expected: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for error in errors:
        field = str(error.field).rsplit(".", 2)
        name = ".".join(field[-2:])
        wanted = error.schema if isinstance(error.schema, str) else error.schema.get("type", "?")
        expected.setdefault(name, []).append(str(wanted))
        got[name] = (
            "nothing" if error.datum is None else f"{error.datum!r} ({type(error.datum).__name__})"
        )
    return "; ".join(
        f"field {name}: got {got[name]}, expected {' or '.join(dict.fromkeys(wants))}"
        for name, wants in expected.items()
    )
