"""The streaming spine: settings, topic catalog, Avro serde, dead letters, metrics, the
Faust app factory and the ``switchboard`` CLI."""
