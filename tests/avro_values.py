"""Hypothesis strategies for records of an Avro schema, fitting or hostile: for the
property tests that hold the compiled Avro writers and readers to fastavro."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import strategies as st

# Values of every Python type a record may wrongly carry.
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.datetimes(timezones=st.just(UTC)),
)


def values(schema: Any, hostile: bool) -> st.SearchStrategy[Any]:
    """Values of ``schema`` (expanded); ``hostile``: now and then a value of any type."""
    fitting = _fitting(schema, hostile)
    return st.one_of(fitting, fitting, fitting, ANYTHING) if hostile else fitting


def _fitting(schema: Any, hostile: bool) -> st.SearchStrategy[Any]:
    if isinstance(schema, list):
        branches = []
        for branch in schema:
            drawn = values(branch, hostile)
            if isinstance(branch, dict) and branch.get("type") == "record":
                drawn = st.tuples(st.just(branch["name"]), drawn)  # tuple notation
            branches.append(drawn)
        return st.one_of(branches)
    if isinstance(schema, str):
        schema = {"type": schema}
    kind, logical = schema["type"], schema.get("logicalType")
    if kind == "long" and logical in ("timestamp-millis", "timestamp-micros"):
        return st.one_of(
            st.datetimes(
                min_value=datetime(1971, 1, 1),
                max_value=datetime(2200, 1, 1),
                timezones=st.just(UTC),
            ),
            st.integers(0, 253_402_300_799_999),  # up to the year 9999
        )
    simple: dict[str, st.SearchStrategy[Any]] = {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=20),
        "bytes": st.binary(max_size=20),
    }
    if kind in simple:
        return simple[kind]
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(values(schema["items"], hostile), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), values(schema["values"], hostile), max_size=3)
    if kind == "record":
        fields = {f["name"]: values(f["type"], hostile) for f in schema["fields"]}
        optional = {f["name"]: fields.pop(f["name"]) for f in schema["fields"] if "default" in f}
        return st.fixed_dictionaries(fields, optional=optional)
    raise AssertionError(f"no strategy for {kind}")
