"""Templates render every channel's form from the router's context, and refuse an
unknown template or a missing context key with a message that names it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from connectors.delivery import Rejected
from connectors.sinks.notify.templates import (
    SMS_MAX_CHARS,
    TEMPLATES,
    render_slack,
    render_sms,
    render_text,
    render_webhook,
)
from tests.sinks.notify_servers import sample_notification

RENDERERS: list[Callable[[dict[str, Any]], Any]] = [
    render_text,
    render_sms,
    render_slack,
    render_webhook,
]


def test_router_context_keys_are_what_new_lead_uses() -> None:
    # processors/router.py notification_context() fills exactly these keys.
    router_keys = {
        "rep", "who", "company", "contact_id", "identifiers", "why_now", "score",
        "recent_activity", "recommended_action",
    }  # fmt: skip
    assert set(sample_notification()["context"]) == router_keys
    for render in RENDERERS:
        render(sample_notification())


def test_email_text_says_who_why_and_what_to_do() -> None:
    subject, body = render_text(sample_notification())
    assert subject == "New lead for you: score 87"  # the record's own subject wins
    for expected in (
        "Hi Dana Rep,",
        "Ada Lovelace was just assigned to you.",
        "Why now: score 87 (hot); rule enterprise-west matched",
        "Recommended action: call back within 5 minutes",
        "Company: Analytical Engines Ltd",
        "Recent activity: phone 2026-03-01 09:12Z, web 2026-02-28 17:40Z",
        "Identifiers: email:ada@example.org, phone:+14155550123",
        "Contact id: c-000042",
    ):
        assert expected in body


def test_subject_comes_from_the_template_when_the_record_has_none() -> None:
    subject, _ = render_text(sample_notification(subject=None))
    assert subject == "New lead for Dana Rep: Ada Lovelace (score 87)"


def test_blank_values_show_a_dash_not_nothing() -> None:
    record = sample_notification()
    record["context"] = {**record["context"], "company": ""}
    _, body = render_text(record)
    assert "Company: \u2014" in body


def test_sms_is_one_line_and_clipped() -> None:
    assert render_sms(sample_notification()) == (
        "New lead for Dana Rep: Ada Lovelace (Analytical Engines Ltd), score 87. "
        "call back within 5 minutes."
    )
    record = sample_notification()
    record["context"] = {**record["context"], "who": "Ada\nLovelace " + "x" * 400}
    text = render_sms(record)
    assert len(text) == SMS_MAX_CHARS
    assert "\n" not in text
    assert text.endswith("\u2026")


def test_slack_payload_has_text_and_blocks_with_escaped_values() -> None:
    record = sample_notification()
    record["context"] = {**record["context"], "who": "<!channel> & Co"}
    payload = render_slack(record)
    assert payload["text"].startswith("New lead for Dana Rep: *&lt;!channel&gt; &amp; Co*")
    header, why, fields, context = payload["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "New lead: <!channel> & Co"},
    }
    assert why["text"] == {
        "type": "mrkdwn",
        "text": "*Why now:* score 87 (hot); rule enterprise-west matched\n"
        "*Recommended action:* call back within 5 minutes",
    }
    assert {"type": "mrkdwn", "text": "*Score*\n87"} in fields["fields"]
    assert context["elements"][0]["text"] == "Assigned to Dana Rep \u00b7 contact `c-000042`"
    mrkdwn = [payload["text"], why["text"]["text"], context["elements"][0]["text"]]
    mrkdwn += [f["text"] for f in fields["fields"]]
    assert not any("<!channel>" in text for text in mrkdwn)


def test_webhook_body_is_the_record_plus_rendered_text() -> None:
    body = json.loads(render_webhook(sample_notification()))
    assert body["notification_id"] == "3f1c0a9e5b7d4c2a8e6f1b3d5a7c9e0f"
    assert body["issued_at"] == "2026-03-01T09:13:05+00:00"
    assert body["context"]["who"] == "Ada Lovelace"
    assert body["rendered"]["subject"] == "New lead for you: score 87"
    assert "Recommended action: call back within 5 minutes" in body["rendered"]["text"]


@pytest.mark.parametrize("render", RENDERERS)
def test_unknown_template_is_rejected_by_name(render: Callable[[dict[str, Any]], Any]) -> None:
    with pytest.raises(Rejected) as caught:
        render(sample_notification(template="old_lead"))
    assert "unknown template 'old_lead'" in str(caught.value)
    assert "new_lead" in caught.value.answer  # what would have worked


@pytest.mark.parametrize("render", RENDERERS)
def test_missing_context_key_is_rejected_by_name(render: Callable[[dict[str, Any]], Any]) -> None:
    record = sample_notification()
    record["context"] = {k: v for k, v in record["context"].items() if k != "rep"}
    with pytest.raises(Rejected) as caught:
        render(record)
    assert "template 'new_lead' needs the key(s) 'rep'" in str(caught.value)


def test_every_template_has_every_channel() -> None:
    for name, template in TEMPLATES.items():
        assert template.subject and template.text and template.sms and template.slack_text, name
