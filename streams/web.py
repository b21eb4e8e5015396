"""A worker's web endpoint: ``/metrics`` for Prometheus, and read-only JSON views
(``/<view>/<key>``) of its tables, served from a thread of its own.

The views hold contacts' personal data: each request must carry ``Authorization: Bearer
<token>`` (the token from SWITCHBOARD_SECRET_VIEWS_TOKEN); without a token configured
the views are off. ``/metrics`` holds no personal data and stays open to the scraper."""

from __future__ import annotations

import hmac
import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from streams.settings import secret_env

View = Callable[[str], dict[str, Any]]


TOKEN_SECRET = "views_token"


def serve(
    bind: str, port: int, views: Mapping[str, View], token: str | None
) -> ThreadingHTTPServer:
    expected = f"Bearer {token}".encode() if token else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                return
            name, _, key = path.strip("/").partition("/")
            view = views.get(name)
            if view is None or not key:
                self._json(404, {"error": "not found"})
                return
            if expected is None:
                self._json(403, {"error": f"views are off: set {secret_env(TOKEN_SECRET)}"})
                return
            given = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                self._json(401, {"error": "a bearer token is required"}, bearer=True)
                return
            self._json(200, view(urllib.parse.unquote(key)))

        def _json(self, status: int, found: dict[str, Any], bearer: bool = False) -> None:
            body = json.dumps(found, default=str).encode()
            self._answer(status, body, "application/json", bearer)

        def _answer(
            self, status: int, body: bytes, content_type: str, bearer: bool = False
        ) -> None:
            self.send_response(status)
            if bearer:
                self.send_header("WWW-Authenticate", 'Bearer realm="switchboard"')
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # scrapes every few seconds: no access log
            pass

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    return server
