"""A process's web endpoint: ``/metrics`` for Prometheus, and read-only JSON views
(``/<view>/<key>``, or a ``/path?query`` answered by a query) served from threads of
their own: a worker's tables, the caller lookup's view.

The views hold contacts' personal data: each request must carry ``Authorization: Bearer
<token>`` (a worker's from SWITCHBOARD_SECRET_VIEWS_TOKEN); without a token configured
the views are off. ``/metrics`` holds no personal data and stays open to the scraper, as
does ``/healthz`` for a process that says when it is ready (the orchestrator's probe)."""

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
# A query's parameters (each given once) in; the status and the JSON answer out.
Query = Callable[[dict[str, str]], tuple[int, dict[str, Any]]]


TOKEN_SECRET = "views_token"
# The caller lookup (processors.lookup) and its token, which the gateway carries to it.
LOOKUP_PATH = "/v1/contacts/lookup"
LOOKUP_TOKEN_SECRET = "lookup_token"


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog of 5 drops connections in a burst (a client then
    # waits a second for its SYN to be sent again): callers come in bursts.
    request_queue_size = 128
    daemon_threads = True


def serve(
    bind: str,
    port: int,
    views: Mapping[str, View],
    token: str | None,
    queries: Mapping[str, Query] | None = None,
    token_secret: str = TOKEN_SECRET,
    ready: Callable[[], bool] | None = None,
) -> ThreadingHTTPServer:
    """``ready``, when given, answers ``/healthz``: 200 once it is true, 503 before (a
    readiness probe keeps the pod out of its Service until then)."""
    expected = f"Bearer {token}".encode() if token else None
    routes: Mapping[str, Query] = queries or {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/metrics":
                # ?name[]=... as prometheus_client's own handler: only those series (a
                # frequent reader of one counter does not make the worker render all).
                names = urllib.parse.parse_qs(url.query).get("name[]")
                registry = REGISTRY.restricted_registry(names) if names else REGISTRY
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                return
            if url.path == "/healthz" and ready is not None:
                up = ready()
                self._json(200 if up else 503, {"ready": up})
                return
            query = routes.get(url.path)
            name, _, key = url.path.strip("/").partition("/")
            view = views.get(name)
            if query is None and (view is None or not key):
                self._json(404, {"error": "not found"})
                return
            if expected is None:
                self._json(403, {"error": f"views are off: set {secret_env(token_secret)}"})
                return
            given = self.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                self._json(401, {"error": "a bearer token is required"}, bearer=True)
                return
            if query is not None:
                params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
                if any(len(values) > 1 for values in params.values()):
                    self._json(400, {"error": "each parameter may be given once"})
                    return
                status, found = query({k: v[0] for k, v in params.items()})
                self._json(status, found)
                return
            assert view is not None
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

    server = _Server((bind, port), Handler)
    threading.Thread(target=server.serve_forever, name="web", daemon=True).start()
    return server
