"""The observability files (Grafana dashboards, Prometheus scrape configuration and
alerts) against the code that exports the metrics, and against Prometheus's own tools.
The live proof, a real Prometheus scraping a running pipeline, is
tests/integration/test_observability.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from processors import lookup
from streams import metrics
from tests.observability import (
    ALERTS,
    BOUNDED_LABELS,
    PROMETHEUS,
    ROOT,
    SYNTHETIC,
    alert_queries,
    alert_rules,
    dashboard_queries,
    dashboards,
    grouping_labels,
    metric_names,
    panels,
)

# What the processes' /metrics serve: Switchboard's metrics (the runtime's among them),
# the caller lookup's (processors/lookup.py, served by its own process) and the process
# collector.
EXPOSITION = """
from prometheus_client import REGISTRY, generate_latest
import processors.worker
import processors.lookup
print(generate_latest(REGISTRY).decode())
"""
# Labels that every series has from Prometheus (job, instance) or from its histogram (le).
TARGET_LABELS = {"job", "instance", "le"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make infra-up` installs Debian's prometheus package")
    return subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )


@cache
def exposition() -> str:
    return subprocess.run(
        [sys.executable, "-c", EXPOSITION], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


@cache
def exported() -> dict[str, str]:
    """Every sample name a worker exports, with its metric's type."""
    names = {}
    for family in text_string_to_metric_families(exposition()):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("", "_sum", "_count"),
        }.get(family.type, ("",))
        for suffix in suffixes:
            names[family.name + suffix] = family.type
    return names


def switchboard_metrics() -> list[MetricWrapperBase]:
    return [
        m
        for module in (metrics, lookup)
        for m in vars(module).values()
        if isinstance(m, MetricWrapperBase)
    ]


def test_the_rules_pass_promtool_check() -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout


def test_each_alert_fires_on_its_trouble_and_not_on_look_alikes() -> None:
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())["tests"]
    alerts_tested = {
        case["alertname"]
        for test in cases
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts_tested == {rule["alert"] for rule in alert_rules()}


def test_the_scrape_configurations_are_valid_and_the_same_but_for_the_host() -> None:
    for name in ("prometheus.yml", "prometheus.docker.yml"):
        checked = promtool("check", "config", name)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    native = (PROMETHEUS / "prometheus.yml").read_text()
    docker = (PROMETHEUS / "prometheus.docker.yml").read_text()
    assert yaml.safe_load(docker) == yaml.safe_load(
        native.replace("127.0.0.1", "host.docker.internal")
    )
    jobs = {job["job_name"] for job in yaml.safe_load(native)["scrape_configs"]}
    assert jobs == {
        "switchboard-gateway",
        "switchboard-lookup",
        "switchboard-worker",
        "switchboard-sink",
    }


def test_every_metric_a_dashboard_or_an_alert_reads_is_exported_by_the_code() -> None:
    served = exported()
    missing = {
        f"{query.where}: {name}"
        for query in [*dashboard_queries(), *alert_queries()]
        for name in metric_names(query.expr)
        if name not in served and name not in SYNTHETIC
    }
    assert not missing, "read but not exported:\n" + "\n".join(sorted(missing))


def test_every_label_a_query_groups_by_is_one_its_metrics_have() -> None:
    labels: dict[str, set[str]] = {}
    for metric in switchboard_metrics():
        for suffix in ("", "_total", "_bucket", "_sum", "_count"):
            labels[metric._name + suffix] = set(metric._labelnames)
    wrong = []
    for query in [*dashboard_queries(), *alert_queries()]:
        names = metric_names(query.expr)
        have = set().union(*(labels.get(n, set()) for n in names)) | TARGET_LABELS
        wrong += [f"{query.where}: by {label}" for label in grouping_labels(query.expr) - have]
    assert not wrong, "\n".join(wrong)


def test_switchboard_metrics_follow_the_naming_conventions_and_bounded_labels() -> None:
    def name(line: str) -> str:
        return line.split()[2] if line.startswith("#") else line.split("{")[0].split()[0]

    lines = [line for line in exposition().splitlines() if line.strip()]
    ours = [line for line in lines if name(line).startswith("switchboard_")]
    linted = subprocess.run(
        ["promtool", "check", "metrics"],
        input="\n".join(ours) + "\n",
        capture_output=True,
        text=True,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    for metric in switchboard_metrics():
        assert metric._name.startswith("switchboard_")
        assert set(metric._labelnames) <= BOUNDED_LABELS, metric._name


def test_every_panel_says_what_it_answers_and_alerts_name_a_dashboard() -> None:
    uids = set()
    for name, board in dashboards().items():
        uids.add(board["uid"])
        assert board["title"] and board["description"], name
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel.get("description"), f"{name}: {panel['title']} has no description"
            assert panel["datasource"]["uid"] == "prometheus", f"{name}: {panel['title']}"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
    provisioned = yaml.safe_load(
        (ROOT / "infra/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert provisioned["datasources"][0]["uid"] == "prometheus"
    for rule in alert_rules():
        assert rule["annotations"]["dashboard"] in uids, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]


def test_the_journeys_dashboard_shows_every_outcome_the_worker_counts_from_zero() -> None:
    from prometheus_client import REGISTRY

    from processors.journeys import OUTCOMES
    from processors.workflows.library import load_library
    from processors.workflows.runs import declare_workflows

    board = dashboards()["journeys.json"]
    read = " ".join(t["expr"] for p in panels(board) for t in p.get("targets", []))
    outcomes = ("entered", *OUTCOMES, "stalled")
    for outcome in outcomes:
        assert f'outcome="{outcome}"' in read, outcome
    assert "switchboard_journey_diversions_total" in read
    assert "switchboard_journey_step_seconds_bucket" in read
    # Every step of the shipped workflows exports each outcome at zero from the start, so
    # the funnel's first increase is seen (streams.metrics).
    library = load_library()
    declare_workflows(library)
    for flow in library.workflows():
        for step in flow.steps:
            for outcome in outcomes:
                labels = {"workflow": flow.name, "step": step.id, "outcome": outcome}
                value = REGISTRY.get_sample_value("switchboard_journey_steps_total", labels)
                assert value is not None, labels
