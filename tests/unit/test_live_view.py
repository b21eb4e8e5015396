"""``switchboard top`` reads real /metrics endpoints over HTTP and turns two scrapes into
rates, per-group lag and a terminal view."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge, start_http_server
from rich.console import Console

from streams import live, metrics
from tests.conftest import free_port


def test_two_scrapes_become_rates_lag_counts_each_partition_once_and_down_shows() -> None:
    mine, other, nobody = free_port(), free_port(), free_port()
    metrics.serve(mine)
    # A second member of the same group, reporting the same partition (a higher value).
    registry = CollectorRegistry()
    lag = Gauge(
        "switchboard_consumer_lag_records", "", ["group", "topic", "partition"], registry=registry
    )
    start_http_server(other, addr="127.0.0.1", registry=registry)
    urls = [f"http://127.0.0.1:{port}/metrics" for port in (mine, other, nobody)]

    events = metrics.SOURCE_EVENTS.labels(source="live-test", event_type="FORM_SUBMITTED")
    delivered = metrics.SINK_DELIVERIES.labels(destination="live-crm", outcome="delivered")
    metrics.CONSUMER_LAG.labels("live-group", "t", "0").set(5)
    lag.labels("live-group", "t", "0").set(7)
    lag.labels("live-group", "t", "1").set(3)
    events.inc(4)
    before = live.read(urls)
    events.inc(20)
    delivered.inc(10)
    time.sleep(0.5)
    now = live.read(urls)

    figures = live.view(before, now)
    per_s, refused, count = figures.sources["live-test"]
    elapsed = now.at - before.at
    assert per_s == 20 / elapsed and refused == 0 and count == 24
    assert figures.sinks["live-crm"][0] == 10 / elapsed
    assert figures.lag["live-group"] == 7 + 3
    assert figures.up == {urls[0]: True, urls[1]: True, urls[2]: False}

    console = Console(record=True, width=140)
    console.print(live.render(figures))
    text = console.export_text()
    assert "live-test" in text and f"{20 / elapsed:.1f}" in text
    assert "live-group" in text and f"{urls[2]} down" in text


def test_the_first_view_has_totals_and_no_rates() -> None:
    port = free_port()
    metrics.serve(port)
    metrics.SOURCE_EVENTS.labels(source="live-first", event_type="CALL_COMPLETED").inc(3)
    figures = live.view(None, live.read([f"http://127.0.0.1:{port}/metrics"]))
    assert figures.sources["live-first"] == (0.0, 0.0, 3.0)
