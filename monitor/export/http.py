"""HTTP endpoints: ``/metrics`` (Prometheus exposition), ``/healthz``, ``/readyz``, and the
live page: ``/`` (HTML, ``monitor.export.page``) and ``/api/state`` (the same snapshot as JSON).

``/metrics`` is prometheus_client's own WSGI exposition
(``prometheus_client.make_wsgi_app``), so it negotiates what a scraper asks
for: OpenMetrics for ``Accept: application/openmetrics-text`` (the format
Prometheus prefers), the text format otherwise, gzip for
``Accept-Encoding: gzip``, and ``?name[]=...`` to restrict the families.

``/healthz`` answers 200 while the process serves requests and its main loop has
ticked recently; ``/readyz`` answers 200 only when the agent can do its job
(partitions assigned and a model loaded), so an orchestrator routes no work, and
Prometheus' ``up`` stays distinct from readiness. Both take a callable returning
``(ok, text)``: 200 or 503 with the text as the body (a callable that raises
counts as not ok). ``/`` and ``/api/state`` render the snapshot a ``live`` callable returns
(``LiveState.snapshot``); they are read-only (any method but GET/HEAD is 405) and every
string from events in them is escaped. Any other path is 404. The server binds to
loopback by default (``http.host``, monitor.settings).

The app is served by ``wsgiref`` with a thread per request from a daemon thread,
as prometheus_client's ``start_wsgi_server`` does.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

Probe = Callable[[], tuple[bool, str]]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_TEXT = [("Content-Type", "text/plain; charset=utf-8")]
_NOT_FOUND = b"not found: try /, /api/state, /metrics, /healthz or /readyz\n"
Live = Callable[[], dict[str, Any]]


def make_app(registry: CollectorRegistry, healthy: Probe, ready: Probe, live: Live | None = None,
             title: str = "attnmon") -> WSGIApp:
    """The WSGI app behind :class:`MetricsServer`: /metrics, /healthz, /readyz, / and
    /api/state (with ``live``), else 404."""
    metrics = make_wsgi_app(registry)
    probes = {"/healthz": healthy, "/readyz": ready}

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if live is not None and path in ("/", "/api/state"):
            return _live(environ, start_response, path, live, title)
        probe = probes.get(path)
        if probe is None:
            start_response("404 Not Found", _TEXT + [("Content-Length", str(len(_NOT_FOUND)))])
            return [_NOT_FOUND]
        try:
            ok, text = probe()
        except Exception as exc:  # noqa: BLE001 - a probe that fails is a failed probe
            ok, text = False, f"{path[1:]} raised {type(exc).__name__}: {exc}"
        body = text.encode()
        start_response("200 OK" if ok else "503 Service Unavailable", _TEXT + [("Content-Length", str(len(body)))])
        return [body]

    return app


def _live(environ: dict[str, Any], start_response: StartResponse, path: str, live: Live,
          title: str) -> Iterable[bytes]:
    """The page or its JSON: read-only, never cached."""
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        body = b"read-only: GET or HEAD\n"
        start_response("405 Method Not Allowed", _TEXT + [("Allow", "GET, HEAD"), ("Content-Length", str(len(body)))])
        return [body]
    from monitor.export.page import render  # the page's code loads at its first request

    state = live()
    if path == "/":
        body, kind = render(state, title=title).encode(), "text/html; charset=utf-8"
    else:
        body, kind = json.dumps(_finite(state), allow_nan=False).encode(), "application/json"
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body))),
                              ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                              ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")])
    return [body] if environ.get("REQUEST_METHOD", "GET") == "GET" else [b""]


def _finite(value: Any) -> Any:
    """The snapshot with NaN and infinities as null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per request; daemon threads, so a stuck scrape never blocks exit."""

    daemon_threads = True


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes would flood the log
        return


def _family(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 literal such as ``::`` or ``::1``, else AF_INET (names, ``""``: all IPv4)."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


class MetricsServer:
    """Serves the endpoints from a background thread; ``port`` is the bound port (0 picks one); ``close`` stops it."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry,
                 healthy: Probe, ready: Probe, live: Live | None = None, title: str = "attnmon") -> None:
        server_class = type("_Server", (_Server,), {"address_family": _family(host)})
        self._server = make_server(host, port, make_app(registry, healthy, ready, live, title),
                                   server_class=server_class, handler_class=_SilentHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="attnmon-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
