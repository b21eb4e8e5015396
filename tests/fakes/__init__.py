"""Local HTTP servers that speak a SaaS API's documented protocol, for tests.

Each fake runs aiohttp on 127.0.0.1 (port 0) in a thread of its own with its own event
loop, so a sync pytest fixture can start it and any test can talk to it, whether it
drives its client with ``asyncio.run`` or anything else. A fake records every request it
receives and can be scripted to fail the next requests (429, 5xx bursts, slow or malformed
answers), the way the real service fails."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when it is not JSON, or None when empty


@dataclass(frozen=True)
class Scripted:
    """An answer the server gives instead of handling a request."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # answer this late (a timeout, when longer than the client waits)
    content_type: str = "application/json"


class FakeServer:
    """The part every fake shares: thread, loop, recording, scripted failures."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._script: deque[Scripted] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""
        # After handling a request, answer this late: the write happened, the client does
        # not know it yet (a sink killed now has a write its offsets do not cover).
        self.answer_delay_s = 0.0
        self._down_until = 0.0
        self._outage_status = 503

    # -- lifecycle -----------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def authorized(self, request: web.Request) -> web.StreamResponse | None:
        """None when the credentials are good, else the service's own refusal."""
        return None

    def decorate(self, response: web.StreamResponse) -> None:
        """Headers the service puts on every answer (rate-limit and usage headers)."""

    def start(self) -> str:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=type(self).__name__)
        self._thread.daemon = True
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout=10)
        return self.url

    async def _start(self) -> str:
        app = web.Application(middlewares=[self._middleware])
        self.routes(app)
        # Short shutdown grace: a scripted slow answer must not hold the test's teardown.
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = self._runner = None

    @classmethod
    @contextmanager
    def running(cls, *args: Any, **kwargs: Any) -> Iterator[Self]:
        """The fake, started for the ``with`` block and stopped after it."""
        fake = cls(*args, **kwargs)
        fake.start()
        try:
            yield fake
        finally:
            fake.stop()

    # -- scripting -----------------------------------------------------------------------

    def fail_next(self, *answers: Scripted) -> None:
        """Answer the next requests (after recording and the auth check) with these."""
        with self._lock:
            self._script.extend(answers)

    def server_errors(self, count: int, status: int = 503, body: str = "") -> None:
        self.fail_next(*[Scripted(status, body, content_type="text/html")] * count)

    def outage(self, seconds: float, status: int = 503) -> None:
        """Answer every request with ``status`` for the next ``seconds``."""
        with self._lock:
            self._down_until = time.monotonic() + seconds
            self._outage_status = status

    def slow(self, delay_s: float) -> None:
        self.fail_next(Scripted(200, "{}", delay_s=delay_s))

    def malformed_400(self, body: str = "<html><body>400 Bad Request</body></html>") -> None:
        self.fail_next(Scripted(400, body, content_type="text/html"))

    # -- plumbing ------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        text = await request.text()
        body: Any = None
        if text:
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        with self._lock:
            self.requests.append(
                Received(request.method, request.path, dict(request.headers), body)
            )
        response = self.authorized(request)
        scripted = None
        if response is None:
            with self._lock:
                if time.monotonic() < self._down_until:
                    scripted = Scripted(self._outage_status, "down", content_type="text/plain")
                else:
                    scripted = self._script.popleft() if self._script else None
        if scripted is not None:
            if scripted.delay_s:
                await asyncio.sleep(scripted.delay_s)
            response = web.Response(
                status=scripted.status,
                text=scripted.body,
                headers=scripted.headers,
                content_type=scripted.content_type,
            )
        if response is None:
            response = await handler(request)
            if self.answer_delay_s:
                await asyncio.sleep(self.answer_delay_s)
        self.decorate(response)
        return response


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
