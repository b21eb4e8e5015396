"""The compiled Avro writers write what fastavro writes, byte for byte, for every record
of every schema in the contract; and whatever they refuse, fastavro decides."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastavro import schemaless_writer
from fastavro.schema import expand_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from streams.avro_writer import compile_writer
from streams.serde import AvroSerde, SchemaViolation, registry_client
from tests.avro_values import values
from tests.records import contact_event, crm_command

OFFLINE = registry_client("http://127.0.0.1:9/unused")


def fastavro_bytes(parsed: Any, record: Any) -> bytes | Exception:
    out = io.BytesIO()
    try:
        schemaless_writer(out, parsed, record)
    except Exception as exc:
        return exc
    return out.getvalue()


def compiled_bytes(name: str, record: Any) -> bytes | None:
    writer = compile_writer(schemas.parsed(name))
    assert writer is not None, f"{name} is not compiled"
    parts: list[bytes] = []
    try:
        writer(parts, record)
        return b"".join(parts)
    except Exception:
        return None


@pytest.mark.parametrize("name", schemas.names())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_compiled_writer_writes_what_fastavro_writes(name: str, data: st.DataObject) -> None:
    record = data.draw(values(expand_schema(schemas.parsed(name)), hostile=False))
    assert compiled_bytes(name, record) == fastavro_bytes(schemas.parsed(name), record)


@pytest.mark.parametrize("name", schemas.names())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_a_compiled_writer_takes_fastavro_takes_the_same(
    name: str, data: st.DataObject
) -> None:
    # Wrong types anywhere: the compiled writer may refuse (fastavro then decides), but
    # what it writes fastavro writes too, the same bytes.
    record = data.draw(values(expand_schema(schemas.parsed(name)), hostile=True))
    written = compiled_bytes(name, record)
    if written is not None:
        assert written == fastavro_bytes(schemas.parsed(name), record)


def test_a_bool_where_a_union_wants_a_long_is_refused_as_fastavro_refuses_it() -> None:
    # fastavro's union takes no bool for a long; a fast path that wrote it as 1 would
    # let through what the contract refuses.
    deal = {"deal_id": "d-1", "name": "Roof", "stage": "new", "amount_minor": True}
    record = crm_command("CREATE_DEAL", "c-1", deal)
    serde = AvroSerde(OFFLINE, "crm_command", "t", discriminator="command_type")
    serde._header = b"\x00\x00\x00\x00\x01"  # no registry here; the id is not the point
    with pytest.raises(SchemaViolation, match="amount_minor"):
        serde.encode(record)


def test_the_serde_frames_the_compiled_bytes() -> None:
    serde = AvroSerde(OFFLINE, "contact_event", "t", discriminator="event_type")
    serde._header = b"\x00\x00\x00\x00\x07"
    event = contact_event()
    written = serde.encode(event)
    assert written[:5] == b"\x00\x00\x00\x00\x07"
    assert written[5:] == fastavro_bytes(schemas.parsed("contact_event"), serde.validate(event))
    serde._writers[7] = schemas.parsed("contact_event")
    assert serde.decode(written)["event_id"] == event["event_id"]
