"""Stream processors: pure functions of (state, event, time), run on the workers' tables
(streams.engine). Their commands (what talks to Kafka, a worker or a terminal for them)
live in processors.commands."""
