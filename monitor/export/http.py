"""HTTP endpoints: ``/metrics`` (Prometheus text format), ``/healthz``, ``/readyz``.

``/healthz`` answers 200 while the process serves requests and its main loop has
ticked recently; ``/readyz`` answers 200 only when the agent can do its job
(partitions assigned and a model loaded), so an orchestrator routes no work, and
Prometheus' ``up`` stays distinct from readiness.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, why = self.server.healthy()
            self._reply(200 if ok else 503, why.encode(), "text/plain")
        elif path == "/readyz":
            ok, why = self.server.ready()
            self._reply(200 if ok else 503, why.encode(), "text/plain")
        else:
            self._reply(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes would flood the log
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 healthy: Callable[[], tuple[bool, str]], ready: Callable[[], tuple[bool, str]]) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.healthy = healthy
        self.ready = ready


class MetricsServer:
    """Serves the endpoints from a background thread; ``close`` stops it."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 healthy: Callable[[], tuple[bool, str]], ready: Callable[[], tuple[bool, str]]) -> None:
        self._server = _Server((host, port), registry, healthy, ready)
        self._thread = threading.Thread(target=self._server.serve_forever, name="attnmon-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
