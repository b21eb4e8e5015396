"""Dead-letter records keep the original bytes and get a deterministic id."""

from __future__ import annotations

from datetime import UTC, datetime

from streams.dlq import dead_letter
from streams.serde import AvroSerde, registry_client

AT = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def test_same_input_dead_lettered_twice_has_the_same_id() -> None:
    kwargs = {
        "stage": "intake",
        "error": ValueError("bad"),
        "value": b"x",
        "topic": "t",
        "partition": 2,
        "offset": 7,
        "now": AT,
    }
    assert dead_letter(**kwargs)["dead_letter_id"] == dead_letter(**kwargs)["dead_letter_id"]  # type: ignore[arg-type]


def test_input_that_never_reached_a_topic_is_identified_by_its_bytes() -> None:
    one = dead_letter(stage="gateway", error="bad signature", value=b"a", source="stripe", now=AT)
    two = dead_letter(stage="gateway", error="bad signature", value=b"b", source="stripe", now=AT)
    assert one["dead_letter_id"] != two["dead_letter_id"]
    assert one["error_type"] == "Rejected"
    assert one["original_topic"] is None


def test_a_dead_letter_is_a_valid_contract_record() -> None:
    record = dead_letter(
        stage="intake",
        error=KeyError("identity"),
        value=b"\x01\x02",
        key=b"k",
        topic="t",
        partition=0,
        offset=1,
        headers={"h": b"v"},
        now=AT,
    )
    serde = AvroSerde(registry_client("http://127.0.0.1:9/unused"), "dead_letter", "t")
    assert serde.validate(record) == record
    assert record["reason"] == "'identity'"
    assert record["error_type"] == "KeyError"
