"""Registering the contract in the Schema Registry and checking that the contract stays
BACKWARD compatible with every released version (asked of the registry itself, so the
rule that refuses a change at register time is the rule the check applies)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

import schemas
from streams.serde import subject_for
from streams.settings import Settings
from streams.topics import CATALOG, TopicSpec


@dataclass(frozen=True)
class Registration:
    subject: str
    schema_id: int
    version: int | None


def register_catalog(
    client: SchemaRegistryClient, settings: Settings, catalog: tuple[TopicSpec, ...] = CATALOG
) -> list[Registration]:
    """Register each topic's value schema under its subject (idempotent: registering
    the same schema again returns the same id and version)."""
    done = []
    for spec in catalog:
        subject = subject_for(spec.full_name(settings))
        schema = Schema(schemas.schema_text(spec.schema), "AVRO")
        schema_id = client.register_schema(subject, schema)
        version = client.lookup_schema(subject, schema).version
        done.append(Registration(subject, schema_id, version))
    return done


@dataclass(frozen=True)
class CompatibilityResult:
    schema: str
    against_version: int
    compatible: bool
    messages: tuple[str, ...] = ()


def check_released(
    client: SchemaRegistryClient, schema_text: str, name: str
) -> list[CompatibilityResult]:
    """Is ``schema_text`` BACKWARD compatible with each released version of ``name``?

    Each released version is registered alone in a scratch subject and the registry is
    asked about the candidate; the scratch subject is deleted afterwards."""
    results = []
    for version, released_text in schemas.released(name):
        scratch = f"switchboard-compat-check-{name}-v{version}-{uuid.uuid4().hex[:8]}"
        try:
            client.register_schema(scratch, Schema(released_text, "AVRO"))
            client.set_compatibility(scratch, "BACKWARD")
            candidate = Schema(schema_text, "AVRO")
            compatible = client.test_compatibility(scratch, candidate)
            messages: tuple[str, ...] = ()
            if not compatible:
                messages = (_refusal(client, scratch, candidate),)
        finally:
            client.delete_subject(scratch, permanent=False)
            client.delete_subject(scratch, permanent=True)
        results.append(CompatibilityResult(name, version, bool(compatible), messages))
    return results


def _refusal(client: SchemaRegistryClient, subject: str, candidate: Schema) -> str:
    """The registry's own words for why it refuses ``candidate`` (they name the field)."""
    try:
        client.register_schema(subject, candidate)
    except SchemaRegistryError as exc:
        return str(exc.error_message)
    return "the registry reported it incompatible but then accepted it"
