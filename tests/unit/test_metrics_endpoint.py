"""A non-worker process serves its metrics over real HTTP on /metrics."""

from __future__ import annotations

from streams import metrics
from streams.dlq import dead_letter
from tests.conftest import free_port
from tests.kafka_helpers import get


def test_serve_exposes_the_shared_metrics_on_slash_metrics() -> None:
    port = free_port()
    metrics.serve(port)
    dead_letter(stage="metrics-test", error="bad input", value=b"x", source="unit")
    body = get(f"http://127.0.0.1:{port}/metrics")
    assert 'switchboard_dead_letters_total{error_type="Rejected",stage="metrics-test"} 1.0' in body
    assert "# TYPE switchboard_event_age_seconds histogram" in body
