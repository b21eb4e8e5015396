"""A merge, step by step on contact-merges (keyed by the contact each step is for):
REQUEST and RESOLVE agree which of two contacts survives (the smaller id), RETIRE
makes the other an alias and hands its state, running clocks and workflows over,
TRANSFER unites them in the survivor (processors.identity.merge_states), which is
rescored. A step for a contact retired meanwhile follows it to its survivor.

A step that finds its own contact is the one to retire retires it at once rather than
sending RETIRE to itself: a claim's REQUEST goes to the larger id, so a merge of two
contacts no earlier merge retired is two hops (REQUEST, TRANSFER), not four. An alias
always names a smaller id, so chains of them end and never loop."""

from __future__ import annotations

from typing import Any

from processors.identity import merge_states
from processors.records.base import audit_entry
from processors.records.contact import merge_outputs
from processors.scoring import ScoringModel, components_at, total
from processors.sla_clocks import SlaClocks
from processors.state import ContactState
from processors.workflows.runs import WorkflowRuns
from streams.engine import Output
from streams.tables import Parsed, Table


class MergeSteps:
    def __init__(
        self,
        contacts: Parsed[ContactState],
        aliases: Table,
        clocks: SlaClocks,
        runs: WorkflowRuns,
        model: ScoringModel,
    ) -> None:
        self.contacts = contacts
        self.aliases = aliases
        self.clocks = clocks
        self.runs = runs
        self.model = model

    def on_step(self, contact_id: str, step: dict[str, Any], partition: int) -> list[Output]:
        kind, other = step["step"], step["other"]
        alias = self.aliases.get(contact_id)
        if kind in ("REQUEST", "RESOLVE", "TRANSFER") and alias is not None:
            return [("merges", alias, {**step, "target": alias})]  # follow to the survivor
        if kind in ("REQUEST", "RESOLVE"):
            if other == contact_id:
                return []
            if contact_id > other:  # this one retires: the survivor is the smaller id
                return self._retire(contact_id, step, partition)
            if kind == "REQUEST":
                resolve = {**step, "step": "RESOLVE", "target": other, "other": contact_id}
                return [("merges", other, resolve)]
            retire = {**step, "step": "RETIRE", "target": other, "other": contact_id}
            return [("merges", other, retire)]
        if kind == "RETIRE":
            if alias is not None:  # retired meanwhile: merge what it has become instead
                return [("merges", alias, {**step, "step": "REQUEST", "target": alias})]
            return self._retire(contact_id, step, partition)
        return self._transfer(contact_id, step, partition)

    def _retire(self, contact_id: str, step: dict[str, Any], partition: int) -> list[Output]:
        other, at = step["other"], step["at"]
        self.aliases[contact_id] = other
        state = self.contacts.get(contact_id)
        if state is not None:
            del self.contacts[contact_id]
        running = self.clocks.retire(contact_id, partition)  # they go on with the survivor
        in_workflows = self.runs.retire(contact_id, partition)
        transfer = {
            **step,
            "step": "TRANSFER",
            "target": other,
            "other": contact_id,
            "state": state.model_dump_json() if state else None,
            "timers": running,
            "workflows": in_workflows,
        }
        merged_into = audit_entry(
            contact_id,
            "identity",
            "merged_into",
            f"shares {step['identifier']} with {other}; {other} continues as the contact",
            {"survivor": other, "identifier": step["identifier"]},
            [],
            at,
        )
        return [("merges", other, transfer), ("audit", contact_id, merged_into)]

    def _transfer(self, contact_id: str, step: dict[str, Any], partition: int) -> list[Output]:
        other, at, model = step["other"], step["at"], self.model
        retired = ContactState.model_validate_json(step["state"]) if step["state"] else None
        before = self.contacts.get(contact_id)
        current = before or ContactState(contact_id=contact_id)
        merged = merge_states(current, retired) if retired else current
        if merged.last_event_time is not None:
            components = components_at(
                merged.scoring, merged.facts(), model, merged.last_event_time
            )
            merged = merged.model_copy(
                update={
                    "score": total(components, model),
                    "score_components": components,
                    "band": model.band_for(total(components, model)),
                }
            )
        out: list[Output] = []
        if step.get("timers"):
            out += self.clocks.adopt(contact_id, other, step["timers"], at, partition)
        if step.get("workflows"):
            merged, adopted = self.runs.adopt(merged, other, step["workflows"], partition)
            out += adopted
        self.contacts[contact_id] = merged
        # The merged profile's upsert also creates the survivor in the CRM when the merge
        # reached it before its first event (the two come by different topics).
        # The deals it took over are created again in its own order (merge_outputs says why).
        deals = retired.open_deals if retired else ()
        out += merge_outputs(before, merged, other, step["identifier"], at, deals)
        merged_audit = audit_entry(
            contact_id,
            "identity",
            "merged",
            f"{other} proved to be the same person (shared {step['identifier']})",
            {"retired": other, "identifier": step["identifier"], "score": merged.score},
            [],
            at,
        )
        out.append(("audit", contact_id, merged_audit))
        return out
