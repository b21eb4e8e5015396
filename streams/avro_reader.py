"""Avro decoders compiled from a schema to plain Python, giving what fastavro's
``schemaless_reader`` gives for the same bytes.

fastavro's reader interprets the schema for every record. Every event is decoded twice
in a worker (the identity stage reads its first fields, the contact stage all of it),
and the sinks decode every command and audit entry: a schema compiled once to a
function that reads each field directly is faster (`make bench`, bench_spine, prints
both: 1.2-1.35x on a whole event through the serde, 1.4-1.7x on a CRM command).

The compiled function is the fast path only, for bytes written with the schema it was
compiled from. Whatever it cannot read (short or malformed bytes, a negative block
count, a byte that is no boolean) raises, and the caller reads those bytes with fastavro
instead, which decodes them or says what is wrong: the fast path never decides what is
valid. ``compile_reader`` returns None for a schema with a type it does not compile."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from fastavro.read import LOGICAL_READERS

from streams.avro_source import Source, Unsupported

Reader = Callable[[bytes, int], dict[str, Any]]

_FLOAT = struct.Struct("<f").unpack_from
_DOUBLE = struct.Struct("<d").unpack_from


class Unreadable(Exception):
    """Bytes the fast path does not read; fastavro reads them or refuses them."""


def _long(data: bytes, position: int) -> tuple[int, int]:
    """An Avro long (zig-zag, 7 bits a byte, low first) at ``position``, and the position
    after it."""
    shift = zigzag = 0
    while True:
        byte = data[position]
        position += 1
        zigzag |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (zigzag >> 1) ^ -(zigzag & 1), position
        shift += 7
        if shift > 63:
            raise Unreadable("a long of more than 10 bytes")


# The size a one-byte long holds, by its byte: -1 for a negative one, or a longer long.
_SIZES = tuple(-1 if c >= 0x80 or c & 1 else c >> 1 for c in range(256))


def _size(data: bytes, position: int) -> tuple[int, int]:
    size, position = _long(data, position)
    if size < 0:
        raise Unreadable("a negative size")
    return size, position


# Per logical type of an int or long (dates, times, timestamps: their conversion takes
# nothing from the schema): the first 10 bytes a value was read from -> the value
# converted (immutable: a datetime, date or time) and the size of its long.
_MEMOS: dict[str, dict[bytes, tuple[Any, int]]] = {}


def _converted(
    memo: dict[bytes, tuple[Any, int]], raw: bytes, convert: Any, schema: Any
) -> tuple[Any, int]:
    """The long at the start of ``raw`` converted, remembered by ``raw``: the bytes past
    the long do not change what it is."""
    n, size = _long(raw, 0)
    if len(memo) >= 4096:
        memo.clear()
    found = memo[raw] = (convert(n, schema, schema), size)
    return found


class _Compiler(Source):
    def long(self, target: str, indent: int) -> None:
        # A one-byte long read inline: most lengths, counts and indexes are.
        self.emit(indent, "c = b[p]")
        self.emit(indent, f"if c < 128: {target} = (c >> 1) ^ -(c & 1); p += 1")
        self.emit(indent, f"else: {target}, p = _long(b, p)")

    def size(self, target: str, indent: int) -> None:
        """A length or block count: not negative (fastavro reads negative block counts,
        which carry a byte size, itself). A one-byte size from a table: fewer steps."""
        self.emit(indent, f"{target} = _SIZES[b[p]]")
        self.emit(indent, f"if {target} < 0: {target}, p = _size(b, p)")
        self.emit(indent, "else: p += 1")

    def value(self, schema: Any, target: str, indent: int) -> None:
        """Lines that read a ``schema`` value into the local ``target``."""
        if isinstance(schema, list):
            self.union(schema, target, indent)
            return
        if isinstance(schema, str):
            schema = {"type": schema}
        kind = schema["type"]
        logical = schema.get("logicalType")
        if kind == "null":
            self.emit(indent, f"{target} = None")
        elif kind == "boolean":
            self.emit(indent, f"{target} = _BOOLEAN[b[p]]; p += 1")
        elif kind in ("int", "long") and LOGICAL_READERS.get(f"{kind}-{logical}"):
            self.logical(f"{kind}-{logical}", schema, target, indent)
            return
        elif kind in ("int", "long"):
            self.long(target, indent)
        elif kind in ("float", "double"):
            unpack, width = ("_FLOAT", 4) if kind == "float" else ("_DOUBLE", 8)
            self.emit(indent, f"{target} = {unpack}(b, p)[0]; p += {width}")
        elif kind in ("string", "bytes"):
            size = self.name("n")
            self.size(size, indent)
            self.emit(indent, f"e = p + {size}")
            self.emit(indent, "if e > L: raise Unreadable('short')")
            decode = ".decode()" if kind == "string" else ""
            self.emit(indent, f"{target} = b[p:e]{decode}; p = e")
        elif kind == "enum":
            index = self.name("n")
            self.size(index, indent)
            self.emit(indent, f"{target} = {self.constant(tuple(schema['symbols']))}[{index}]")
        elif kind == "array":
            count, item = self.name("n"), self.name("x")
            self.emit(indent, f"{target} = []")
            self.size(count, indent)
            self.emit(indent, f"while {count}:")
            self.emit(indent + 1, f"for _ in range({count}):")
            self.value(schema["items"], item, indent + 2)
            self.emit(indent + 2, f"{target}.append({item})")
            self.size(count, indent + 1)
        elif kind == "map":
            count, key, item = self.name("n"), self.name("k"), self.name("x")
            self.emit(indent, f"{target} = {{}}")
            self.size(count, indent)
            self.emit(indent, f"while {count}:")
            self.emit(indent + 1, f"for _ in range({count}):")
            self.value("string", key, indent + 2)
            self.value(schema["values"], item, indent + 2)
            self.emit(indent + 2, f"{target}[{key}] = {item}")
            self.size(count, indent + 1)
        elif kind == "record":
            self.record(schema, target, indent)
        else:  # fixed, a named reference left unexpanded
            raise Unsupported(str(kind))
        convert = LOGICAL_READERS.get(f"{kind}-{logical}") if logical else None
        if convert is not None:
            function, own = self.constant(convert), self.constant(schema)
            self.emit(indent, f"{target} = {function}({target}, {own}, {own})")

    def logical(self, name: str, schema: dict[str, Any], target: str, indent: int) -> None:
        """A timestamp (or date, time), read and converted once per bytes it is written
        as: an event's timestamps are read twice (identity and contact stage) and recur
        in what it causes, and reading the long and making the datetime cost far more
        than a lookup (2.4% of a worker)."""
        memo = self.constant(_MEMOS.setdefault(name, {}))
        convert, own = self.constant(LOGICAL_READERS[name]), self.constant(schema)
        self.emit(indent, "k = b[p:p + 10]")  # the long is in its first 10 bytes
        self.emit(indent, f"t = {memo}.get(k)")
        self.emit(indent, f"if t is None: t = _converted({memo}, k, {convert}, {own})")
        self.emit(indent, f"{target} = t[0]; p += t[1]")

    def record(self, schema: dict[str, Any], target: str, indent: int) -> None:
        fields = []
        for field in schema["fields"]:
            local = self.name("f")
            self.value(field["type"], local, indent)
            fields.append(f"{field['name']!r}: {local}")
        self.emit(indent, f"{target} = {{{', '.join(fields)}}}")

    def union(self, branches: list[Any], target: str, indent: int) -> None:
        index = self.name("u")
        self.size(index, indent)  # never negative either
        for n, branch in enumerate(branches):
            self.emit(indent, f"{'if' if n == 0 else 'elif'} {index} == {n}:")
            self.value(branch, target, indent + 1)
        self.emit(indent, "else: raise Unreadable('no such branch')")


def compile_reader(schema: Any) -> Reader | None:
    """A decoder of Avro bytes written with the parsed or plain record ``schema``, from a
    position on (past the framing), or None when the schema has a type this module
    leaves to fastavro."""
    helpers = {
        "_long": _long,
        "_converted": _converted,
        "_SIZES": _SIZES,
        "_size": _size,
        "_FLOAT": _FLOAT,
        "_DOUBLE": _DOUBLE,
        "_BOOLEAN": {0: False, 1: True},
        "Unreadable": Unreadable,
    }
    compiler = _Compiler()
    compiler.emit(1, "L = len(b)")
    reader: Reader | None = compiler.compiled(schema, "read(b, p)", "    return r", helpers)
    return reader
