"""Notification templates: what each channel says for a template name, rendered from the
notification's ``context`` (a map of strings the processors filled in).

Templates are data (``TEMPLATES`` below), written with ``string.Template`` placeholders
(``${who}``), so adding one needs no code and no template engine. Rendering refuses, as a
Rejected that names what is wrong, an unknown template and a context without a key the
channel's text needs: a notification that cannot say what it should is dead-lettered,
never sent half-empty. A key that is present but blank renders as an em dash, except a
greeting's name: ``${first_name}`` that is blank or an address reads "there"."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from string import Template
from typing import Any

from connectors.delivery import Rejected

SMS_MAX_CHARS = 320  # two concatenated GSM-7 segments at most
SLACK_TEXT_MAX = 3000  # a section block's text limit (Block Kit)
SLACK_HEADER_MAX = 150  # a header block's plain_text limit (Block Kit)
BLANK = "\u2014"
GREETING_KEY, GREETING_FALLBACK = "first_name", "there"


@dataclass(frozen=True)
class NotificationTemplate:
    """One message in every channel's form. ``slack_blocks`` is Block Kit JSON whose
    strings may hold placeholders; values in ``mrkdwn`` text are escaped for Slack."""

    subject: str
    text: str
    sms: str
    slack_text: str
    slack_blocks: list[dict[str, Any]] = field(default_factory=list)


TEMPLATES: dict[str, NotificationTemplate] = {
    # processors/router.py: a lead was just assigned to a rep (context: notification_context).
    "new_lead": NotificationTemplate(
        subject="New lead for ${rep}: ${who} (score ${score})",
        text=(
            "Hi ${rep},\n\n"
            "${who} was just assigned to you.\n\n"
            "Why now: ${why_now}\n"
            "Recommended action: ${recommended_action}\n\n"
            "Score: ${score}\n"
            "Company: ${company}\n"
            "Recent activity: ${recent_activity}\n"
            "Identifiers: ${identifiers}\n"
            "Contact id: ${contact_id}\n"
        ),
        sms="New lead for ${rep}: ${who} (${company}), score ${score}. ${recommended_action}.",
        slack_text="New lead for ${rep}: *${who}* (score ${score}). ${recommended_action}.",
        slack_blocks=[
            {"type": "header", "text": {"type": "plain_text", "text": "New lead: ${who}"}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*Why now:* ${why_now}\n*Recommended action:* ${recommended_action}",
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Score*\n${score}"},
                    {"type": "mrkdwn", "text": "*Company*\n${company}"},
                    {"type": "mrkdwn", "text": "*Recent activity*\n${recent_activity}"},
                    {"type": "mrkdwn", "text": "*Identifiers*\n${identifiers}"},
                ],
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": "Assigned to ${rep} \u00b7 contact `${contact_id}`"}
                ],
            },
        ],
    ),
    # processors/records.py: an SLA clock ran out; its owner is reminded (firing_outputs).
    "sla_reminder": NotificationTemplate(
        subject="SLA reminder: ${who} is waiting (${policy})",
        text=(
            "${who} is still waiting.\n\n"
            "Expected: ${expectation}\n"
            "Waiting since: ${started_at}\n"
            "Due by: ${breach_at}\n\n"
            "Company: ${company}\n"
            "Score: ${score}\n"
            "Policy: ${policy}, escalation step ${level}\n"
            "Contact id: ${contact_id}\n"
        ),
        sms="SLA: ${who} waiting since ${started_at}, due ${breach_at}. ${expectation}",
        slack_text="SLA reminder: *${who}* is waiting since ${started_at} (due ${breach_at}). "
        "${expectation}",
    ),
    # processors/records.py: an SLA clock ran out and its owner did not act; their manager hears.
    "sla_escalation": NotificationTemplate(
        subject="SLA escalation: ${who} missed ${policy} (owner ${owner_id})",
        text=(
            "${who} was not handled in time and the owner has been reminded.\n\n"
            "Expected: ${expectation}\n"
            "Waiting since: ${started_at}\n"
            "Due by: ${breach_at}\n"
            "Owner: ${owner_id}\n\n"
            "Company: ${company}\n"
            "Policy: ${policy}, escalation step ${level}\n"
            "Contact id: ${contact_id}\n"
        ),
        sms="SLA escalation: ${who} (owner ${owner_id}) missed ${policy}, due ${breach_at}.",
        slack_text="SLA escalation: *${who}* (owner ${owner_id}) missed ${policy}, "
        "due ${breach_at}. ${expectation}",
    ),
    # processors/rules/workflows/job-completed.yaml: the customer is asked how the job went.
    "satisfaction_survey": NotificationTemplate(
        subject="How did we do?",
        text=(
            "Hi ${first_name},\n\n"
            "Thank you for choosing us for your ${job_type}. How did we do?\n"
            "Reply to this message with a score from 1 to 10 and anything we could do better.\n\n"
            "Job reference: ${job_id}\n"
        ),
        sms="Hi ${first_name}, thanks for choosing us for your ${job_type} (job ${job_id}). "
        "How did we do? Reply with a score from 1 to 10.",
        slack_text="Survey sent to *${who}* for ${job_type} job ${job_id}.",
    ),
    # processors/workflows/actions.py: messages the shipped workflows send to the contact
    # (context: who, first_name, company, contact_id, owner_id, workflow, step, and the
    # triggering event's payload fields).
    "missed_call_text_back": NotificationTemplate(
        subject="Sorry we missed your call",
        text=(
            "Hi ${first_name},\n\nSorry we missed your call. Someone will ring you back "
            "shortly; or reply with a time that suits you.\n"
        ),
        sms="Hi ${first_name}, sorry we missed your call! We'll ring you back shortly, "
        "or reply with a time that suits you.",
        slack_text="Missed-call text-back sent to *${who}*.",
    ),
    "web_lead_welcome": NotificationTemplate(
        subject="Thanks for getting in touch",
        text=(
            "Hi ${first_name},\n\nThanks for getting in touch. Reply to this e-mail with "
            "what you need and a good time to talk, and we will take it from there.\n"
        ),
        sms="Hi ${first_name}, thanks for getting in touch! Reply with a good time to talk.",
        slack_text="Welcome e-mail sent to web lead *${who}*.",
    ),
    "out_of_area_reply": NotificationTemplate(
        subject="About your request",
        text=(
            "Hi ${first_name},\n\nThank you for getting in touch. We are sorry: your address "
            "is outside the area our teams cover, so we cannot take on this job. We would "
            "rather tell you now than keep you waiting.\n"
        ),
        sms="Hi ${first_name}, thanks for getting in touch. Sorry, your address is outside "
        "the area we cover, so we can't take on this job.",
        slack_text="Out-of-area reply sent to web lead *${who}*.",
    ),
    "web_lead_follow_up": NotificationTemplate(
        subject="Following up",
        text=(
            "Hi ${first_name},\n\nJust following up on your enquiry. Is there a good time "
            "this week to talk it through?\n"
        ),
        sms="Hi ${first_name}, following up on your enquiry: is there a good time to talk?",
        slack_text="Follow-up e-mail sent to web lead *${who}*.",
    ),
    "booking_link": NotificationTemplate(
        subject="Book your appointment",
        text=(
            "Hi ${first_name},\n\nThanks for the call. Reply with a day and time that "
            "suit you and we will book your appointment.\n"
        ),
        sms="Hi ${first_name}, thanks for the call! Reply with a day and time that suit you "
        "and we'll book your appointment.",
        slack_text="Booking link sent to *${who}* after a qualified call.",
    ),
    "booking_reminder": NotificationTemplate(
        subject="Still want that appointment?",
        text="Hi ${first_name},\n\nStill want that appointment? Reply with a day and time.\n",
        sms="Hi ${first_name}, still want that appointment? Reply with a day and time.",
        slack_text="Booking reminder sent to *${who}*.",
    ),
    "onboarding_welcome": NotificationTemplate(
        subject="Welcome aboard",
        text=(
            "Hi ${first_name},\n\nThank you for your payment, and welcome aboard. Your "
            "account manager will be in touch to book a kick-off.\n"
        ),
        sms="Hi ${first_name}, welcome aboard! We'll be in touch to book your kick-off.",
        slack_text="Onboarding welcome sent to *${who}*.",
    ),
    "onboarding_check_in": NotificationTemplate(
        subject="How is it going?",
        text=(
            "Hi ${first_name},\n\nHow is it going so far? Reply with a good time for a "
            "kick-off call and we will set it up.\n"
        ),
        sms="Hi ${first_name}, how is it going? Reply with a good time for a kick-off call.",
        slack_text="Onboarding check-in sent to *${who}*.",
    ),
    "re_engagement": NotificationTemplate(
        subject="Still interested?",
        text=(
            "Hi ${first_name},\n\nWe have not heard from you in a while. Are you still "
            "interested? A one-line reply is enough.\n"
        ),
        sms="Hi ${first_name}, still interested? A one-line reply is enough.",
        slack_text="Re-engagement e-mail sent to *${who}*.",
    ),
    # processors/workflows/actions.py: a person is asked to act on a workflow's contact.
    "workflow_attention": NotificationTemplate(
        subject="${who} needs you (${workflow})",
        text=(
            "${who} needs you: the ${workflow} workflow reached ${step}.\n\n"
            "Company: ${company}\nOwner: ${owner_id}\nContact id: ${contact_id}\n"
        ),
        sms="${who} needs you: ${workflow} reached ${step}.",
        slack_text="*${who}* needs you: ${workflow} reached ${step}.",
    ),
    # processors/workflows/membership.py: a workflow run ended; its owner hears how.
    "workflow_outcome": NotificationTemplate(
        subject="${who}: ${workflow} ended ${exit}",
        text=(
            "${who} left the ${workflow} workflow: ${exit}.\n\nWhy: ${reason}\n\n"
            "Company: ${company}\nOwner: ${owner_id}\nContact id: ${contact_id}\n"
        ),
        sms="${who}: ${workflow} ended ${exit}.",
        slack_text="*${who}*: ${workflow} ended *${exit}* (${reason}).",
    ),
    # processors/records.py: a payment made a job; the operations team books it (job_outputs).
    "payment_received_ops": NotificationTemplate(
        subject="Paid: ${amount} from ${who}",
        text=(
            "${who} paid ${amount}: a job is waiting to be booked.\n\n"
            "Service: ${service}\n"
            "Address: ${address}\n"
            "Paid for: ${paid_for}\n\n"
            "Company: ${company}\n"
            "E-mail: ${email}\n"
            "Phone: ${phone}\n"
            "Owner: ${owner_id}\n"
            "Job id: ${job_id}\n"
            "Contact id: ${contact_id}\n"
        ),
        sms="Paid: ${amount} from ${who} for ${service}. Book the job (${address}).",
        slack_text="Paid: *${amount}* from *${who}* for ${service}. A job is waiting to be booked.",
        slack_blocks=[
            {"type": "header", "text": {"type": "plain_text", "text": "Paid: ${amount}"}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*${who}* paid for ${service}: a job is waiting to be booked.",
                },
            },
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": "*Address*\n${address}"},
                    {"type": "mrkdwn", "text": "*Phone*\n${phone}"},
                    {"type": "mrkdwn", "text": "*E-mail*\n${email}"},
                    {"type": "mrkdwn", "text": "*Paid for*\n${paid_for}"},
                ],
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": "Job `${job_id}` \u00b7 contact `${contact_id}`"}
                ],
            },
        ],
    ),
}


def template_for(record: Mapping[str, Any]) -> NotificationTemplate:
    name = record.get("template")
    try:
        return TEMPLATES[str(name)]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise Rejected(
            f"field template: unknown template {name!r}", f"known templates: {known}"
        ) from None


def _context(record: Mapping[str, Any]) -> dict[str, str]:
    context = {k: (v if v.strip() else BLANK) for k, v in (record.get("context") or {}).items()}
    if GREETING_KEY in context and not _is_name(context[GREETING_KEY]):
        context[GREETING_KEY] = GREETING_FALLBACK
    return context


def _is_name(value: str) -> bool:
    """Not a blank, an e-mail address or a phone number: nobody is greeted by those."""
    return value != BLANK and "@" not in value and not value.lstrip("+").isdigit()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _require(record: Mapping[str, Any], *parts: Any) -> dict[str, str]:
    """The record's context, after checking that it has every key ``parts`` name."""
    context = _context(record)
    needed = {
        key for part in parts for s in _strings(part) for key in Template(s).get_identifiers()
    }
    missing = sorted(needed - context.keys())
    if missing:
        raise Rejected(
            f"field context: template {record.get('template')!r} needs the key(s) "
            + ", ".join(repr(k) for k in missing),
            f"the context has: {', '.join(sorted(context)) or 'no keys'}",
        )
    return context


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def render_text(record: Mapping[str, Any]) -> tuple[str, str]:
    """Subject and plain-text body (e-mail, webhook). The record's own ``subject`` wins."""
    template = template_for(record)
    context = _require(record, template.text, [] if record.get("subject") else template.subject)
    subject = record.get("subject") or Template(template.subject).substitute(context)
    return _one_line(subject), Template(template.text).substitute(context)


def render_sms(record: Mapping[str, Any]) -> str:
    """One line of at most SMS_MAX_CHARS characters."""
    template = template_for(record)
    context = _require(record, template.sms)
    return _clip(_one_line(Template(template.sms).substitute(context)), SMS_MAX_CHARS)


def slack_escape(value: str) -> str:
    """Slack reads ``&``, ``<`` and ``>`` as control characters in mrkdwn (links,
    mentions such as ``<!channel>``): a contact's name must not ping a whole channel."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render_blocks(value: Any, context: dict[str, str], escaped: dict[str, str]) -> Any:
    if isinstance(value, dict):
        plain = value.get("type") == "plain_text"
        return {
            k: (
                _clip(Template(v).substitute(context), SLACK_HEADER_MAX)
                if plain and k == "text"
                else _render_blocks(v, context, escaped)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_render_blocks(item, context, escaped) for item in value]
    if isinstance(value, str):
        return _clip(Template(value).substitute(escaped), SLACK_TEXT_MAX)
    return value


def render_slack(record: Mapping[str, Any]) -> dict[str, Any]:
    """An incoming-webhook payload: ``text`` (the notification and fallback) and blocks."""
    template = template_for(record)
    context = _require(record, template.slack_text, template.slack_blocks)
    escaped = {k: slack_escape(v) for k, v in context.items()}
    payload: dict[str, Any] = {
        "text": _clip(Template(template.slack_text).substitute(escaped), SLACK_TEXT_MAX)
    }
    if template.slack_blocks:
        payload["blocks"] = _render_blocks(template.slack_blocks, context, escaped)
    return payload


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
        return when.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def render_webhook(record: Mapping[str, Any]) -> bytes:
    """The record as JSON (``issued_at`` in ISO 8601) plus ``rendered`` subject and text:
    receivers get the data to act on and the words to show."""
    subject, text = render_text(record)
    payload = {**record, "rendered": {"subject": subject, "text": text}}
    return json.dumps(
        payload, default=_jsonable, ensure_ascii=False, separators=(",", ":")
    ).encode()
