"""Prometheus metrics shared by every component. Names follow Prometheus conventions
(``switchboard_`` prefix, base units, ``_total`` counters) and labels are bounded sets
only: never a contact id, e-mail or phone.

Each process exposes one ``/metrics``: workers on their web port (streams.web), the
gateway on its own port, sinks through :func:`serve`.
Several processes of one kind each have their own port; Prometheus tells them apart by
``instance``, and the dashboards sum over it.

Counters and histograms whose label values are known at start (policies, workflows,
destinations, sources) are declared at zero then (:func:`declare`): a series that is born
at 1 hides its first increment from ``rate()`` and ``increase()``, so the first dead
letter would raise no alert."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any, overload

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

EVENTS = Counter(
    "switchboard_events_total",
    "Events a stage has accepted and processed.",
    ["stage", "event_type", "source"],
)
DEAD_LETTERS = Counter(
    "switchboard_dead_letters_total",
    "Inputs sent to the dead-letter topic, by the stage that gave up and the error type.",
    ["stage", "error_type"],
)
EVENT_AGE = Histogram(
    "switchboard_event_age_seconds",
    "Time from an event's arrival (its received_time, when a source connector took it) "
    "until a stage decided on it. Not event_time: a backfill's would swamp it.",
    ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
)

GATEWAY_REQUESTS = Counter(
    "switchboard_gateway_requests_total",
    "Webhook requests answered by the gateway, by source and HTTP status.",
    ["source", "status"],
)
GATEWAY_SECONDS = Histogram(
    "switchboard_gateway_request_seconds",
    "Time from a webhook request's arrival to its answer (including the Kafka write).",
    ["source"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SOURCE_EVENTS = Counter(
    "switchboard_source_events_total",
    "Canonical events a source connector published to Kafka.",
    ["source", "event_type"],
)
SOURCE_PUBLISH_SECONDS = Histogram(
    "switchboard_source_publish_seconds",
    "Time a source connector waited for Kafka to acknowledge (acks=all) a request's events.",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
SOURCE_DELAY = Histogram(
    "switchboard_source_delay_seconds",
    "From an event's event_time (the provider's clock) to its arrival at the gateway: how "
    "late a provider delivers, its retries included. Added to switchboard_event_age_seconds "
    "it is the time from the event itself to a decision.",
    ["source"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)
SOURCE_REJECTED = Counter(
    "switchboard_source_rejected_total",
    "Inputs a source connector refused, by reason (bad_signature, stale_timestamp, "
    "malformed_body, invalid_payload, too_large, kafka_unavailable).",
    ["source", "reason"],
)

SOURCE_LAST_EVENT = Gauge(
    "switchboard_source_last_event_timestamp_seconds",
    "When a source last published an event (Unix time); the gateway's start until the "
    "source's first, so a source that never speaks is noticed too.",
    ["source"],
)

CONSUMER_LAG = Gauge(
    "switchboard_consumer_lag_records",
    "Records of a partition its consumer group has not committed yet: the partition's "
    "end (read_committed) minus the group's committed offset. Measured from Kafka by each "
    "member of the group, so a stuck consumer's lag still grows. Offsets count "
    "transaction markers: a caught-up partition written in transactions reads one per "
    "producer whose last transaction wrote to it.",
    ["group", "topic", "partition"],
)
TABLE_KEYS = Gauge(
    "switchboard_table_keys",
    "Keys a worker holds in a table, for its active and standby partitions: what its "
    "memory (memory://) or disk (rocksdb://, an estimate) keeps.",
    ["table"],
)
RECORDS_SENT = Counter(
    "switchboard_records_sent_total",
    "Records a worker wrote in its committed transactions (outputs, changelogs, dead letters), "
    "by topic.",
    ["topic"],
)
CHECKPOINT_SECONDS = Histogram(
    "switchboard_checkpoint_seconds",
    "Time a worker's checkpoint takes: changelogs, input offsets and the transaction's commit.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CHECKPOINT_RECORDS = Histogram(
    "switchboard_checkpoint_records",
    "Input records a worker's checkpoint commits at once.",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
)
TRANSACTIONS_ABORTED = Counter(
    "switchboard_transactions_aborted_total",
    "Worker transactions aborted (their input is processed again from the last checkpoint).",
)
REBALANCES = Counter(
    "switchboard_rebalances_total",
    "Partition assignments a worker received (at start and on each rebalance).",
)
RESTORED_RECORDS = Counter(
    "switchboard_table_restored_records_total",
    "Changelog records a worker read to restore its tables, by table.",
    ["table"],
)
CONTACTS_CREATED = Counter(
    "switchboard_contacts_created_total",
    "Contacts seen for the first time (new leads), by the source system of their first event.",
    ["source"],
)
BAND_ENTRIES = Counter(
    "switchboard_score_band_entries_total",
    "Contacts that entered a score band (a first score included), by band.",
    ["band"],
)
ROUTING_DECISIONS = Counter(
    "switchboard_routing_decisions_total",
    "Leads the router decided on, by routing rule (none: no rule matched) and outcome "
    "(assigned, held, unassigned).",
    ["rule", "outcome"],
)
ASSIGNMENTS = Counter(
    "switchboard_assignments_total",
    "Leads assigned to a rep by the router, by rep id (the roster's, never an address).",
    ["rep"],
)

ENRICHMENTS = Counter(
    "switchboard_enrichments_total",
    "Contacts the enrichment connector published a CONTACT_ENRICHED event for, by status "
    "(found, not_found).",
    ["status"],
)
ENRICHMENT_CALLS = Counter(
    "switchboard_enrichment_calls_total",
    "Calls to the enrichment provider, by kind (companies, people) and HTTP status (retry: "
    "a retryable failure to be tried again).",
    ["kind", "status"],
)
ENRICHMENT_CACHE = Counter(
    "switchboard_enrichment_cache_total",
    "Enrichment lookups answered from the cache (hit) or by a call (miss), by kind.",
    ["kind", "outcome"],
)
SINK_DELIVERIES = Counter(
    "switchboard_sink_deliveries_total",
    "Records a sink settled, by destination and outcome (delivered, duplicate: already "
    "delivered before, dead_lettered).",
    ["destination", "outcome"],
)
SINK_RETRIES = Counter(
    "switchboard_sink_retries_total",
    "Records a sink will try again after a retryable failure, by destination.",
    ["destination"],
)
SINK_CALL_SECONDS = Histogram(
    "switchboard_sink_call_seconds",
    "Duration of one call to a destination (a batch for the CRM writers).",
    ["destination"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_DELIVERY_SECONDS = Histogram(
    "switchboard_sink_delivery_seconds",
    "Time from a record's write to its topic until its destination confirmed it.",
    ["destination"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
SINK_BREAKER_OPEN = Gauge(
    "switchboard_sink_circuit_open",
    "1 while a destination's circuit breaker pauses deliveries to it (open or probing).",
    ["destination"],
)


TIMERS_SCHEDULED = Counter(
    "switchboard_timers_scheduled_total",
    "Timers started or started again, by policy.",
    ["policy"],
)
TIMERS_FIRED = Counter(
    "switchboard_timers_fired_total",
    "Timer steps fired (each escalation step once), by policy: an SLA policy, or "
    "workflow/NAME for a workflow's wait.",
    ["policy"],
)
TIMERS_CANCELLED = Counter(
    "switchboard_timers_cancelled_total",
    "Timers ended before they fired, by policy and reason (stopped: the awaited activity "
    "came; cancelled: the policy no longer applies; merged: the contact was merged).",
    ["policy", "reason"],
)
TIMERS_PENDING = Gauge(
    "switchboard_timers_pending",
    "Timers this worker holds for its partitions (its in-memory schedules), by kind: sla "
    "clocks, or workflow waits.",
    ["kind"],
)
TIMER_LATENESS = Histogram(
    "switchboard_timer_lateness_seconds",
    "How late a timer fired after it was due (downtime shows here).",
    ["policy"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
SLA_BREACHES = Counter(
    "switchboard_sla_breaches_total",
    "SLA escalation steps taken, by policy and escalation level (1 is the breach itself).",
    ["policy", "level"],
)
TIME_TO_FIRST_TOUCH = Histogram(
    "switchboard_time_to_first_touch_seconds",
    "From a lead's assignment to its owner's first touch, by first-touch policy.",
    ["policy"],
    buckets=(30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400, 259200),
)
PIPELINE_MOVES = Counter(
    "switchboard_pipeline_moves_total",
    "Deals moved by a pipeline trigger, by rule and the stage they moved to.",
    ["rule", "stage"],
)

WORKFLOW_ENROLMENTS = Counter(
    "switchboard_workflow_enrolments_total",
    "Contacts that entered a workflow, by workflow.",
    ["workflow"],
)
WORKFLOW_EXITS = Counter(
    "switchboard_workflow_exits_total",
    "Workflow runs that ended, by workflow and the exit state they ended in.",
    ["workflow", "exit"],
)
WORKFLOW_STEPS = Counter(
    "switchboard_workflow_steps_total",
    "Workflow steps taken, by workflow and decision (workflow_sent, workflow_step, "
    "workflow_branch).",
    ["workflow", "decision"],
)
WORKFLOW_SUPPRESSIONS = Counter(
    "switchboard_workflow_suppressions_total",
    "Entries refused and sends or moves suppressed, by workflow and reason (entry_filter, "
    "group, reentry, consent, frequency_cap, backwards, ...).",
    ["workflow", "reason"],
)
JOURNEY_STEPS = Counter(
    "switchboard_journey_steps_total",
    "Workflow runs at a step, by workflow, step and what they did there: entered (arrived "
    "at it), progressed (moved on along the path), diverted (taken off it), converted "
    "(ended in the workflow's goal exit), finished (ended in another exit), stalled (moved "
    "on or ended later than the step's expected time).",
    ["workflow", "step", "outcome"],
)
JOURNEY_DIVERSIONS = Counter(
    "switchboard_journey_diversions_total",
    "Workflow runs taken off their path at a step, by reason: a suppressed action "
    "(consent, frequency_cap, no_recipient, backwards), unsubscribed, or an exit the engine "
    "forced (preempted, merged, version_removed).",
    ["workflow", "step", "reason"],
)
JOURNEY_STEP_SECONDS = Histogram(
    "switchboard_journey_step_seconds",
    "How long a workflow run waited at a step (a wait, a wait for events, quiet hours) "
    "before it moved on or ended.",
    ["workflow", "step"],
    buckets=(60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 2 * 86400, 3 * 86400, 7 * 86400),
)


class _Value:
    """A labelled child's number, in place of prometheus_client's MutexValue (a lock per
    update): only the thread running the stages updates the children :func:`labelled`
    hands out, and the /metrics thread reads a float whole. Same interface, so the
    child's own methods and its samples at /metrics go through it unchanged."""

    __slots__ = ("_exemplar", "_value")

    def __init__(self, value: float, exemplar: object = None) -> None:
        self._value = value
        self._exemplar = exemplar

    def inc(self, amount: float = 1) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def get(self) -> float:
        return self._value

    def set_exemplar(self, exemplar: object) -> None:
        self._exemplar = exemplar

    def get_exemplar(self) -> object:
        return self._exemplar


class _Observer:
    """A labelled histogram child's observe(): its bucket found by bisection rather than
    prometheus_client's loop over the bounds, and no locks."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._bounds: list[float] = child._upper_bounds
        self._buckets = child._buckets = [_lock_free(b) for b in child._buckets]
        self._sum = child._sum = _lock_free(child._sum)

    def observe(self, amount: float) -> None:
        self._sum._value += amount
        # the first bound >= amount, as prometheus_client's `amount <= bound`
        self._buckets[bisect_left(self._bounds, amount)]._value += 1


_CHILDREN: dict[tuple[object, tuple[str, ...]], _Value | _Observer] = {}


@overload
def labelled(metric: Counter, *values: str) -> _Value: ...
@overload
def labelled(metric: Histogram, *values: str) -> _Observer: ...
def labelled(metric: Counter | Histogram, *values: str) -> _Value | _Observer:
    """``metric.labels(*values)`` (values in the order of its label names), remembered,
    and its updates made cheap (the stages count every event): an ``inc()`` that is the
    child's value itself, an ``observe()`` by bisection. Label sets are bounded, so is
    this."""
    key = (metric, values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = _updater(metric.labels(*values))
    return child


def _updater(child: Counter | Histogram) -> _Value | _Observer:
    # prometheus_client internals: a Counter child keeps its number in ``_value``, a
    # Histogram child its buckets' counts in ``_buckets`` and its sum in ``_sum``.
    if isinstance(child, Histogram):
        return _Observer(child)
    value = child._value = _lock_free(child._value)
    return value


def _lock_free(value: Any) -> _Value:  # a MutexValue, untyped
    # once per child, even when two label tuples (1 and "1") name the same child
    return value if isinstance(value, _Value) else _Value(value.get(), value.get_exemplar())


def declare(metric: Counter | Gauge | Histogram, label_sets: Iterable[Mapping[str, str]]) -> None:
    """Export ``metric`` at zero for each of ``label_sets``, known before any event."""
    for labels in label_sets:
        metric.labels(**labels)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Expose this process's metrics on http://addr:port/metrics (a daemon thread)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
