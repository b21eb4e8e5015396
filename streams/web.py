"""A worker's web endpoint: ``/metrics`` for Prometheus, and read-only JSON views
(``/<view>/<key>``) of its tables, served from a thread of its own."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

View = Callable[[str], dict[str, Any]]


def serve(bind: str, port: int, views: Mapping[str, View]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if path == "/metrics":
                self._answer(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                return
            name, _, key = path.strip("/").partition("/")
            view = views.get(name)
            if view is None or not key:
                self._answer(404, b'{"error": "not found"}', "application/json")
                return
            body = json.dumps(view(urllib.parse.unquote(key)), default=str).encode()
            self._answer(200, body, "application/json")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
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
