"""Invoices in Stripe, through its REST API (docs.stripe.com/api): form-encoded POSTs,
``Authorization: Bearer sk_...``, JSON answers.

One CREATE_INVOICE is four steps, each safe to repeat:

1. the customer: ``GET /v1/customers?email=`` (the list is read-after-write consistent,
   the search API is not), else ``POST /v1/customers``;
2. a draft invoice: ``POST /v1/invoices`` with ``pending_invoice_items_behavior=exclude``
   and ``auto_advance=false``; the draft comes first and each item names it, so an item
   left over by a failed command can never land on another invoice, and Stripe does not
   finalise a half-built draft by itself an hour later;
3. one ``POST /v1/invoiceitems`` per line (``invoice``, ``quantity``,
   ``unit_amount_decimal`` in the currency's minor unit);
4. ``POST /v1/invoices/{id}/finalize`` with ``auto_advance=true``: Stripe then e-mails it
   (``send_invoice``) or charges it (``charge_automatically``).

Every POST carries ``Idempotency-Key: <command_id>:<step>``: Stripe keeps the first answer
to a key for 24 hours and replays it for a request with the same parameters, so a retry,
a redelivery or a sink killed mid-call repeats no step; the runtime's delivery ledger
skips a command already delivered after that.

Errors (docs.stripe.com/api/errors): ``{"error": {"type", "code", "param", "message"}}``.
``Stripe-Should-Retry`` decides when Stripe sends it; otherwise 429, 409 (a concurrent
request with the same key) and 5xx are Retryable, with Retry-After when given, and any
other 4xx is Rejected, naming the parameter Stripe names. No answer keeps the API key."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from connectors.delivery import Outcome, Rejected, Retryable
from connectors.http import ANSWER_EXCERPT, Answer, request, retry_after_seconds
from connectors.sinks.notify import deliver_each

# The most items Stripe takes on one invoice.
MAX_LINES = 250
_KEYS = re.compile(r"\b(sk|rk)_(live|test)_[A-Za-z0-9]+")


class InvoiceLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: Annotated[str, Field(min_length=1, max_length=500)]
    quantity: Annotated[int, Field(ge=1)]
    unit_amount_minor: Annotated[int, Field(ge=0)]


class CreateInvoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    job_id: Annotated[str, Field(min_length=1, max_length=200)]
    job_system: Annotated[str, Field(min_length=1, max_length=100)]
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=512)]
    name: Annotated[str, Field(max_length=256)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Za-z]{3}$")]
    amount_minor: Annotated[int, Field(gt=0)]
    lines: Annotated[list[InvoiceLine], Field(min_length=1, max_length=MAX_LINES)]
    description: Annotated[str, Field(max_length=500)] | None = None

    @model_validator(mode="after")
    def _total(self) -> CreateInvoice:
        total = sum(line.quantity * line.unit_amount_minor for line in self.lines)
        if total != self.amount_minor:
            raise ValueError(f"amount_minor {self.amount_minor} is not the sum of lines ({total})")
        return self


class Command(BaseModel):
    model_config = ConfigDict(extra="ignore")

    command_id: Annotated[str, Field(min_length=1, max_length=200)]
    command_type: Literal["CREATE_INVOICE"]
    contact_id: Annotated[str, Field(min_length=1, max_length=200)]
    payload: CreateInvoice


def parse_command(record: dict[str, Any]) -> Command:
    """The command, or Rejected naming every field that is wrong."""
    try:
        return Command.model_validate(record)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in e['loc']) or '(command)'}: {e['msg']}"
            for e in exc.errors()
        )
        key = record.get("command_id") or "(no command_id)"
        kind = record.get("command_type") or "command"
        raise Rejected(f"invalid {kind} {key}: {problems}") from None


class StripeInvoicer:
    """The ``stripe`` destination of the billing sink."""

    name = "stripe"
    max_batch = 1  # four calls per command; the runtime runs commands side by side
    in_order = False

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.stripe.com",
        *,
        collection_method: Literal["send_invoice", "charge_automatically"] = "send_invoice",
        days_until_due: int = 30,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.collection_method = collection_method
        self.days_until_due = days_until_due
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._session: aiohttp.ClientSession | None = None

    async def deliver(self, records: Sequence[dict[str, Any]]) -> list[Outcome]:
        return await deliver_each(records, self._invoice)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _invoice(self, record: dict[str, Any]) -> None:
        command = parse_command(record)
        key, bill = command.command_id, command.payload
        customer = await self._customer(command)
        metadata = {
            "switchboard_command_id": key,
            "switchboard_contact_id": command.contact_id,
            "job_id": bill.job_id,
            "job_system": bill.job_system,
        }
        form: dict[str, str] = {
            "customer": customer,
            "currency": bill.currency.lower(),
            "collection_method": self.collection_method,
            "auto_advance": "false",
            "pending_invoice_items_behavior": "exclude",
            **_nested("metadata", metadata),
        }
        if self.collection_method == "send_invoice":
            form["days_until_due"] = str(self.days_until_due)
        if bill.description:
            form["description"] = bill.description
        invoice = await self._post("/v1/invoices", form, f"{key}:invoice", "create invoice")
        invoice_id = _id(invoice, "create invoice")
        for n, line in enumerate(bill.lines):
            item = {
                "customer": customer,
                "invoice": invoice_id,
                "currency": bill.currency.lower(),
                "description": line.description,
                "quantity": str(line.quantity),
                "unit_amount_decimal": str(line.unit_amount_minor),
                **_nested("metadata", {"switchboard_command_id": key, "line": str(n)}),
            }
            await self._post("/v1/invoiceitems", item, f"{key}:item:{n}", f"invoice item {n}")
        await self._post(
            f"/v1/invoices/{invoice_id}/finalize",
            {"auto_advance": "true"},
            f"{key}:finalize",
            "finalize invoice",
        )

    async def _customer(self, command: Command) -> str:
        """The Stripe customer with the bill's e-mail: the one Switchboard made for this
        contact if there are several, else the oldest (a customer added later does not
        change the answer, nor so the invoice's parameters under its idempotency key);
        a new one if there is none."""
        bill = command.payload
        answer = await self._call(
            "GET",
            "/v1/customers",
            "find customer",
            params={"email": bill.email, "limit": "100"},
        )
        found = answer.json()
        customers = found.get("data") if isinstance(found, dict) else None
        if not isinstance(customers, list):
            raise Retryable("stripe find customer: an answer without a data list", _shown(answer))
        ours = [
            c
            for c in customers
            if isinstance(c, dict)
            and (c.get("metadata") or {}).get("switchboard_contact_id") == command.contact_id
        ]
        for customer in reversed(ours or customers):  # Stripe lists the newest first
            if isinstance(customer, dict) and isinstance(customer.get("id"), str):
                return str(customer["id"])
        form = {
            "email": bill.email,
            **_nested("metadata", {"switchboard_contact_id": command.contact_id}),
        }
        if bill.name:
            form["name"] = bill.name
        created = await self._post(
            "/v1/customers", form, f"{command.command_id}:customer", "create customer"
        )
        return _id(created, "create customer")

    async def _post(
        self, path: str, form: dict[str, str], idempotency_key: str, what: str
    ) -> dict[str, Any]:
        answer = await self._call(
            "POST", path, what, data=form, headers={"Idempotency-Key": idempotency_key}
        )
        body = answer.json()
        if not isinstance(body, dict):
            raise Retryable(f"stripe {what}: an answer that is not a JSON object", _shown(answer))
        return body

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Answer:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {**self._headers, **kwargs.pop("headers", {})}
        answer = await request(
            self._session,
            method,
            self.base_url + path,
            what=f"stripe {what}",
            timeout_s=self.timeout_s,
            headers=headers,
            allow_redirects=False,
            **kwargs,
        )
        _raise_for(answer, f"stripe {what}", self._api_key)
        return answer


def _raise_for(answer: Answer, what: str, api_key: str) -> None:
    status = answer.status
    if 200 <= status < 300:
        return
    body = answer.json()
    error = body.get("error") if isinstance(body, dict) else None
    shown = _shown(answer, api_key)
    reason = f"{what}: HTTP {status}"
    if isinstance(error, dict):
        kind = "/".join(str(error[k]) for k in ("type", "code", "decline_code") if error.get(k))
        reason += f" {kind}" if kind else ""
        if error.get("param"):
            reason += f": field {error['param']}"
        if error.get("message"):
            reason += f": {_redacted(str(error['message']), api_key)}"
    should_retry = (answer.headers.get("Stripe-Should-Retry") or "").lower()
    retry = status in (409, 429) or status >= 500
    if should_retry in ("true", "false"):
        retry = should_retry == "true"
    if retry:
        wait = retry_after_seconds(answer.headers.get("Retry-After"))
        raise Retryable(reason, shown, retry_after=wait)
    raise Rejected(reason, shown)


def _shown(answer: Answer, api_key: str = "") -> str:
    text = f"HTTP {answer.status} {answer.text[:ANSWER_EXCERPT]}".strip()
    return _redacted(text, api_key)


def _redacted(text: str, api_key: str) -> str:
    """Stripe masks a key it quotes (sk_test_****1234); a proxy or a fake may not."""
    if api_key:
        text = text.replace(api_key, "[redacted]")
    return _KEYS.sub("[redacted]", text)


def _nested(name: str, values: dict[str, str]) -> dict[str, str]:
    """Stripe's form encoding of a hash: ``metadata[key]=value``."""
    return {f"{name}[{k}]": v for k, v in values.items()}


def _id(body: dict[str, Any], what: str) -> str:
    value = body.get("id")
    if not isinstance(value, str) or not value:
        raise Retryable(f"stripe {what}: an answer without an id", str(body)[:ANSWER_EXCERPT])
    return value
