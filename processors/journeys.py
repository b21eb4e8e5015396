"""Journey KPIs: per workflow and step, how many runs entered, progressed, stalled,
were diverted (and why) or converted, and how long they stayed.

The workflow engine marks the audit entries it already writes (no record of its own):

- ``arrived``: on the first entry of a run's stay at a step;
- ``outcome`` (and ``why``, ``in_step_s``): on the entry that ends the stay:
  ``progressed`` (on along the path), ``diverted`` (taken off it: ``why`` is a
  suppression of the step's action, an unsubscribe, or an exit the engine forced:
  preempted, merged, version_removed), ``converted`` (ended in the workflow's goal exit)
  or ``finished`` (ended in another exit of the path); ``in_step_s`` when it waited there;
- ``expected_s`` and ``waits_for``: on the entry that starts a wait.

The worker counts these marks as metrics (processors.workflows.runs); ``funnels`` counts
them from the audit topic (``switchboard journeys``), so the two agree by construction.
A run is *stalled* when its stay is still open ``now`` and began longer ago than the
step's expected time (the step's ``expected``, else its own wait: expected_time in
processors.workflows.steps).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

PROGRESSED = "progressed"
DIVERTED = "diverted"
CONVERTED = "converted"
FINISHED = "finished"
OUTCOMES = (PROGRESSED, DIVERTED, CONVERTED, FINISHED)

# Events that take a contact off a path when a wait_for answers them.
OPT_OUTS = frozenset({"EMAIL_UNSUBSCRIBED"})
UNSUBSCRIBED = "unsubscribed"

# Not a stay at a step: a run's entry, a refusal, and what happens around a merge.
_NOT_A_STAY = {"workflow_entered", "workflow_not_entered", "workflow_adopted"}


@dataclass
class StepFunnel:
    step: str
    entered: int = 0
    progressed: int = 0
    converted: int = 0
    finished: int = 0
    waiting: int = 0  # in the step now, within its expected time
    stalled: int = 0  # in the step now, longer than its expected time
    diverted: Counter[str] = field(default_factory=Counter)
    times: list[float] = field(default_factory=list)  # seconds, of the stays that waited

    def percentile(self, q: float) -> float | None:
        if not self.times:
            return None
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Funnel:
    workflow: str
    entered: int = 0  # runs that entered the workflow
    not_entered: Counter[str] = field(default_factory=Counter)
    steps: dict[str, StepFunnel] = field(default_factory=dict)
    stall_reasons: Counter[str] = field(default_factory=Counter)

    def step(self, step: str) -> StepFunnel:
        found = self.steps.get(step)
        if found is None:
            found = self.steps[step] = StepFunnel(step)
        return found

    def diversions(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for step in self.steps.values():
            total.update(step.diverted)
        return total


@dataclass
class _Stay:
    workflow: str
    step: str
    since: datetime
    expected_s: float | None = None
    opened_by: dict[str, Any] = field(default_factory=dict)


def funnels(
    entries: Iterable[dict[str, Any]],
    now: datetime,
    expected: dict[tuple[str, str], timedelta | None] | None = None,
) -> dict[str, Funnel]:
    """The funnel of every workflow from audit ``entries`` in the order they were written
    (a run's entries are on one partition, in offset order). ``expected`` is each
    (workflow, step)'s expected time for entries that do not carry ``expected_s``.

    Over the whole topic, each run that entered a step is in one of its other columns.
    Over a window, a stay that began before it counts in how it ended (or as waiting or
    stalled, judged from its first entry in the window), not in entered."""
    found: dict[str, Funnel] = {}
    open_stays: dict[str, _Stay] = {}
    ended: set[str] = set()  # runs that exited: what follows is their exit state's actions

    def funnel(name: str) -> Funnel:
        got = found.get(name)
        if got is None:
            got = found[name] = Funnel(name)
        return got

    for entry in entries:
        if entry["stage"] != "workflow":
            continue
        inputs = entry["inputs"]
        decision = entry["decision"]
        name = inputs.get("workflow")
        if name is None:
            continue
        if decision == "workflow_not_entered":
            funnel(name).not_entered[inputs.get("because", "?")] += 1
            continue
        run_id = inputs.get("run_id")
        if decision == "workflow_entered":
            funnel(name).entered += 1
            continue
        if run_id is None or run_id in ended or decision in _NOT_A_STAY:
            continue
        stay = open_stays.get(run_id)
        if decision == "workflow_migrated":
            if stay is not None:
                stay.step = inputs.get("step", stay.step)
            continue
        step = inputs.get("step")
        if step is None:
            continue
        if inputs.get("arrived") == "true" or (stay is not None and stay.step != step):
            # (a step changed without the mark: an entry written before the marks)
            funnel(name).step(step).entered += 1
            stay = open_stays[run_id] = _Stay(name, step, entry["recorded_at"])
        elif stay is None:
            # It arrived before the window: counted in how it leaves, not in entered; still
            # there, it has been there at least since this entry.
            stay = open_stays[run_id] = _Stay(name, step, entry["recorded_at"])
        if "expected_s" in inputs:
            stay.expected_s = float(inputs["expected_s"])
            stay.opened_by = {"decision": decision, **inputs}
        outcome = inputs.get("outcome")
        if decision == "workflow_exited":
            ended.add(run_id)
        if outcome is None:
            if decision == "workflow_exited":
                outcome = FINISHED  # an entry from before the marks: no better guess
            else:
                continue
        counts = funnel(name).step(step)
        if outcome == DIVERTED:
            counts.diverted[inputs.get("why", "?")] += 1
        elif outcome in (PROGRESSED, CONVERTED, FINISHED):
            setattr(counts, outcome, getattr(counts, outcome) + 1)
        if "in_step_s" in inputs:
            counts.times.append(float(inputs["in_step_s"]))
        del open_stays[run_id]

    for stay in open_stays.values():
        counts = funnel(stay.workflow).step(stay.step)
        limit = stay.expected_s
        if limit is None and expected is not None:
            known = expected.get((stay.workflow, stay.step))
            limit = known.total_seconds() if known is not None else None
        if limit is not None and (now - stay.since).total_seconds() > limit:
            counts.stalled += 1
            funnel(stay.workflow).stall_reasons[f"{stay.step}: {stall_reason(stay, now)}"] += 1
        else:
            counts.waiting += 1
    return found


def stall_reason(stay: _Stay, now: datetime) -> str:
    """Why a run stays: its wait is over and it has not moved (a late timer), it waits out
    quiet hours, or it waits for events that have not come."""
    opened = stay.opened_by
    until = opened.get("until")
    if until and datetime.fromisoformat(until) < now:
        return "its wait is over and it has not moved (a late timer)"
    if opened.get("decision") == "workflow_deferred":
        return "held for quiet hours"
    if opened.get("waits_for"):
        return f"no {opened['waits_for']} yet"
    return "still waiting"


def _seconds(value: float | None) -> str:
    """A time in a step, short: 45s, 12m, 25h, 3.5d."""
    if value is None:
        return "-"
    for unit, size, below in (("s", 1, 60), ("m", 60, 3600), ("h", 3600, 2 * 86400)):
        if value < below:
            return f"{value / size:.1f}".removesuffix(".0") + unit
    return f"{value / 86400:.1f}".removesuffix(".0") + "d"


def render(
    found: dict[str, Funnel], order: dict[str, list[str]] | None = None, top: int = 5
) -> str:
    """The funnels as text: a table per workflow (steps in ``order`` when known), then
    the top reasons for stalls and diversions."""
    lines: list[str] = []
    header = (
        f"  {'step':<24}{'entered':>8}{'progr.':>8}{'stalled':>8}{'waiting':>8}"
        f"{'divert.':>8}{'conv.':>7}{'fin.':>6}{'p50':>8}{'p90':>8}"
    )
    for name in sorted(found):
        funnel = found[name]
        refused = ", ".join(f"{k} {v}" for k, v in funnel.not_entered.most_common())
        lines.append(
            f"{name}: {funnel.entered} entered" + (f"; not entered: {refused}" if refused else "")
        )
        lines.append(header)
        known = (order or {}).get(name, [])
        steps = [s for s in known if s in funnel.steps] + sorted(
            s for s in funnel.steps if s not in known
        )
        for step_id in steps:
            s = funnel.steps[step_id]
            lines.append(
                f"  {step_id:<24}{s.entered:>8}{s.progressed:>8}{s.stalled:>8}{s.waiting:>8}"
                f"{sum(s.diverted.values()):>8}{s.converted:>7}{s.finished:>6}"
                f"{_seconds(s.percentile(0.5)):>8}{_seconds(s.percentile(0.9)):>8}"
            )
        if funnel.stall_reasons:
            lines.append("  stalled because:")
            lines += [f"    {n:>6}  {why}" for why, n in funnel.stall_reasons.most_common(top)]
        diversions = Counter(
            {f"{s.step}: {why}": n for s in funnel.steps.values() for why, n in s.diverted.items()}
        )
        if diversions:
            lines.append("  diverted because:")
            lines += [f"    {n:>6}  {why}" for why, n in diversions.most_common(top)]
        lines.append("")
    return "\n".join(lines) if lines else "no workflow entries in the audit topic"
