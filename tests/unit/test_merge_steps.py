"""The merge steps on the contact stage's tables (no Kafka: each step's outputs are
delivered in a random order that keeps each contact's own order, as its partition
would): merges requested at once, in any interleaving, end with one contact per group,
the smallest id, holding every identifier, and every other id an alias of a smaller one.
A merge of two contacts that nothing retired before is two steps."""

from __future__ import annotations

import random
from collections import deque
from datetime import UTC, datetime
from typing import Any

import pytest

from processors.pipeline import load_rules as load_pipeline
from processors.scoring import load_model
from processors.sla import load_policies
from processors.sla_clocks import SlaClocks
from processors.stages.merges import MergeSteps
from processors.state import ContactState
from processors.workflows.engine import Engine as WorkflowEngine
from processors.workflows.library import load_library
from processors.workflows.runs import WorkflowRuns
from streams.clock import ManualClock
from streams.engine import Engine
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings
from streams.tables import Parsed

T0 = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
IDS = [f"c-{n}" for n in range(1, 6)]


class Stage:
    """MergeSteps on in-memory tables holding partition 0, each step applied as the
    runtime would: its writes kept, its outputs returned."""

    def __init__(self) -> None:
        settings = Settings(store="memory://")
        dead = AvroSerde(registry_client(settings.schema_registry_url), "dead_letter", "dead")
        self.runtime = Engine(settings, {"dead_letters": (dead.topic, dead)})
        clock = ManualClock(T0)
        self.contacts = Parsed(
            self.runtime.table("contacts"),
            ContactState.model_validate_json,
            ContactState.model_dump_json,
        )
        self.aliases = self.runtime.table("aliases")
        clocks = SlaClocks(self.runtime, settings, load_policies(), clock)
        library = WorkflowEngine(load_library(), load_pipeline())
        runs = WorkflowRuns(self.runtime, settings, library, clock)
        self.steps = MergeSteps(self.contacts, self.aliases, clocks, runs, load_model())
        for table in self.runtime.tables:
            table.store(0)
            table.active = {0}
            table.focus(0)
        for contact_id in IDS:
            phone = f"phone:+{contact_id[2:]}"
            self.contacts[contact_id] = ContactState(contact_id=contact_id, identifiers=[phone])
        self.keep()

    def keep(self) -> None:
        for table in self.runtime.tables:
            table.keep()

    def step(self, contact_id: str, step: dict[str, Any]) -> list[tuple[str, str, Any]]:
        outputs = self.steps.on_step(contact_id, step, 0)
        self.keep()
        return outputs

    def root(self, contact_id: str) -> str:
        seen = {contact_id}
        while (alias := self.aliases.get(contact_id)) is not None:
            assert alias < contact_id, f"{contact_id} is an alias of the larger {alias}"
            contact_id = alias
            assert contact_id not in seen
            seen.add(contact_id)
        return contact_id


def request(a: str, b: str) -> tuple[str, dict[str, Any]]:
    """The REQUEST the identity stage sends when a claim finds a and b share a phone."""
    survivor, loser = sorted((a, b))
    step = {
        "step": "REQUEST",
        "target": loser,
        "other": survivor,
        "identifier": f"phone:{a}-{b}",
        "state": None,
        "timers": None,
        "workflows": None,
        "at": T0,
    }
    return loser, step


def play(stage: Stage, requests: list[tuple[str, str]], rng: random.Random) -> int:
    """Deliver the requests and every step they lead to, each contact's in its order, the
    contacts' interleaved at random; the number of steps taken."""
    queues: dict[str, deque[dict[str, Any]]] = {}
    for a, b in requests:
        key, step = request(a, b)
        queues.setdefault(key, deque()).append(step)
    taken = 0
    while any(queues.values()):
        key = rng.choice([k for k, q in queues.items() if q])
        taken += 1
        for topic, target, record in stage.step(key, queues[key].popleft()):
            if topic == "merges":
                queues.setdefault(target, deque()).append(record)
    return taken


def groups(requests: list[tuple[str, str]]) -> list[set[str]]:
    found: list[set[str]] = []
    for a, b in requests:
        joined = {a, b}.union(*(g for g in found if g & {a, b}))
        found = [g for g in found if not g & {a, b}] + [joined]
    return found


def test_a_merge_of_two_contacts_nothing_retired_is_two_steps() -> None:
    stage = Stage()
    assert play(stage, [("c-2", "c-4")], random.Random(0)) == 2
    assert stage.root("c-4") == "c-2"
    survivor = stage.contacts.get("c-2")
    assert survivor is not None
    assert survivor.identifiers == ["phone:+2", "phone:+4"]
    assert stage.contacts.get("c-4") is None


@pytest.mark.parametrize("seed", range(60))
def test_merges_at_once_in_any_order_end_in_the_smallest_id_with_every_identifier(
    seed: int,
) -> None:
    rng = random.Random(seed)
    pairs = [(a, b) for a in IDS for b in IDS if a < b]
    requests = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in rng.sample(pairs, 5)]
    stage = Stage()
    play(stage, requests, rng)
    for group in groups(requests):
        survivor = min(group)
        assert {stage.root(c) for c in group} == {survivor}
        state = stage.contacts.get(survivor)
        assert state is not None
        assert sorted(state.identifiers) == sorted(f"phone:+{c[2:]}" for c in group)
        for retired in group - {survivor}:
            assert stage.contacts.get(retired) is None
