"""The contract stays BACKWARD compatible with its released versions; a breaking change
is refused both by the registry (at register time) and by the schema check."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

import schemas
from streams.registry import check_released

pytestmark = pytest.mark.integration


def with_envelope_field(name: str, field: dict[str, object]) -> str:
    schema = schemas.schema_json(name)
    schema["fields"].append(field)
    return json.dumps(schema)


BREAKING: dict[str, object] = {
    "name": "tenant_id",
    "type": "string",
}  # required, no default: old data lacks it
EVOLVED: dict[str, object] = {"name": "tenant_id", "type": ["null", "string"], "default": None}


@pytest.mark.parametrize("name", schemas.names())
def test_every_schema_is_backward_compatible_with_its_released_versions(
    registry: SchemaRegistryClient, name: str
) -> None:
    results = check_released(registry, schemas.schema_text(name), name)
    assert results, f"{name} has no released version under schemas/released/"
    assert [(r.against_version, r.compatible, r.messages) for r in results] == [
        (r.against_version, True, ()) for r in results
    ]


def test_the_schema_check_refuses_a_breaking_change_and_names_the_field(
    registry: SchemaRegistryClient,
) -> None:
    [result] = check_released(
        registry, with_envelope_field("contact_event", BREAKING), "contact_event"
    )
    assert not result.compatible
    assert "tenant_id" in result.messages[0]


def test_the_schema_check_accepts_a_new_optional_field(registry: SchemaRegistryClient) -> None:
    [result] = check_released(
        registry, with_envelope_field("contact_event", EVOLVED), "contact_event"
    )
    assert result.compatible


def test_the_registry_refuses_to_register_a_breaking_change(
    registry: SchemaRegistryClient,
) -> None:
    subject = f"test-compat-{uuid.uuid4().hex[:8]}-value"
    try:
        registry.register_schema(subject, Schema(schemas.schema_text("contact_event"), "AVRO"))
        with pytest.raises(SchemaRegistryError) as refused:
            registry.register_schema(
                subject, Schema(with_envelope_field("contact_event", BREAKING), "AVRO")
            )
        assert refused.value.http_status_code == 409
        assert "tenant_id" in refused.value.error_message
        # The compatible evolution is accepted as version 2.
        registry.register_schema(
            subject, Schema(with_envelope_field("contact_event", EVOLVED), "AVRO")
        )
        assert registry.get_latest_version(subject).version == 2
    finally:
        registry.delete_subject(subject)
        registry.delete_subject(subject, permanent=True)
