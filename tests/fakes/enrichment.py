"""An enrichment provider on loopback, in the shape of the well-known company/person APIs
(Clearbit's Company and Person "find" endpoints; Apollo's are alike):

- ``GET /v2/companies/find?domain=acme.com``: 200 with the company (``name``, ``domain``,
  ``category.industry``, ``metrics.employees``, ``metrics.annualRevenue``,
  ``geo.countryCode``), 404 ``{"error": {"type": "unknown_record"}}`` when unknown, 422
  without a domain;
- ``GET /v2/people/find?email=ana@acme.com``: the person (``name.fullName``,
  ``employment.title``, ``employment.seniority``, ``employment.name``), 404 likewise;
- ``Authorization: Bearer <key>`` on every call, else 401 ``{"error": {"type":
  "auth_required"}}``.

Failures are scripted with FakeServer's helpers: 429 with Retry-After, 5xx, slow answers."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer, Scripted, json_response


def error(status: int, kind: str, message: str) -> web.Response:
    return json_response({"error": {"type": kind, "message": message}}, status)


def rate_limited(retry_after: int) -> Scripted:
    body = json.dumps({"error": {"type": "rate_limit", "message": "Rate limit exceeded"}})
    return Scripted(429, body, headers={"Retry-After": str(retry_after)})


class FakeEnrichment(FakeServer):
    def __init__(
        self,
        key: str,
        companies: dict[str, dict[str, Any]] | None = None,
        people: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.key = key
        self.companies = companies or {}
        self.people = people or {}
        self.lookups: list[tuple[str, str]] = []  # (companies|people, value) answered

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/v2/companies/find", self._company)
        app.router.add_get("/v2/people/find", self._person)

    def authorized(self, request: web.Request) -> web.StreamResponse | None:
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return error(401, "auth_required", "API key is missing or invalid")
        return None

    def looked_up(self, kind: str) -> list[str]:
        """The values the handler answered for ``kind`` (companies, people), in order."""
        return [value for k, value in self.lookups if k == kind]

    async def _company(self, request: web.Request) -> web.StreamResponse:
        domain = request.query.get("domain", "").lower()
        self.lookups.append(("companies", domain))
        if not domain:
            return error(422, "invalid_request", "domain is required")
        company = self.companies.get(domain)
        if company is None:
            return error(404, "unknown_record", f"Unknown company {domain}")
        return json_response({"domain": domain, **company})

    async def _person(self, request: web.Request) -> web.StreamResponse:
        email = request.query.get("email", "").lower()
        self.lookups.append(("people", email))
        if not email:
            return error(422, "invalid_request", "email is required")
        person = self.people.get(email)
        if person is None:
            return error(404, "unknown_record", f"Unknown person {email}")
        return json_response({"email": email, **person})
