"""The proof of the dashboards and alerts: a real Prometheus (Debian's package) scrapes a
running pipeline (gateway, two workers, the caller lookup, CRM and notification sinks)
that the load generator feeds, with the shipped scrape jobs and alert rules. Every query
of every dashboard and every alert's expression then goes through Prometheus's HTTP API,
and must be valid and return series."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.schema_registry import SchemaRegistryClient

from connectors.sources.loadgen import run_load
from streams.clock import FileClock
from streams.registry import register_catalog
from streams.settings import Settings
from streams.topics import CONTACT_EVENTS, ensure_topics
from tests.conftest import ROOT, free_port
from tests.kafka_helpers import (
    LOOKUP_TOKEN,
    get,
    producer,
    running_gateway,
    running_lookup,
    running_sink,
    running_worker,
    settings_env,
    wait_for,
)
from tests.observability import (
    ALERTS,
    BOUNDED_LABELS,
    PROMETHEUS,
    alert_queries,
    as_promql,
    dashboard_queries,
    non_filtering,
)
from tests.webhooks import SECRETS

pytestmark = pytest.mark.integration

# Labels Prometheus adds (job, instance), the shipped config adds (sink), histograms have (le).
SCRAPE_LABELS = {"__name__", "job", "instance", "sink", "le"}
PERSONAL = [
    re.compile(r"@"),  # an e-mail address
    re.compile(r"^\+?[\d\s().-]{7,}$"),  # a phone number
    re.compile(r"^c-[0-9a-f]{20}$"),  # a contact id
]


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, url: str) -> None:
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            answer = json.loads(get(f"{self.url}/api/v1/{path}?{query}", timeout=30))
        except OSError as exc:  # 400 and 422 carry the error in their body
            body = getattr(exc, "read", lambda: b"")()
            answer = json.loads(body) if body else {"status": "error", "error": str(exc)}
        return answer

    def query(self, expr: str) -> tuple[list[dict[str, Any]] | None, str]:
        """(series, "") or (None, Prometheus's error)."""
        answer = self.api("query", query=expr)
        if answer["status"] != "success":
            return None, f"{answer.get('errorType')}: {answer.get('error')}"
        return answer["data"]["result"], ""

    def value(self, expr: str) -> float:
        series, error = self.query(expr)
        assert series is not None, error
        return sum(float(s["value"][1]) for s in series)


@contextmanager
def running_prometheus(
    targets: dict[str, list[tuple[str, dict[str, str]]]], tmp_path: Path
) -> Iterator[Prometheus]:
    """Prometheus on the shipped scrape jobs and alert rules, each job pointed at
    ``targets`` (address and labels), scraping and evaluating every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: `make infra-up` installs Debian's prometheus package")
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ALERTS)]
    for job in config["scrape_configs"]:
        job["static_configs"] = [
            {"targets": [address], "labels": labels} for address, labels in targets[job["job_name"]]
        ]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                get(f"{prometheus.url}/-/ready", timeout=1)
            except OSError:
                return False
            return True

        wait_for(ready, "Prometheus to start", 30)
        yield prometheus
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def load_roster(settings: Settings) -> None:
    roster = ROOT / "processors" / "rules" / "roster.example.yaml"
    subprocess.run(
        [sys.executable, "-m", "streams.cli", "roster", "load", str(roster)],
        env=settings_env(settings),
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_every_dashboard_and_alert_query_returns_series_from_a_live_pipeline(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    clock = tmp_path / "clock"
    start = datetime.now(UTC).replace(microsecond=0)
    FileClock.write(clock, start)
    lookup_port = free_port()
    settings = settings.model_copy(
        update={
            "gateway_port": free_port(),
            "lookup_port": lookup_port,
            "lookup_url": f"http://127.0.0.1:{lookup_port}",
            "clock": f"file:{clock}",
            "crm_database_url": f"sqlite:///{tmp_path / 'crm.db'}",
            "sink_ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "notify_outbox": tmp_path / "outbox.jsonl",
        }
    )
    # Two workers, each with its own /metrics: the dashboards must add them up right.
    second = settings.model_copy(
        update={"web_port": free_port(), "data_dir": tmp_path / "second-worker"}
    )
    crm = settings.model_copy(update={"metrics_port": free_port()})
    notify = settings.model_copy(update={"metrics_port": free_port()})
    ensure_topics(settings)
    register_catalog(registry, settings)
    load_roster(settings)
    local = "127.0.0.1"
    targets: dict[str, list[tuple[str, dict[str, str]]]] = {
        "switchboard-gateway": [(f"{local}:{settings.gateway_port}", {})],
        "switchboard-lookup": [(f"{local}:{settings.lookup_port}", {})],
        "switchboard-worker": [
            (f"{local}:{settings.web_port}", {}),
            (f"{local}:{second.web_port}", {}),
        ],
        "switchboard-sink": [
            (f"{local}:{crm.metrics_port}", {"sink": "crm"}),
            (f"{local}:{notify.metrics_port}", {"sink": "notify"}),
        ],
    }
    secrets = {name: value.encode() for name, value in SECRETS.items()}

    with (
        running_gateway(settings, tmp_path / "gateway.log", SECRETS),
        running_worker(settings, tmp_path / "worker.log"),
        running_worker(second, tmp_path / "second-worker.log"),
        running_lookup(settings, tmp_path / "lookup.log"),
        running_sink(crm, "crm", tmp_path / "sink-crm.log"),
        running_sink(notify, "notify", tmp_path / "sink-notify.log"),
        running_prometheus(targets, tmp_path) as prometheus,
    ):
        report = asyncio.run(run_load(settings, rate=40, duration=15, seed=8, secrets=secrets))
        assert report.statuses == {"200": report.sent}
        # A stranger and a malformed number: the lookup's outcomes and answer time.
        for query, status in (("phone=%2B14155550199", 404), ("phone=12345", 400)):
            asked = urllib.request.Request(
                f"http://{local}:{settings.lookup_port}/v1/contacts/lookup?{query}",
                headers={"Authorization": f"Bearer {LOOKUP_TOKEN}"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(asked, timeout=5)
            assert refused.value.code == status
        # Three days on: the SLA clocks breach and the workflow waits fire.
        FileClock.write(clock, start + timedelta(days=3))
        # One record no stage can read: the dead-letter alert must catch the first one.
        poison = producer(settings)
        poison.produce(CONTACT_EVENTS.full_name(settings), key=b"poison", value=b"not avro")
        assert poison.flush(30) == 0

        def alert_firing() -> bool:
            alerts = prometheus.api("alerts")["data"]["alerts"]
            return any(
                a["labels"]["alertname"] == "SwitchboardDeadLetters"
                and a["labels"]["stage"] == "identity"
                and a["state"] == "firing"
                for a in alerts
            )

        wait_for(lambda: prometheus.value('sum(up{job=~"switchboard-.*"})') == 6, "6 targets up")
        wait_for(lambda: prometheus.value("sum(switchboard_sla_breaches_total)") > 0, "breaches")
        wait_for(alert_firing, "SwitchboardDeadLetters to fire on the poison record", 60)

        flowing = {
            "events published": "sum(switchboard_source_events_total)",
            "events decided": 'sum(switchboard_events_total{stage="contact"})',
            "new leads": "sum(switchboard_contacts_created_total)",
            "assignments": "sum(switchboard_assignments_total)",
            "workflow enrolments": "sum(switchboard_workflow_enrolments_total)",
            "timers fired": "sum(switchboard_timers_fired_total)",
            "deliveries": 'sum(switchboard_sink_deliveries_total{outcome="delivered"})',
            "records sent": "sum(switchboard_records_sent_total)",
            "measured lag": "count(switchboard_consumer_lag_records)",
            "lookups answered": 'sum(switchboard_lookups_total{outcome="unknown"})',
            "lookup ready": "sum(switchboard_lookup_ready)",
        }
        idle = [what for what, expr in flowing.items() if prometheus.value(expr) <= 0]
        assert not idle, f"nothing measured for: {idle}"

        # Each worker measures its whole group's lag: every partition twice, once per
        # instance, which the dashboards' max by (group, topic, partition) makes one.
        worker_lag = 'switchboard_consumer_lag_records{job="switchboard-worker"}'
        reporters, _ = prometheus.query(f"count by (group, topic, partition) ({worker_lag})")
        assert reporters and {s["value"][1] for s in reporters} == {"2"}

        failures = []
        queries = [(q.where, as_promql(q.expr)) for q in dashboard_queries()]
        queries += [(q.where, non_filtering(q.expr)) for q in alert_queries()]
        for where, expr in queries:
            series, error = prometheus.query(expr)
            if series is None:
                failures.append(f"{where}: invalid: {error}\n    {expr}")
            elif not series:
                failures.append(f"{where}: no series\n    {expr}")
        assert not failures, "\n".join(failures)

        # Bounded labels only: never a contact id, an e-mail or a phone number.
        found = prometheus.api("series", **{"match[]": '{__name__=~"switchboard_.*"}'})["data"]
        assert found
        for series in found:
            assert set(series) <= BOUNDED_LABELS | SCRAPE_LABELS, series
            for label, value in series.items():
                if label not in ("instance", "le"):
                    assert not any(p.search(value) for p in PERSONAL), series
