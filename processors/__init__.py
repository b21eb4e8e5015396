"""Stream processors: pure functions of (state, event, time), run on the workers' tables
(streams.engine)."""
