"""A non-worker process serves its metrics over real HTTP on /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

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


def _exposed(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_labelled_updates_export_what_prometheus_client_s_own_would() -> None:
    """labelled() swaps a child's values for lock-free ones and bisects its buckets: the
    exported series must be the ones the plain calls give, bounds hit exactly included."""
    amounts = [0.0, 0.01, 0.0100001, 0.5, 1, 2.5, 3600, 3600.5, 1e9, 0.25]
    exposed = []
    for fast in (False, True):
        registry = CollectorRegistry()
        counter = Counter("t_events_total", "t", ["stage"], registry=registry)
        histogram = Histogram(
            "t_age_seconds",
            "t",
            ["stage"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
        )
        counter.labels("a").inc()  # before labelled() takes the child over
        histogram.labels("a").observe(0.3)
        for amount in amounts:
            if fast:
                metrics.labelled(counter, "a").inc()
                metrics.labelled(counter, "b").inc(2)
                metrics.labelled(histogram, "a").observe(amount)
            else:
                counter.labels("a").inc()
                counter.labels("b").inc(2)
                histogram.labels("a").observe(amount)
        counter.labels("a").inc()  # and after
        exposed.append(_exposed(registry))
    assert exposed[0] == exposed[1]
