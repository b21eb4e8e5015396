"""The one HTTP helper every destination calls through, against a real local server: an
answer is read up to a bound, however much the destination sends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest
from aiohttp import web

from connectors.delivery import Retryable
from connectors.http import MAX_ANSWER_BYTES, Answer, request
from tests.fakes import FakeServer


class Flood(FakeServer):
    """Answers 200 with a body that never ends (issue 20, item 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/flood", self._flood)
        app.router.add_post("/small", self._small)
        app.router.add_post("/bogus-charset", self._bogus)

    async def _flood(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            while self.sent < 50 * MAX_ANSWER_BYTES:
                await response.write(chunk)
                self.sent += len(chunk)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client stopped reading, as it should
        return response

    async def _small(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def _bogus(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body="caf\u00e9".encode(), headers={"Content-Type": "text/plain; charset=bogus-9"}
        )


@pytest.fixture
def flood() -> Iterator[Flood]:
    with Flood.running() as server:
        yield server


def call(url: str) -> Answer:
    async def go() -> Answer:
        async with aiohttp.ClientSession() as session:
            return await request(session, "POST", url, what="flood", timeout_s=30)

    return asyncio.run(go())


def test_an_answer_past_the_bound_is_a_retryable_failure_read_no_further(flood: Flood) -> None:
    with pytest.raises(Retryable, match=f"more than {MAX_ANSWER_BYTES} bytes"):
        call(flood.url + "/flood")
    assert flood.sent < 5 * MAX_ANSWER_BYTES  # it stopped reading near the bound


def test_an_answer_within_the_bound_is_read_whole(flood: Flood) -> None:
    answer = call(flood.url + "/small")
    assert answer.status == 200 and answer.json() == {"ok": True}


def test_an_answer_in_an_unknown_charset_is_read_as_utf8(flood: Flood) -> None:
    answer = call(flood.url + "/bogus-charset")
    assert answer.text == "caf\u00e9"
