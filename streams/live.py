"""``switchboard top``: a live view of a running pipeline in the terminal, read from the
same ``/metrics`` endpoints Prometheus scrapes: what comes in per source, what the
workers decide, SLA breaches, workflow runs, what the sinks deliver, and how far behind
each consumer group is. Rates are the change between two scrapes."""

from __future__ import annotations

import time
import urllib.request
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def scrape(url: str, timeout: float = 2.0) -> Samples | None:
    """Every sample ``url`` serves, or None when it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return None
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@dataclass(frozen=True)
class Reading:
    """One scrape of every target, at ``at`` (monotonic seconds)."""

    at: float
    targets: Mapping[str, Samples | None]

    def sum_by(self, name: str, label: str | None = None, **match: str) -> dict[str, float]:
        """``name``'s samples that carry ``match``, summed over targets by ``label``."""
        found: dict[str, float] = defaultdict(float)
        for samples in self.targets.values():
            for (sample, labels), value in (samples or {}).items():
                if sample != name:
                    continue
                have = dict(labels)
                if all(have.get(k) == v for k, v in match.items()):
                    found[have.get(label, "") if label else ""] += value
        return dict(found)

    def total(self, name: str, **match: str) -> float:
        return sum(self.sum_by(name, **match).values())

    def lag_by_group(self) -> dict[str, float]:
        """Records behind per consumer group. Every member reports the whole group, so
        each partition counts once: the max over targets."""
        partitions: dict[tuple[str, str, str], float] = {}
        for samples in self.targets.values():
            for (sample, labels), value in (samples or {}).items():
                if sample == "switchboard_consumer_lag_records":
                    have = dict(labels)
                    key = (have["group"], have["topic"], have["partition"])
                    partitions[key] = max(partitions.get(key, 0.0), value)
        groups: dict[str, float] = defaultdict(float)
        for (group, _, _), value in partitions.items():
            groups[group] += value
        return dict(groups)


def read(urls: Iterable[str], timeout: float = 2.0) -> Reading:
    """Every target at once: one slow process delays the reading by its own wait, not by
    everyone's."""
    targets = list(urls)
    with ThreadPoolExecutor(max(len(targets), 1)) as pool:
        samples = list(pool.map(lambda url: scrape(url, timeout), targets))
    return Reading(time.monotonic(), dict(zip(targets, samples, strict=True)))


@dataclass
class View:
    """The figures of one refresh: rates per second over the last interval, totals since
    each process started."""

    up: dict[str, bool] = field(default_factory=dict)
    sources: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    routed: tuple[float, float] = (0.0, 0.0)
    breaches: tuple[float, float] = (0.0, 0.0)
    timers_pending: dict[str, float] = field(default_factory=dict)
    workflows: tuple[float, float, float] = (0.0, 0.0, 0.0)
    sinks: dict[str, tuple[float, float, float, bool]] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)
    dead_letters: tuple[float, float] = (0.0, 0.0)


def view(before: Reading | None, now: Reading) -> View:
    """What changed from ``before`` to ``now`` (no rates on the first reading)."""
    elapsed = now.at - before.at if before is not None else 0.0

    def rates(name: str, label: str | None = None, **match: str) -> dict[str, float]:
        current = now.sum_by(name, label, **match)
        if before is None or elapsed <= 0:
            return {key: 0.0 for key in current}
        earlier = before.sum_by(name, label, **match)
        # A restarted process starts again from zero: no negative rate.
        return {k: max(v - earlier.get(k, 0.0), 0.0) / elapsed for k, v in current.items()}

    def rate(name: str, **match: str) -> float:
        return sum(rates(name, **match).values())

    published = now.sum_by("switchboard_source_events_total", "source")
    published_rate = rates("switchboard_source_events_total", "source")
    rejected_rate = rates("switchboard_source_rejected_total", "source")
    sources = {
        source: (published_rate.get(source, 0.0), rejected_rate.get(source, 0.0), count)
        for source, count in published.items()
    }
    for source, refused in rejected_rate.items():
        sources.setdefault(source, (0.0, refused, 0.0))
    delivered = rates("switchboard_sink_deliveries_total", "destination", outcome="delivered")
    retried = rates("switchboard_sink_retries_total", "destination")
    dead = now.sum_by("switchboard_sink_deliveries_total", "destination", outcome="dead_lettered")
    open_ = now.sum_by("switchboard_sink_circuit_open", "destination")
    sinks = {
        d: (delivered.get(d, 0.0), retried.get(d, 0.0), dead.get(d, 0.0), open_.get(d, 0.0) > 0)
        for d in sorted({*delivered, *retried, *dead, *open_})
    }
    return View(
        up={url: samples is not None for url, samples in now.targets.items()},
        sources=dict(sorted(sources.items())),
        stages=rates("switchboard_events_total", "stage"),
        routed=(
            rate("switchboard_routing_decisions_total"),
            now.total("switchboard_assignments_total"),
        ),
        breaches=(
            rate("switchboard_sla_breaches_total"),
            now.total("switchboard_sla_breaches_total"),
        ),
        timers_pending=now.sum_by("switchboard_timers_pending", "kind"),
        workflows=(
            rate("switchboard_workflow_enrolments_total"),
            rate("switchboard_workflow_exits_total"),
            now.sum_by("switchboard_timers_pending", "kind").get("workflow", 0.0),
        ),
        sinks=sinks,
        lag=dict(sorted(now.lag_by_group().items())),
        dead_letters=(
            rate("switchboard_dead_letters_total"),
            now.total("switchboard_dead_letters_total"),
        ),
    )


def render(figures: View) -> RenderableType:
    up = ", ".join(
        f"[green]{url}[/]" if ok else f"[red]{url} down[/]" for url, ok in figures.up.items()
    )
    sources = Table("source", "events/s", "refused/s", "events", title="In", title_justify="left")
    for source, (per_s, refused, count) in figures.sources.items():
        sources.add_row(source, f"{per_s:.1f}", f"{refused:.1f}", f"{count:.0f}")
    decisions = Table("", "", title="Decisions", title_justify="left", show_header=False)
    for stage, per_s in sorted(figures.stages.items()):
        decisions.add_row(f"{stage} stage", f"{per_s:.1f} events/s")
    decisions.add_row("routing", f"{figures.routed[0]:.1f}/s, {figures.routed[1]:.0f} assigned")
    decisions.add_row(
        "SLA breaches", f"{figures.breaches[0] * 60:.1f}/min, {figures.breaches[1]:.0f} in all"
    )
    decisions.add_row(
        "timers pending", ", ".join(f"{k} {v:.0f}" for k, v in figures.timers_pending.items())
    )
    entered, left, waiting = figures.workflows
    decisions.add_row(
        "workflow runs", f"{entered:.1f}/s in, {left:.1f}/s out, {waiting:.0f} waiting"
    )
    dead_rate, dead_total = figures.dead_letters
    decisions.add_row("dead letters", f"{dead_rate:.1f}/s, {dead_total:.0f} in all")
    sinks = Table(
        "destination",
        "delivered/s",
        "retries/s",
        "dead-lettered",
        "circuit",
        title="Out",
        title_justify="left",
    )
    for destination, (per_s, retries, dead, is_open) in figures.sinks.items():
        circuit = "[red]open[/]" if is_open else "closed"
        sinks.add_row(destination, f"{per_s:.1f}", f"{retries:.1f}", f"{dead:.0f}", circuit)
    lag = Table("consumer group", "records behind", title="Lag", title_justify="left")
    for group, records in figures.lag.items():
        lag.add_row(group, f"{records:.0f}")
    return Group(f"scraping {up}", sources, decisions, sinks, lag)


def watch(urls: list[str], interval: float = 1.0, window: int = 5) -> None:
    """Refresh the view every ``interval`` seconds until Ctrl-C, with rates over the last
    ``window`` intervals (one interval alone makes a 20/s feed jump between 18 and 22)."""
    readings = deque([read(urls)], maxlen=window + 1)
    with Live(render(view(None, readings[0])), auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                readings.append(read(urls))
                live.update(render(view(readings[0], readings[-1])), refresh=True)
        except KeyboardInterrupt:
            pass
