"""What the observability tests share: the PromQL Switchboard ships (every query of the
Grafana dashboards and every alert rule) with the few rewrites needed to run one outside
Grafana or without its threshold, and the label names a metric may have."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "infra" / "grafana" / "dashboards"
PROMETHEUS = ROOT / "infra" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"

# Grafana's built-in variables, as Grafana would fill them for a short time range.
RATE_INTERVAL = "1m"
RANGE = "5m"

# Bounded label sets only: never a contact id, an e-mail or a phone number.
BOUNDED_LABELS = {
    "stage",
    "event_type",
    "source",
    "status",
    "reason",
    "destination",
    "outcome",
    "policy",
    "level",
    "kind",
    "rule",
    "workflow",
    "exit",
    "decision",
    "error_type",
    "group",
    "topic",
    "partition",
    "table",
    "band",
    "rep",
    "step",
}
# Added by Prometheus itself, not by any exporter.
SYNTHETIC = {"up"}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_NAME = re.compile(r"(?<![\w.$])[a-zA-Z_:][\w:]*+(?!\s*\()")
_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")


@dataclass(frozen=True)
class Query:
    where: str
    expr: str


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # inside a collapsed row
    return found


def dashboard_queries() -> list[Query]:
    return [
        Query(f"{name}: {panel['title']} [{target['refId']}]", target["expr"])
        for name, board in dashboards().items()
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_queries() -> list[Query]:
    return [Query(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]


def as_promql(expr: str) -> str:
    """A dashboard's query with Grafana's variables filled in."""
    return expr.replace("$__rate_interval", RATE_INTERVAL).replace("$__range", RANGE)


def non_filtering(expr: str) -> str:
    """``expr`` with ``bool`` after each comparison, so it answers 0 or 1 for every series
    it compares instead of dropping those under the threshold: an alert's expression
    that returns series on a healthy pipeline, which measures the same things."""
    out: list[str] = []
    depth, i = 0, 0
    while i < len(expr):
        quoted = _STRING.match(expr, i)
        if quoted:
            out.append(quoted.group())
            i = quoted.end()
            continue
        char = expr[i]
        depth += {"{": 1, "}": -1}.get(char, 0)
        operator = _COMPARISON.match(expr, i) if depth == 0 else None
        if operator and not expr.startswith("=~", i) and not expr.startswith("!~", i):
            out.append(operator.group())
            i = operator.end()
            if not expr[i:].lstrip().startswith("bool"):
                out.append(" bool")
            continue
        out.append(char)
        i += 1
    return "".join(out)


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` reads (not its functions, keywords or label names)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _NAME.findall(text) if name not in KEYWORDS}


def grouping_labels(expr: str) -> set[str]:
    """The labels ``expr`` groups or matches by (by, without, on, ignoring, ...)."""
    text = _STRING.sub('""', expr)
    return {
        label.strip()
        for labels in _GROUPING.findall(text)
        for label in labels.split(",")
        if label.strip()
    }
