"""Avro encoders compiled from a schema to plain Python, byte for byte what fastavro
writes.

fastavro's writer interprets the schema for every record: each field's type is looked
up and dispatched, each ``["null", X]`` union matched by validating the value against
its branches. A worker writes several records per event (audit entries, CRM commands,
claims), and encoding was about 15% of its time. A schema compiled once to a function
that writes each field directly is faster: `make bench` (bench_spine) prints both, and
measured 1.9x on events and CRM commands and 1.1x on audit entries.

The compiled function is the fast path only. Whatever it does not handle (a value of
the wrong type, a missing field, a union it cannot tell without guessing) raises, and
the caller encodes that record with fastavro instead, which writes it or fails it with
its own error: the fast path never decides what is valid. ``compile_writer`` returns
None for a schema with a type it does not compile."""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastavro.write import LOGICAL_WRITERS

from streams.avro_source import Source, Unsupported

# Writes a record's parts onto a list, for b"".join: a list append is far cheaper than
# ``bytearray +=`` (the buffer protocol and a resize per part), and a record has dozens.
Writer = Callable[[list[bytes], dict[str, Any]], None]

_SMALL = 1 << 14  # zig-zag values below this come from a table


def _varint(n: int) -> bytes:
    """An Avro long: zig-zag, then 7 bits a byte, low first."""
    if not -(1 << 63) <= n < (1 << 63):
        raise OverflowError(f"{n} does not fit in an Avro long")
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_COUNTS = [_varint(n) for n in range(_SMALL)]  # the small non-negative longs


_LARGE: dict[int, bytes] = {}  # lately written large longs: the same timestamps recur


def _long(n: int) -> bytes:
    # Only a plain int: a bool, a float or an int subclass goes to fastavro, which
    # knows whether a union takes it.
    if type(n) is not int:
        raise TypeError(f"expected an int, got {type(n).__name__}")
    if 0 <= n < _SMALL:
        return _COUNTS[n]
    found = _LARGE.get(n)
    if found is None:
        if len(_LARGE) >= 4096:
            _LARGE.clear()
        found = _LARGE[n] = _varint(n)
    return found


def _int(n: int) -> bytes:
    if type(n) is not int or not -(1 << 31) <= n < (1 << 31):
        raise TypeError(f"expected a 32-bit int, got {n!r}")
    return _long(n)


# Per logical type of a long (timestamps): a datetime -> its encoded long. Equal
# datetimes are the same instant, written as the same long whatever their time zone.
_MEMOS: dict[str, dict[datetime, bytes]] = {}


def _prepared(memo: dict[datetime, bytes], value: Any, prepare: Any, schema: Any) -> bytes:
    """``value`` as a logical long, remembered when it is a plain datetime (an int is
    written as it is, and may be a bool, equal to 1 but refused)."""
    written = _long(prepare(value, schema))
    if type(value) is datetime:
        if len(memo) >= 4096:
            memo.clear()
        memo[value] = written
    return written


_FLOAT = struct.Struct("<f").pack
_DOUBLE = struct.Struct("<d").pack


class _Compiler(Source):
    def value(self, schema: Any, expr: str, indent: int) -> None:
        """Lines that write ``expr`` (a local name) as ``schema``."""
        if isinstance(schema, list):
            self.union(schema, expr, indent)
            return
        if isinstance(schema, str):
            schema = {"type": schema}
        kind = schema["type"]
        logical = schema.get("logicalType")
        if kind == "long" and logical is not None and LOGICAL_WRITERS.get(f"long-{logical}"):
            self.timestamp(f"long-{logical}", schema, expr, indent)
            return
        if logical is not None and kind in ("int", "long", "bytes", "string", "fixed"):
            prepare = LOGICAL_WRITERS.get(f"{kind}-{logical}")
            if prepare is not None:
                fn = self.constant(prepare)
                schema_const = self.constant(schema)
                converted = self.name("v")
                self.emit(indent, f"{converted} = {fn}({expr}, {schema_const})")
                expr = converted
        if kind == "null":
            self.emit(indent, f"if {expr} is not None: raise TypeError('not null')")
        elif kind == "boolean":
            self.emit(indent, f"if type({expr}) is not bool: raise TypeError('not a bool')")
            self.emit(indent, f"o.append(b'\\x01' if {expr} else b'\\x00')")
        elif kind == "int":
            self.emit(indent, f"o.append(_int({expr}))")
        elif kind == "long":
            self.emit(indent, f"o.append(_long({expr}))")
        elif kind in ("float", "double"):
            pack = "_FLOAT" if kind == "float" else "_DOUBLE"
            self.emit(indent, f"if type({expr}) is not float: raise TypeError('not a float')")
            self.emit(indent, f"o.append({pack}({expr}))")
        elif kind == "string":
            # Only a str has .encode() that returns bytes; fastavro takes any str.
            encoded, size = self.name("s"), self.name("n")
            self.emit(indent, f"{encoded} = {expr}.encode()")
            self.emit(indent, f"{size} = len({encoded})")
            count = f"_COUNTS[{size}] if {size} < {_SMALL} else _varint({size})"
            self.emit(indent, f"o.append({count})")
            self.emit(indent, f"o.append({encoded})")
        elif kind == "bytes":
            self.emit(indent, f"if type({expr}) is not bytes: raise TypeError('not bytes')")
            self.emit(indent, f"o.append(_long(len({expr}))); o.append({expr})")
        elif kind == "enum":
            index = self.constant({s: _long(i) for i, s in enumerate(schema["symbols"])})
            self.emit(indent, f"o.append({index}[{expr}])")
        elif kind == "array":
            item = self.name("i")
            self.emit(indent, f"if type({expr}) is not list: raise TypeError('not a list')")
            self.emit(indent, f"if {expr}:")
            self.emit(indent + 1, f"o.append(_long(len({expr})))")
            self.emit(indent + 1, f"for {item} in {expr}:")
            self.value(schema["items"], item, indent + 2)
            self.emit(indent, "o.append(b'\\x00')")
        elif kind == "map":
            key, item = self.name("k"), self.name("i")
            self.emit(indent, f"if type({expr}) is not dict: raise TypeError('not a dict')")
            self.emit(indent, f"if {expr}:")
            self.emit(indent + 1, f"o.append(_long(len({expr})))")
            self.emit(indent + 1, f"for {key}, {item} in {expr}.items():")
            self.value("string", key, indent + 2)
            self.value(schema["values"], item, indent + 2)
            self.emit(indent, "o.append(b'\\x00')")
        elif kind == "record":
            self.record(schema, expr, indent)
        else:  # fixed, a named reference left unexpanded
            raise Unsupported(str(kind))

    def timestamp(self, name: str, schema: dict[str, Any], expr: str, indent: int) -> None:
        """A timestamp, converted and encoded once per datetime: the records an event
        causes carry the same instant, and the conversion costs far more than a lookup."""
        memo = self.constant(_MEMOS.setdefault(name, {}))
        prepare, own = self.constant(LOGICAL_WRITERS[name]), self.constant(schema)
        written = self.name("t")
        self.emit(indent, f"{written} = {memo}.get({expr})")
        self.emit(indent, f"if {written} is None:")
        self.emit(indent + 1, f"{written} = _prepared({memo}, {expr}, {prepare}, {own})")
        self.emit(indent, f"o.append({written})")

    def record(self, schema: dict[str, Any], expr: str, indent: int) -> None:
        self.emit(indent, f"if type({expr}) is not dict: raise TypeError('not a dict')")
        for field in schema["fields"]:
            local = self.name("f")
            name = repr(field["name"])
            field_type = field["type"]
            if "default" in field:
                default = self.constant(field["default"])
                self.emit(indent, f"{local} = {expr}.get({name}, {default})")
            elif isinstance(field_type, list) and "null" in field_type:
                self.emit(indent, f"{local} = {expr}.get({name})")
            else:
                self.emit(indent, f"{local} = {expr}[{name}]")
            self.value(field_type, local, indent)

    def union(self, branches: list[Any], expr: str, indent: int) -> None:
        if len(branches) == 2 and "null" in branches:
            other = branches[1 - branches.index("null")]
            self.emit(indent, f"if {expr} is None:")
            self.emit(indent + 1, f"o.append({_long(branches.index('null'))!r})")
            self.emit(indent, "else:")
            self.emit(indent + 1, f"o.append({_long(branches.index(other))!r})")
            self.value(other, expr, indent + 1)
            return
        # Named branches, chosen by tuple notation ("name", value): the only unions the
        # contract has besides optional fields. Anything else raises: fastavro matches it.
        if not all(isinstance(b, dict) and b.get("type") == "record" for b in branches):
            raise Unsupported("union")
        self.emit(indent, f"if type({expr}) is not tuple: raise TypeError('untagged union')")
        for index, branch in enumerate(branches):
            keyword = "if" if index == 0 else "elif"
            self.emit(indent, f"{keyword} {expr}[0] == {branch['name']!r}:")
            self.emit(indent + 1, f"o.append({_long(index)!r})")
            inner = self.name("u")
            self.emit(indent + 1, f"{inner} = {expr}[1]")
            self.record(branch, inner, indent + 1)
        self.emit(indent, "else: raise TypeError('no such branch')")


def compile_writer(schema: Any) -> Writer | None:
    """An encoder of records of the parsed or plain ``schema`` onto a list of parts, or None
    when the schema has a type this module leaves to fastavro."""
    helpers = {
        "_long": _long,
        "_prepared": _prepared,
        "_int": _int,
        "_COUNTS": _COUNTS,
        "_varint": _varint,
        "_FLOAT": _FLOAT,
        "_DOUBLE": _DOUBLE,
    }
    writer: Writer | None = _Compiler().compiled(schema, "write(o, r)", "    return None", helpers)
    return writer
