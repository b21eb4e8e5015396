"""The streaming spine: settings, topic catalog, Avro serde, dead letters, metrics, the
workers' runtime (engine, tables, web) and the ``switchboard`` CLI."""
