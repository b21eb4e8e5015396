"""Switchboard's own documented webhooks, for systems without a public webhook format of
their own: web forms (any site builder that can POST JSON) and field-service jobs.
Both are signed like Stripe: ``X-Switchboard-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
"<t>.<body>">``, five minutes' tolerance. The formats are the models below."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, field_validator, model_validator

from connectors.sources import canonical, identity, signatures
from connectors.sources.base import Event, Rejected, Source, Time, WebhookRequest, validated
from streams.settings import DEFAULT_JOB_SYSTEMS

HEADER = "X-Switchboard-Signature"
# A job's ``system`` when the payload names none.
JOBS_SYSTEM = "fieldservice"


def verify(request: WebhookRequest, secret: bytes, now: float) -> None:
    signatures.timestamped_hmac(
        request.header(HEADER), request.body, secret, now, signatures.DEFAULT_TOLERANCE_S
    )


class FormSubmission(BaseModel):
    """POST /webhooks/forms"""

    submission_id: str
    form_id: str
    submitted_at: Time
    form_name: str | None = None
    page_url: str | None = None
    email: str | None = None
    phone: str | None = None
    fields: dict[str, str] = Field(default_factory=dict)
    utm: dict[str, str] = Field(default_factory=dict)


def parse_form(request: WebhookRequest, received: datetime) -> list[Event]:
    form = validated(FormSubmission, request.json())
    return [
        canonical.event(
            system="webform",
            provider_event_id=form.submission_id,
            event_type="FORM_SUBMITTED",
            event_time=form.submitted_at,
            received=received,
            identity=identity.identity(email_address=form.email, phone_number=form.phone),
            payload={
                "form_id": form.form_id,
                "form_name": form.form_name,
                "page_url": form.page_url,
                "fields": form.fields,
                "utm": form.utm,
            },
            profile=canonical.profile_of("self", name=form.fields.get("name")),
        )
    ]


class JobLineItem(BaseModel):
    description: Annotated[str, Field(min_length=1, max_length=500)]
    quantity: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    unit_amount_minor: Annotated[int, Field(ge=0)]


class Job(BaseModel):
    id: str
    type: str
    status: str
    previous_status: str | None = None
    technician: str | None = None
    scheduled_for: Time | None = None
    completed_at: Time | None = None
    # What the customer pays (a billable job is invoiced once completed); all optional, so
    # a system that sends none of it still sends valid jobs.
    billable: bool = False
    amount_minor: Annotated[int, Field(ge=0)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")] | None = None
    # 250: the most items a Stripe invoice takes.
    line_items: list[JobLineItem] = Field(default_factory=list, max_length=250)

    @field_validator("currency")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @model_validator(mode="after")
    def _amounts_agree(self) -> Job:
        if (self.amount_minor is not None or self.line_items) and self.currency is None:
            raise ValueError("currency is needed with amount_minor or line_items")
        if self.line_items and self.amount_minor is not None:
            total = sum(i.quantity * i.unit_amount_minor for i in self.line_items)
            if total != self.amount_minor:
                raise ValueError(
                    f"amount_minor {self.amount_minor} is not the sum of line_items ({total})"
                )
        return self


class JobCustomer(BaseModel):
    id: str | None = None
    email: str | None = None
    phone: str | None = None
    crm_id: str | None = None
    name: str | None = None
    address: str | None = None
    postcode: str | None = None


class JobEvent(BaseModel):
    """POST /webhooks/jobs: a job was created, changed status or was completed."""

    event_id: str
    occurred_at: Time
    job: Job
    customer: JobCustomer
    system: str = JOBS_SYSTEM


def parse_job(
    request: WebhookRequest, received: datetime, systems: frozenset[str] = frozenset()
) -> list[Event]:
    """``systems``: the job systems a payload may name besides JOBS_SYSTEM."""
    hook = validated(JobEvent, request.json())
    _check_system(hook.system, systems)
    job, customer = hook.job, hook.customer
    return [
        canonical.event(
            system=hook.system,
            provider_event_id=hook.event_id,
            event_type="JOB_STATUS_CHANGED",
            event_time=hook.occurred_at,
            received=received,
            identity=identity.identity(
                email_address=customer.email,
                phone_number=customer.phone,
                crm_id=customer.crm_id,
                external_ids={hook.system: customer.id or ""},
            ),
            payload={
                "job_id": job.id,
                "job_type": job.type,
                "status": job.status,
                "previous_status": job.previous_status,
                "technician": job.technician,
                "scheduled_for": job.scheduled_for,
                "completed_at": job.completed_at,
                "billable": job.billable,
                "amount_minor": job.amount_minor,
                "currency": job.currency,
                "line_items": [item.model_dump() for item in job.line_items],
            },
            # The field-service system's customer record, which its office staff keep.
            profile=canonical.profile_of(
                "crm", name=customer.name, address=customer.address, postcode=customer.postcode
            ),
        )
    ]


def _check_system(system: str, systems: frozenset[str]) -> None:
    # ``system`` is a metric label, an external-id key and the event id's namespace:
    # only configured names (never another source's, see jobs_source) may be used.
    if system != JOBS_SYSTEM and system not in systems:
        shown = system if len(system) <= 40 else system[:40] + "..."
        allowed = ", ".join(sorted({JOBS_SYSTEM, *systems}))
        raise Rejected(
            f"field system: {shown!r} is not a configured job system (job_systems: {allowed})",
            field="system",
        )


def jobs_source(systems: Iterable[str], reserved: Iterable[str] = ()) -> Source:
    """The jobs source accepting ``systems``; ValueError if one is ``reserved`` (another
    source's name or system: a job named "stripe" would dedupe against Stripe's events)."""
    allowed = frozenset(systems)
    clashing = sorted(allowed & set(reserved))
    if clashing:
        raise ValueError(f"job_systems may not name another source: {', '.join(clashing)}")

    def parse(request: WebhookRequest, received: datetime) -> list[Event]:
        return parse_job(request, received, allowed)

    return Source(
        name="jobs",
        system=JOBS_SYSTEM,
        description="field-service job created / status changed / completed (Switchboard format)",
        verify=verify,
        parse=parse,
        time_field="occurred_at",
    )


FORMS = Source(
    name="forms",
    system="webform",
    description="generic web-form submission (Switchboard format)",
    verify=verify,
    parse=parse_form,
    time_field="submitted_at",
)
JOBS = jobs_source(DEFAULT_JOB_SYSTEMS)
