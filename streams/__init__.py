"""The streaming spine: settings, topic catalog, Avro serde, dead letters, metrics, the
workers' runtime (engine, tables, web), the ``switchboard`` root command and the spine's own
commands."""
