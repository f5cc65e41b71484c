"""HTTP endpoints: ``/metrics`` (Prometheus exposition), ``/healthz``, ``/readyz``.

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
counts as not ok). Any other path is 404.

The app is served by ``wsgiref`` with a thread per request from a daemon thread,
as prometheus_client's ``start_wsgi_server`` does.
"""

from __future__ import annotations

import ipaddress
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
_NOT_FOUND = b"not found: try /metrics, /healthz or /readyz\n"


def make_app(registry: CollectorRegistry, healthy: Probe, ready: Probe) -> WSGIApp:
    """The WSGI app behind :class:`MetricsServer`: /metrics, /healthz, /readyz, else 404."""
    metrics = make_wsgi_app(registry)
    probes = {"/healthz": healthy, "/readyz": ready}

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
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
                 healthy: Probe, ready: Probe) -> None:
        server_class = type("_Server", (_Server,), {"address_family": _family(host)})
        self._server = make_server(host, port, make_app(registry, healthy, ready),
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
