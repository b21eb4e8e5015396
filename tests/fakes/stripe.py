"""A local Stripe API (v1 customers, invoices, invoice items) for the billing sink's tests.

It speaks the documented shapes (docs.stripe.com/api): bearer auth with a secret key
(401 quoting the key masked, as Stripe does), form-encoded bodies with ``metadata[key]``
hashes, JSON objects with ``id`` / ``object``, lists as ``{"object": "list", "data"}``
newest first, and errors as ``{"error": {"type", "code", "param", "message"}}``.

Idempotency as Stripe documents it (docs.stripe.com/api/idempotent_requests): a POST's
``Idempotency-Key`` saves the status and body of the first request once the endpoint
began to execute; the same key with the same path and parameters gets that answer again,
with ``Idempotent-Replayed: true``; the same key with other parameters gets 400
``idempotency_error``; the same key while its first request still runs gets 409. A
request refused before it executes (auth, validation, a 429) saves nothing.

Failures are scripted like Stripe's: ``rate_limit`` (429, ``Stripe-Should-Retry: true``,
Retry-After), ``api_errors`` (500 ``api_error``; ``api_errors_on`` one path, mid-invoice),
``card_error`` (402 on the next request); an invoice in a currency it does not support
is refused (400, param ``currency``). ``executed`` lists each POST that really ran, so a
test can count what Stripe would have billed."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from multidict import MultiDictProxy

from tests.fakes import FakeServer, Scripted

CURRENCIES = {"usd", "eur", "gbp", "cad", "aud", "chf", "sek", "nok", "dkk", "jpy"}


class StripeError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, **fields: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "error": {
                "type": fields.pop("type", "invalid_request_error"),
                "message": message,
                **({"param": param} if param else {}),
                **fields,
            }
        }


@dataclass(frozen=True)
class Saved:
    path: str
    params: tuple[tuple[str, str], ...]
    status: int
    body: str


class FakeStripe(FakeServer):
    """Stripe on loopback. ``customers``, ``invoices`` and ``items`` hold the objects by
    id; ``replayed`` counts answers given again for an idempotency key."""

    def __init__(self, api_key: str = "sk_test_51FakeKeyForSwitchboardTests0000") -> None:
        super().__init__()
        self.api_key = api_key
        self.customers: dict[str, dict[str, Any]] = {}
        self.invoices: dict[str, dict[str, Any]] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.executed: list[tuple[str, str | None]] = []  # (path, idempotency key)
        self.replayed = 0
        self._saved: dict[str, Saved] = {}
        self._running: set[str] = set()
        self._failing: dict[str, tuple[int, int, int]] = {}
        self._ids = itertools.count(1)

    # -- what tests look at -------------------------------------------------------------

    def invoices_for(self, email: str) -> list[dict[str, Any]]:
        ids = {c["id"] for c in self.customers.values() if c["email"] == email}
        return [i for i in self.invoices.values() if i["customer"] in ids]

    def items_of(self, invoice_id: str) -> list[dict[str, Any]]:
        return [i for i in self.items.values() if i["invoice"] == invoice_id]

    def created(self, path: str) -> int:
        """How many POSTs to ``path`` really ran (replays excluded)."""
        return sum(1 for p, _ in self.executed if p == path)

    # -- scripting ----------------------------------------------------------------------

    def rate_limit(self, retry_after: str | None = "1", count: int = 1) -> None:
        body = _dumps(
            StripeError(
                429,
                "Too many requests hit the API too quickly. We recommend an exponential "
                "backoff of your requests.",
                code="rate_limit",
            ).body
        )
        headers = {"Stripe-Should-Retry": "true"}
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        self.fail_next(*[Scripted(429, body, headers)] * count)

    def api_errors(self, count: int = 1, status: int = 500) -> None:
        body = _dumps(
            StripeError(
                status, "An unknown error occurred; please try again.", type="api_error"
            ).body
        )
        self.fail_next(*[Scripted(status, body, {"Stripe-Should-Retry": "true"})] * count)

    def api_errors_on(self, path: str, count: int = 1, after: int = 0, status: int = 500) -> None:
        """Let ``after`` POSTs to ``path`` run, then answer the next ``count`` with Stripe's
        500 (before they run): a failure in the middle of an invoice."""
        self._failing[path] = (after, count, status)

    def card_error(self, message: str = "Your card was declined.") -> None:
        body = _dumps(
            StripeError(
                402, message, "payment_method", type="card_error", code="card_declined",
                decline_code="generic_decline",
            ).body
        )  # fmt: skip
        self.fail_next(Scripted(402, body, {"Stripe-Should-Retry": "false"}))

    # -- protocol -----------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/customers", self._list_customers)
        app.router.add_post("/v1/customers", self._idempotent(self._create_customer))
        app.router.add_post("/v1/invoices", self._idempotent(self._create_invoice))
        app.router.add_post("/v1/invoiceitems", self._idempotent(self._create_item))
        app.router.add_post("/v1/invoices/{invoice_id}/finalize", self._idempotent(self._finalize))

    def authorized(self, request: web.Request) -> web.StreamResponse | None:
        given = request.headers.get("Authorization", "")
        if given == f"Bearer {self.api_key}":
            return None
        key = given.removeprefix("Bearer ")
        masked = f"{key[:8]}****{key[-4:]}" if len(key) > 12 else "(none)"
        return _error(StripeError(401, f"Invalid API Key provided: {masked}"))

    def decorate(self, response: web.StreamResponse) -> None:
        response.headers.setdefault("Request-Id", f"req_{next(self._ids):014d}")

    def _idempotent(self, handler: Any) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            form = await request.post()
            after, count, status = self._failing.get(request.path, (0, 0, 0))
            if after:
                self._failing[request.path] = (after - 1, count, status)
            elif count:
                self._failing[request.path] = (0, count - 1, status)
                error = StripeError(status, "An unknown error occurred.", type="api_error")
                return _error(error, {"Stripe-Should-Retry": "true"})
            params = tuple(sorted((k, str(v)) for k, v in form.items()))
            key = request.headers.get("Idempotency-Key")
            if key is not None:
                saved = self._saved.get(key)
                if saved is not None:
                    if (saved.path, saved.params) != (request.path, params):
                        return _error(
                            StripeError(
                                400,
                                "Keys for idempotent requests can only be used with the same "
                                "parameters they were first used with. Try using a key other "
                                f"than '{key}' if you meant to execute a different request.",
                                type="idempotency_error",
                            )
                        )
                    self.replayed += 1
                    return web.Response(
                        status=saved.status,
                        text=saved.body,
                        content_type="application/json",
                        headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
                    )
                if key in self._running:
                    return _error(
                        StripeError(
                            409,
                            "There is currently another in-progress request using this "
                            f"Idempotent Key (that probably means you submitted twice, and "
                            f"the other request is still going through): {key}. Please try "
                            "again later.",
                            type="idempotency_error",
                        ),
                        {"Stripe-Should-Retry": "true"},
                    )
                self._running.add(key)
            try:
                try:
                    checked = _validate(request, form, self)
                except StripeError as exc:  # refused before it ran: nothing saved
                    return _error(exc)
                status, body = 200, _dumps(handler(request, checked))
                self.executed.append((request.path, key))
                if key is not None:
                    self._saved[key] = Saved(request.path, params, status, body)
                response = web.Response(status=status, text=body, content_type="application/json")
                if key is not None:
                    response.headers["Idempotency-Key"] = key
                return response
            finally:
                if key is not None:
                    self._running.discard(key)
                await asyncio.sleep(0)

        return handle

    async def _list_customers(self, request: web.Request) -> web.Response:
        email = request.query.get("email")
        limit = int(request.query.get("limit", "10"))
        found = [
            c for c in reversed(self.customers.values()) if email is None or c["email"] == email
        ]
        return web.json_response(
            {"object": "list", "url": "/v1/customers", "has_more": len(found) > limit,
             "data": found[:limit]}
        )  # fmt: skip

    def _create_customer(self, request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
        customer = {
            "id": f"cus_{next(self._ids):014d}",
            "object": "customer",
            "created": int(time.time()),
            "email": form.get("email"),
            "name": form.get("name"),
            "metadata": form.get("metadata", {}),
        }
        self.customers[customer["id"]] = customer
        return customer

    def _create_invoice(self, request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
        invoice = {
            "id": f"in_{next(self._ids):014d}",
            "object": "invoice",
            "created": int(time.time()),
            "customer": form["customer"],
            "currency": form["currency"],
            "collection_method": form.get("collection_method", "charge_automatically"),
            "days_until_due": int(form["days_until_due"]) if "days_until_due" in form else None,
            "auto_advance": form.get("auto_advance") == "true",
            "description": form.get("description"),
            "metadata": form.get("metadata", {}),
            "status": "draft",
            "number": None,
            "amount_due": 0,
            "total": 0,
        }
        self.invoices[invoice["id"]] = invoice
        if form.get("pending_invoice_items_behavior") == "include":
            for item in self.items.values():
                if item["customer"] == invoice["customer"] and item["invoice"] is None:
                    item["invoice"] = invoice["id"]
        return _with_lines(invoice, self)

    def _create_item(self, request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
        quantity = int(form.get("quantity", "1"))
        unit = int(form.get("unit_amount_decimal") or form.get("unit_amount") or 0)
        amount = int(form["amount"]) if "amount" in form else quantity * unit
        item = {
            "id": f"ii_{next(self._ids):014d}",
            "object": "invoiceitem",
            "customer": form["customer"],
            "invoice": form.get("invoice"),
            "currency": form["currency"],
            "description": form.get("description"),
            "quantity": quantity,
            "unit_amount_decimal": str(unit),
            "amount": amount,
            "metadata": form.get("metadata", {}),
        }
        self.items[item["id"]] = item
        return item

    def _finalize(self, request: web.Request, form: dict[str, Any]) -> dict[str, Any]:
        invoice = self.invoices[request.match_info["invoice_id"]]
        total = sum(i["amount"] for i in self.items_of(invoice["id"]))
        invoice |= {
            "status": "open",
            "number": f"SB-{len([i for i in self.invoices.values() if i['number']]) + 1:04d}",
            "amount_due": total,
            "total": total,
            "auto_advance": form.get("auto_advance", "true") == "true",
        }
        return _with_lines(invoice, self)


def _validate(request: web.Request, raw: MultiDictProxy[Any], fake: FakeStripe) -> dict[str, Any]:
    """The form as a dict (``metadata[k]`` as a hash), or the StripeError Stripe gives
    before the endpoint runs."""
    form: dict[str, Any] = {}
    for name, value in raw.items():
        if name.startswith("metadata[") and name.endswith("]"):
            form.setdefault("metadata", {})[name[len("metadata[") : -1]] = str(value)
        else:
            form[name] = str(value)
    path = request.path

    def required(name: str) -> str:
        if not form.get(name):
            raise StripeError(
                400, f"Missing required param: {name}.", name, code="parameter_missing"
            )
        return str(form[name])

    def customer() -> None:
        cid = required("customer")
        if cid not in fake.customers:
            raise StripeError(
                400, f"No such customer: '{cid}'", "customer", code="resource_missing"
            )

    def currency() -> None:
        value = required("currency")
        if value not in CURRENCIES:
            raise StripeError(
                400,
                f"Invalid currency: {value}. Stripe currently supports these currencies: "
                + ", ".join(sorted(CURRENCIES)),
                "currency",
                code="parameter_invalid_currency" if value.isalpha() else "parameter_invalid",
            )

    if path == "/v1/customers":
        if "email" in form and "@" not in form["email"]:
            raise StripeError(400, "Invalid email address: " + form["email"], "email",
                              code="email_invalid")  # fmt: skip
    elif path == "/v1/invoices":
        customer()
        currency()
        if form.get("collection_method") == "send_invoice" and "days_until_due" not in form:
            raise StripeError(
                400,
                "Missing required param: days_until_due (or due_date) with send_invoice.",
                "days_until_due",
                code="parameter_missing",
            )
    elif path == "/v1/invoiceitems":
        customer()
        currency()
        invoice_id = form.get("invoice")
        if invoice_id is not None:
            invoice = fake.invoices.get(invoice_id)
            if invoice is None:
                raise StripeError(400, f"No such invoice: '{invoice_id}'", "invoice",
                                  code="resource_missing")  # fmt: skip
            if invoice["status"] != "draft":
                raise StripeError(
                    400,
                    f"You can only add invoice items to draft invoices; {invoice_id} is "
                    f"{invoice['status']}.",
                    "invoice",
                    code="invoice_not_editable",
                )
            if invoice["currency"] != form["currency"]:
                raise StripeError(400, "The currency of the invoice item must match the "
                                  "invoice's.", "currency")  # fmt: skip
        if "amount" not in form and "unit_amount_decimal" not in form and "unit_amount" not in form:
            raise StripeError(400, "Missing required param: amount.", "amount",
                              code="parameter_missing")  # fmt: skip
    else:  # finalize
        invoice_id = request.match_info["invoice_id"]
        invoice = fake.invoices.get(invoice_id)
        if invoice is None:
            raise StripeError(404, f"No such invoice: '{invoice_id}'", "invoice",
                              code="resource_missing")  # fmt: skip
        if invoice["status"] != "draft":
            raise StripeError(
                400,
                "This invoice is already finalized, you can't re-finalize a non-draft invoice.",
                code="invoice_not_editable",
            )
    return form


def _with_lines(invoice: dict[str, Any], fake: FakeStripe) -> dict[str, Any]:
    lines = fake.items_of(invoice["id"])
    return {**invoice, "lines": {"object": "list", "data": lines, "has_more": False}}


def _error(exc: StripeError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=exc.status,
        text=_dumps(exc.body),
        content_type="application/json",
        headers=headers or {},
    )


def _dumps(body: Any) -> str:
    return json.dumps(body)


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    with FakeStripe.running() as fake:
        yield fake
