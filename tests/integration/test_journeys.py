"""`switchboard journeys` on the real broker: contacts run through a workflow on a worker
(a file clock the test moves), then the command reads the audit topic and prints a
funnel whose every number is what the audit topic holds, step by step."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from processors.journeys import OPT_OUTS
from processors.workflows.definitions import BUILTIN_EXITS
from processors.workflows.library import Library, load_library
from streams.clock import FileClock
from streams.settings import Settings
from tests.integration.test_sla_timers import T0, Pipeline, lead, with_clock
from tests.integration.test_workflows import sent, with_workflows, workflow_audit
from tests.kafka_helpers import running_worker, settings_env, wait_for

pytestmark = pytest.mark.integration

JOURNEY = """
name: journey
version: 1
purpose: Welcome a lead, wait a day for an answer, then an hour, then stop.
owner: revops@example.com
trigger: {event: FORM_SUBMITTED}
entry: {everyone: true}
goal: {events: [{event: MEETING_BOOKED}], exit: booked}
steps:
  - id: welcome
    send: {channel: EMAIL, template: web_lead_welcome}
  - id: wait-for-reply
    wait_for:
      - {event: EMAIL_UNSUBSCRIBED, goto: gone}
      - {event: EMAIL_REPLIED, goto: replied}
    timeout: 1d
    on_timeout: an-hour
    expected: 12h
  - {id: an-hour, wait: 1h}
  - {id: done, exit: done}
  - {id: replied, exit: replied}
  - {id: gone, exit: gone}
exits:
  booked: {tag: booked}
  done: {tag: done}
  replied: {tag: replied}
  gone: {tag: gone}
"""
STEPS = ["welcome", "wait-for-reply", "an-hour", "done", "replied", "gone"]
COLUMNS = ["entered", "progressed", "stalled", "waiting", "diverted", "converted", "finished"]
Funnels = dict[str, dict[str, dict[str, int]]]  # workflow -> step -> column -> count


def answer(n: int, kind: str, at: datetime) -> tuple[str, dict[str, Any]]:
    email = f"lead{n}@example.com"
    payloads: dict[str, dict[str, Any]] = {
        "MEETING_BOOKED": {"meeting_id": f"m-{n}", "starts_at": at + timedelta(days=2)},
        "EMAIL_REPLIED": {"message_id": f"r-{n}", "snippet": "sounds good"},
        "EMAIL_UNSUBSCRIBED": {"message_id": f"u-{n}"},
    }
    payload = payloads[kind]
    return f"email:{email}", {
        "event_id": f"test:{kind}-{n}",
        "event_type": kind,
        "source_system": "test",
        "event_time": at,
        "received_time": at,
        "identity": {"email": email, "phone": None, "crm_id": None, "external_ids": {}},
        "contact_id": None,
        "payload": payload,
    }


def journeys(settings: Settings, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "journeys", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def tables(text: str) -> Funnels:
    """The funnels `switchboard journeys` printed: workflow -> step -> column -> count."""
    found: Funnels = {}
    rows: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        heading = re.match(r"^(\S+): \d+ entered", line)
        if heading:
            rows = found.setdefault(heading.group(1), {})
            continue
        cells = line.split()
        if len(cells) == len(COLUMNS) + 3 and all(c.isdigit() for c in cells[1:8]):
            rows[cells[0]] = dict(zip(COLUMNS, map(int, cells[1:8]), strict=True))
    return found


def from_audit(audit: list[dict[str, Any]], now: datetime, library: Library) -> Funnels:
    """The funnels counted straight from the audit entries, another way than the command:
    each run's steps in the order its entries name them, how it left each (to the next
    step; an exit entry; an unsubscribe it answered or a send not made, which divert it),
    and, for the step it is still at, how long since its first entry there."""
    paths: dict[str, tuple[str, list[str]]] = {}
    arrived: dict[tuple[str, str], datetime] = {}
    exits: dict[str, dict[str, Any]] = {}
    diverted: dict[tuple[str, str], str] = {}
    # In the order they happened: a merged contact's run goes on on another partition.
    for entry in sorted(audit, key=lambda e: e["recorded_at"]):
        inputs = entry["inputs"]
        run, step, name = inputs.get("run_id"), inputs.get("step"), inputs.get("workflow")
        flow = library.current(name) if name else None
        if run is None or flow is None or flow.step(step or "") is None or run in exits:
            continue  # not a stay at a step; or an exit state's actions after the exit
        path = paths.setdefault(run, (name, []))[1]
        if not path or path[-1] != step:
            path.append(step)
            arrived[(run, step)] = entry["recorded_at"]
        if entry["decision"] == "workflow_exited":
            exits[run] = entry
        elif inputs.get("event") in OPT_OUTS or entry["decision"] == "workflow_suppressed":
            diverted[(run, step)] = "diverted"
    counts: dict[str, dict[str, Counter[str]]] = {}
    for run, (name, path) in paths.items():
        flow = library.current(name)
        assert flow is not None
        for before, step in enumerate(path):
            at = counts.setdefault(name, {}).setdefault(step, Counter())
            at["entered"] += 1
            if before + 1 < len(path):
                at[diverted.get((run, step), "progressed")] += 1
            elif run in exits:
                exit_name = exits[run]["inputs"]["exit"]
                if exit_name == flow.goal.exit:
                    at["converted"] += 1
                else:
                    at["diverted" if exit_name in BUILTIN_EXITS else "finished"] += 1
            else:
                limit = library.expected(flow, step)
                late = limit is not None and now - arrived[(run, step)] > limit
                at["stalled" if late else "waiting"] += 1
    return {
        name: {step: {c: n[c] for c in COLUMNS} for step, n in steps.items()}
        for name, steps in counts.items()
    }


def test_switchboard_journeys_prints_the_funnel_the_audit_topic_holds(
    settings: Settings, registry: SchemaRegistryClient, tmp_path: Path
) -> None:
    settings, clock = with_clock(settings, tmp_path, T0)
    settings = with_workflows(settings, tmp_path, JOURNEY)
    p = Pipeline(settings, registry, tmp_path)
    later = T0 + timedelta(hours=25)
    with running_worker(settings, tmp_path / "worker.log"):
        p.send(p.events, [lead(n, T0) for n in range(6)])
        wait_for(lambda: len(sent(p, "web_lead_welcome")) == 6, "six welcomes")
        FileClock.write(clock, T0 + timedelta(hours=2))
        p.send(
            p.events,
            [
                answer(0, "MEETING_BOOKED", T0 + timedelta(hours=2)),
                answer(1, "MEETING_BOOKED", T0 + timedelta(hours=2)),
                answer(2, "EMAIL_REPLIED", T0 + timedelta(hours=2)),
                answer(3, "EMAIL_UNSUBSCRIBED", T0 + timedelta(hours=2)),
            ],
        )

        def exits() -> Counter[str]:
            return Counter(
                a["inputs"]["exit"] for a in workflow_audit(p) if a["decision"] == "workflow_exited"
            )

        wait_for(lambda: exits() == {"booked": 2, "replied": 1, "gone": 1}, "four answers")
        # A day on: leads 4 and 5 time out, wait their hour, and are done; four more come.
        FileClock.write(clock, later)
        p.send(p.events, [lead(n, later) for n in range(6, 10)])
        wait_for(lambda: len(sent(p, "web_lead_welcome")) == 10, "ten welcomes")
        FileClock.write(clock, later + timedelta(hours=2))
        wait_for(lambda: exits()["done"] == 2, "the two who never answered, done")
        # The four late-comers have waited 13 hours for an answer: longer than 12h.
        now = later + timedelta(hours=13)
        FileClock.write(clock, now)
        audit = workflow_audit(p)

    assert settings.workflows is not None
    printed = journeys(settings, "journey", "--since", "7d")
    funnel = tables(printed)["journey"]
    assert list(funnel) == [s for s in STEPS if s in funnel], printed  # in the file's order
    assert funnel == from_audit(audit, now, load_library(settings.workflows))["journey"]
    # And what the story says, as a person would read it.
    assert funnel["welcome"]["entered"] == 10
    assert funnel["wait-for-reply"] == {
        "entered": 10,
        "progressed": 3,  # the reply, and the two time-outs
        "stalled": 4,
        "waiting": 0,
        "diverted": 1,  # the unsubscribe
        "converted": 2,
        "finished": 0,
    }
    assert funnel["an-hour"]["progressed"] == 2 and funnel["done"]["finished"] == 2
    assert "journey: 10 entered" in printed
    assert "wait-for-reply: unsubscribed" in printed
    assert re.search(r"4\s+wait-for-reply: no EMAIL_UNSUBSCRIBED, EMAIL_REPLIED yet", printed)
    # Time in step, p50 and p90: four answers after 2h, two time-outs a day and an hour
    # after they began to wait (the clock jumped past their 1d timeout).
    row = next(line for line in printed.splitlines() if line.split()[:1] == ["wait-for-reply"])
    assert row.split()[-2:] == ["2h", "25h"], row

    # The last 12 hours of the pipeline's clock: only the hour's waits that ended, and the
    # exits they led to (the late-comers' stays began before).
    recent = tables(journeys(settings, "journey", "--since", "12h"))["journey"]
    assert recent == {
        "an-hour": dict.fromkeys(COLUMNS, 0) | {"progressed": 2},
        "done": dict.fromkeys(COLUMNS, 0) | {"entered": 2, "finished": 2},
    }
