"""The compiled Avro readers give what fastavro gives for the same bytes, for every
schema in the contract; and bytes they do not read, fastavro decides."""

from __future__ import annotations

import io
from typing import Any

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import expand_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from streams.avro_reader import compile_reader
from streams.serde import AvroSerde, UndecodableMessage, registry_client
from tests.avro_values import values
from tests.records import contact_event

OFFLINE = registry_client("http://127.0.0.1:9/unused")
REFUSED = "refused"


def written(name: str, record: Any) -> bytes:
    out = io.BytesIO()
    schemaless_writer(out, schemas.parsed(name), record)
    return out.getvalue()


def fastavro_read(name: str, data: bytes) -> Any:
    try:
        return schemaless_reader(io.BytesIO(data), schemas.parsed(name), None)
    except Exception:
        return REFUSED


def compiled_read(name: str, data: bytes) -> Any:
    reader = compile_reader(schemas.parsed(name))
    assert reader is not None, f"{name} is not compiled"
    try:
        return reader(data, 0)
    except Exception:
        return REFUSED


@pytest.mark.parametrize("name", schemas.names())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_compiled_reader_reads_what_fastavro_reads(name: str, data: st.DataObject) -> None:
    record = data.draw(values(expand_schema(schemas.parsed(name)), hostile=False))
    encoded = written(name, record)
    assert compiled_read(name, encoded) == fastavro_read(name, encoded)


@pytest.mark.parametrize("name", schemas.names())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_bytes_the_compiled_reader_reads_fastavro_reads_the_same(
    name: str, data: st.DataObject
) -> None:
    # Cut short, bytes changed, or noise: the compiled reader may refuse (fastavro then
    # decides), but what it reads fastavro reads too, to the same record.
    record = data.draw(values(expand_schema(schemas.parsed(name)), hostile=False))
    encoded = bytearray(written(name, record))
    damage = data.draw(st.sampled_from(["cut", "change", "noise"]))
    if damage == "cut" and encoded:
        del encoded[data.draw(st.integers(0, len(encoded) - 1)) :]
    elif damage == "change" and encoded:
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    else:
        encoded = bytearray(data.draw(st.binary(max_size=64)))
    got = compiled_read(name, bytes(encoded))
    if got is not REFUSED:
        assert got == fastavro_read(name, bytes(encoded))


def test_the_serde_reads_its_own_framing_and_refuses_a_cut_record_by_name() -> None:
    serde = AvroSerde(OFFLINE, "contact_event", "t", discriminator="event_type")
    serde._header = b"\x00\x00\x00\x00\x07"
    serde._writers[7] = schemas.parsed("contact_event")
    event = contact_event()
    framed = serde.encode(event)
    assert serde.decode(framed) == fastavro_read("contact_event", framed[5:])
    with pytest.raises(UndecodableMessage, match="cannot decode contact_event"):
        serde.decode(framed[:40])
