"""``switchboard explain CONTACT``: what Switchboard knows about a contact and the
decisions that led there, from the worker's tables (over its web endpoint) and the
audit topic."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from processors.scoring import ScoringModel, load_model
from processors.state import ContactState
from streams.kafka import read_topic
from streams.serde import AvroSerde, registry_client
from streams.settings import Settings, secret, secret_env
from streams.topics import AUDIT
from streams.web import TOKEN_SECRET


class NotFound(LookupError):
    pass


def _get(base: str, path: str) -> dict[str, Any]:
    url = f"{base.rstrip('/')}/{path}"
    token = secret(TOKEN_SECRET)
    if token is None:
        raise PermissionError(f"a worker's views need a token: set {secret_env(TOKEN_SECRET)}")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            found: dict[str, Any] = json.loads(response.read())
            return found
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise PermissionError(
                f"the worker at {base} refused the token in {secret_env(TOKEN_SECRET)} "
                f"(HTTP {exc.code})"
            ) from None
        raise ConnectionError(f"the worker at {base} answered HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise ConnectionError(f"no worker answers at {base}: {exc.reason}") from None


def contact(worker_url: str, who: str) -> tuple[ContactState, list[str]]:
    """The live contact for a contact id or an identifier (``email:...``), and the ids it
    was reached through (merged contacts are followed to their survivor)."""
    contact_id = who
    if ":" in who:
        found = _get(worker_url, "identifiers/" + urllib.parse.quote(who, safe=""))
        if not found.get("contact_id"):
            raise NotFound(f"no contact has the identifier {who}")
        contact_id = found["contact_id"]
    path = [contact_id]
    while True:
        view = _get(worker_url, "contacts/" + urllib.parse.quote(contact_id, safe=""))
        if view.get("merged_into"):
            contact_id = view["merged_into"]
            path.append(contact_id)
            continue
        if view.get("state") is None:
            raise NotFound(f"no contact {contact_id}")
        return ContactState.model_validate(view["state"]), path


def decisions(settings: Settings, contact_ids: set[str]) -> list[dict[str, Any]]:
    """Every audit entry about ``contact_ids``, oldest first (a full scan of the audit topic)."""
    topic = AUDIT.full_name(settings)
    serde = AvroSerde(registry_client(settings.schema_registry_url), AUDIT.schema, topic)
    entries = (serde.decode(message.value()) for message in read_topic(settings, topic))
    return sorted(
        (e for e in entries if e["contact_id"] in contact_ids), key=lambda e: e["recorded_at"]
    )


def qualification(state: ContactState, model: ScoringModel | None) -> list[str]:
    """Which enrichment fields and which distance feed the score and the assignment: the
    service-area check, the fields a provider gave, and the firmographic rules that match
    now, each with the value it saw and where that value came from."""
    lines = []
    area = state.area
    if area is not None:
        where = {True: "in area", False: "OUT of area", None: "area unknown"}[area.in_area]
        lines.append(f"  service area: {where}; {area.reason}")
    enriched = {
        k: v for k, v in state.profile.items() if state.profile_origin.get(k) == "enrichment"
    }
    if enriched:
        lines.append("  enriched: " + ", ".join(f"{k}={v}" for k, v in sorted(enriched.items())))
    if model is not None:
        facts = state.facts()
        for rule in model.firmographic:
            if rule.matches(facts):
                origin = (
                    "service area"
                    if rule.field in ("service_area", "branch", "distance_km")
                    else state.profile_origin.get(rule.field, "derived")
                )
                lines.append(
                    f"  firmographic {rule.name}: {rule.field}={facts[rule.field]} "
                    f"({origin}) {rule.points:+g}"
                )
    return lines


# Audit inputs worth showing beside a decision: what routing saw of the area and of the
# enrichment, and what an enrichment or area check found.
_SHOWN_INPUTS = ("area.", "profile.", "enriched.", "distance_km", "service_area", "branch")


def render(
    state: ContactState,
    path: list[str],
    entries: list[dict[str, Any]],
    model: ScoringModel | None = None,
) -> str:
    merged_from = sorted(
        {e["inputs"].get("retired", "") for e in entries if e["decision"] == "merged"} - {""}
    )
    lines = [
        f"Contact {state.contact_id}"
        + (f" (merged from {', '.join(merged_from)})" if merged_from else "")
    ]
    if len(path) > 1:
        lines.append(f"  reached through {' -> '.join(path)}")
    components = ", ".join(f"{k} {v:g}" for k, v in state.score_components.items())
    touches = ", ".join(f"{k} {v:%Y-%m-%d %H:%M}Z" for k, v in sorted(state.last_inbound.items()))
    consent = [name for name, on in state.consent.model_dump().items() if on]
    deals = ", ".join(f"{d.deal_id} {d.stage}" for d in state.open_deals.values())
    running = ", ".join(f"{name} ({where})" for name, where in state.workflows.items())
    lines += [
        f"  identifiers: {', '.join(state.identifiers)}",
        f"  score: {state.score:g} ({state.band or 'no band'}); {components}",
        f"  owner: {state.owner_id or 'none'} (routing: {state.routing or 'not yet'})",
        f"  lifecycle stage: {state.lifecycle_stage or 'unknown'}",
        f"  last inbound: {touches or 'none'}",
        f"  open deals: {deals or 'none'}",
        f"  consent: {', '.join(consent) if consent else 'no restrictions'}",
        f"  workflows: {running or 'none running'}",
        f"  tags: {', '.join(state.tags) or 'none'}",
        f"  profile: {json.dumps(state.profile, sort_keys=True)}",
        *qualification(state, model),
        "Decisions:",
    ]
    for entry in entries:
        causes = ", ".join(entry["causation_event_ids"])
        lines.append(
            f"  {entry['recorded_at']:%Y-%m-%d %H:%M:%S} {entry['stage']:8} "
            f"{entry['decision']:16} {entry['reason']}" + (f"  [{causes}]" if causes else "")
        )
        if entry["stage"] in ("routing", "enrichment", "area"):
            shown = {k: v for k, v in entry["inputs"].items() if k.startswith(_SHOWN_INPUTS)}
            if shown:
                lines.append("      saw " + ", ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    return "\n".join(lines)


def explain(settings: Settings, who: str, worker_url: str | None = None) -> str:
    base = worker_url or f"http://127.0.0.1:{settings.web_port}"
    state, path = contact(base, who)
    ids = set(path) | {state.contact_id}
    entries = decisions(settings, ids)
    # Contacts merged into this one: their own history belongs to its story too.
    retired = {e["inputs"].get("retired") for e in entries if e["decision"] == "merged"} - {None}
    if retired - ids:
        entries = decisions(settings, ids | {r for r in retired if r})
    model = load_model(settings.scoring_model) if settings.scoring_model else load_model()
    return render(state, path, entries, model)
