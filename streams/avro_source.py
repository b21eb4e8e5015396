"""What the compiled Avro writers and readers (streams.avro_writer, streams.avro_reader)
share: the source of one function built line by line from a record schema, with the
values it refers to, made into the function once."""

from __future__ import annotations

from typing import Any

from fastavro.schema import expand_schema


class Unsupported(Exception):
    """A schema construct a compiler leaves to fastavro."""


class Source:
    """A function's body: lines, the local names it makes, the constants it uses. A
    compiler adds ``record``, the lines for a whole record held in a local name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {}
        self._names = 0

    def name(self, prefix: str) -> str:
        """A new local name."""
        self._names += 1
        return f"{prefix}{self._names}"

    def constant(self, value: Any) -> str:
        """The name the function reads ``value`` by."""
        name = self.name("K")
        self.constants[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def function(self, signature: str, last: str, helpers: dict[str, Any]) -> Any:
        """``def signature:`` with the body, then ``last``, compiled with ``helpers``
        and the constants in its globals."""
        source = f"def {signature}:\n" + "\n".join([*self.lines, last]) + "\n"
        namespace: dict[str, Any] = {**helpers, **self.constants}
        exec(compile(source, f"<avro {signature}>", "exec"), namespace)
        return namespace[signature.partition("(")[0]]

    def record(self, schema: dict[str, Any], target: str, indent: int) -> None:
        raise NotImplementedError

    def compiled(
        self, schema: Any, signature: str, last: str, helpers: dict[str, Any]
    ) -> Any | None:
        """The function for records of the parsed or plain ``schema`` (in the local
        ``r``), or None when it is no record or has a type this compiler leaves to
        fastavro."""
        expanded = expand_schema(schema)
        if not isinstance(expanded, dict) or expanded.get("type") != "record":
            return None
        try:
            self.record(expanded, "r", 1)
        except Unsupported:
            return None
        return self.function(signature, last, helpers)
