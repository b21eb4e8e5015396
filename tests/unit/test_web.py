"""The worker's web port on loopback (issue 20, item 15): the contact views answer only a
request with the bearer token; /metrics stays open to the scraper, and so does /healthz
where the process says when it is ready (the caller lookup)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from streams import metrics
from streams.web import serve
from tests.conftest import free_port

TOKEN = "views-token-3e1a"


def fetch(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read()


def running(token: str | None) -> Iterator[int]:
    port = free_port()
    views = {"contacts": lambda key: {"contact_id": key, "state": {"email": "ana@example.com"}}}
    server = serve("127.0.0.1", port, views, token)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def port() -> Iterator[int]:
    yield from running(TOKEN)


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN[:-1]])
def test_a_view_without_the_token_is_401_and_holds_no_data(port: int, token: str | None) -> None:
    status, headers, body = fetch(port, "/contacts/c-1", token)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert b"ana@example.com" not in body and b"c-1" not in body


def test_a_view_with_the_token_answers(port: int) -> None:
    status, _, body = fetch(port, "/contacts/c-1", TOKEN)
    assert status == 200
    assert json.loads(body) == {"contact_id": "c-1", "state": {"email": "ana@example.com"}}


def test_metrics_need_no_token(port: int) -> None:
    status, headers, body = fetch(port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"ana@example.com" not in body


def test_metrics_can_be_asked_for_one_metrics_series_only(port: int) -> None:
    metrics.EVENTS.labels(stage="web-test", event_type="FORM_SUBMITTED", source="forms").inc()
    status, _, body = fetch(port, "/metrics?name[]=switchboard_events_total")
    samples = [line for line in body.decode().splitlines() if not line.startswith("#")]
    assert status == 200 and samples
    assert all(line.startswith("switchboard_events_total{") for line in samples)
    _, _, everything = fetch(port, "/metrics")
    assert b"switchboard_dead_letters_total" in everything


def test_a_worker_without_a_token_serves_no_view() -> None:
    for port in running(None):
        status, _, body = fetch(port, "/contacts/c-1", "anything")
        assert status == 403
        assert json.loads(body) == {"error": "views are off: set SWITCHBOARD_SECRET_VIEWS_TOKEN"}


def test_an_unknown_path_is_404_with_or_without_the_token(port: int) -> None:
    assert fetch(port, "/contacts/", TOKEN)[0] == 404
    assert fetch(port, "/secrets/x")[0] == 404


def test_healthz_is_503_until_ready_then_200_without_a_token() -> None:
    port = free_port()
    ready = threading.Event()
    server = serve("127.0.0.1", port, {}, TOKEN, ready=ready.is_set)
    try:
        status, _, body = fetch(port, "/healthz")
        assert (status, json.loads(body)) == (503, {"ready": False})
        ready.set()
        status, _, body = fetch(port, "/healthz")
        assert (status, json.loads(body)) == (200, {"ready": True})
    finally:
        server.shutdown()
        server.server_close()


def test_a_process_that_says_nothing_of_readiness_has_no_healthz(port: int) -> None:
    assert fetch(port, "/healthz", TOKEN)[0] == 404
