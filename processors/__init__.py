"""Stream processors: pure functions of (state, event, time) run on Faust tables."""
