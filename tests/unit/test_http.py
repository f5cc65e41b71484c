"""The agent's HTTP endpoints (monitor/export/http.py) over a real socket."""

from __future__ import annotations

import gzip
import http.client
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from monitor.export.http import MetricsServer


class Probe:
    """A switchable (ok, text) callable."""

    def __init__(self, ok: bool, text: str) -> None:
        self.ok, self.text = ok, text

    def __call__(self) -> tuple[bool, str]:
        return self.ok, self.text


@pytest.fixture()
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("attnmon_test_events", "Events seen.", ["outcome"], registry=registry).labels("ok").inc(3)
    Gauge("attnmon_test_ready", "1 when ready.", registry=registry).set(1)
    return registry


@pytest.fixture()
def probes() -> tuple[Probe, Probe]:
    return Probe(True, "ticked 0.1s ago\n"), Probe(False, "no partitions assigned\n")


@pytest.fixture()
def server(registry: CollectorRegistry, probes: tuple[Probe, Probe]) -> Iterator[MetricsServer]:
    healthy, ready = probes
    s = MetricsServer("127.0.0.1", 0, registry, healthy, ready)
    yield s
    s.close()


def get(server: MetricsServer, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    conn.close()
    return response


def test_port_zero_picks_a_free_port(server: MetricsServer) -> None:
    assert server.port > 0


def test_plain_text_by_default(server: MetricsServer) -> None:
    r = get(server, "/metrics")
    assert r.status == 200
    assert r.getheader("Content-Type").startswith("text/plain")
    assert r.getheader("Content-Encoding") is None
    body = r.body.decode()  # type: ignore[attr-defined]
    assert 'attnmon_test_events_total{outcome="ok"} 3.0' in body
    assert "attnmon_test_ready 1.0" in body
    assert "# EOF" not in body


def test_gzip_when_accepted(server: MetricsServer) -> None:
    plain = get(server, "/metrics").body  # type: ignore[attr-defined]
    r = get(server, "/metrics", {"Accept-Encoding": "gzip"})
    assert r.status == 200 and r.getheader("Content-Encoding") == "gzip"
    assert r.getheader("Content-Type").startswith("text/plain")
    assert r.body[:2] == b"\x1f\x8b"  # type: ignore[attr-defined]
    assert gzip.decompress(r.body) == plain  # type: ignore[attr-defined]


def test_openmetrics_when_asked(server: MetricsServer) -> None:
    r = get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status == 200
    assert r.getheader("Content-Type").startswith("application/openmetrics-text")
    body = r.body.decode()  # type: ignore[attr-defined]
    assert body.endswith("# EOF\n")
    assert "# TYPE attnmon_test_events counter" in body
    assert 'attnmon_test_events_total{outcome="ok"} 3.0' in body


def test_openmetrics_and_gzip_together(server: MetricsServer) -> None:
    r = get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                 "Accept-Encoding": "gzip, deflate"})
    assert r.getheader("Content-Encoding") == "gzip"
    assert r.getheader("Content-Type").startswith("application/openmetrics-text")
    assert gzip.decompress(r.body).decode().endswith("# EOF\n")  # type: ignore[attr-defined]


def test_health_and_readiness(server: MetricsServer, probes: tuple[Probe, Probe]) -> None:
    healthy, ready = probes
    r = get(server, "/healthz")
    assert (r.status, r.body) == (200, b"ticked 0.1s ago\n")  # type: ignore[attr-defined]
    r = get(server, "/readyz")
    assert (r.status, r.body) == (503, b"no partitions assigned\n")  # type: ignore[attr-defined]
    healthy.ok, healthy.text = False, "main loop stalled for 130s\n"
    ready.ok, ready.text = True, "ready\n"
    r = get(server, "/healthz")
    assert (r.status, r.body) == (503, b"main loop stalled for 130s\n")  # type: ignore[attr-defined]
    r = get(server, "/readyz?verbose=1")
    assert (r.status, r.body) == (200, b"ready\n")  # type: ignore[attr-defined]


def test_a_probe_that_raises_is_503(registry: CollectorRegistry) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("lost the consumer")

    s = MetricsServer("127.0.0.1", 0, registry, broken, broken)
    try:
        r = get(s, "/readyz")
        assert r.status == 503 and b"lost the consumer" in r.body  # type: ignore[attr-defined]
    finally:
        s.close()


@pytest.mark.parametrize("path", ["/", "/metricsx", "/health", "/favicon.ico", "/metrics/extra"])
def test_other_paths_are_404(server: MetricsServer, path: str) -> None:
    assert get(server, path).status == 404


def test_close_releases_the_port(registry: CollectorRegistry, probes: tuple[Probe, Probe]) -> None:
    s = MetricsServer("127.0.0.1", 0, registry, *probes)
    port = s.port
    s.close()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/metrics")


def test_agent_metrics_in_openmetrics_have_no_created_series(probes: tuple[Probe, Probe]) -> None:
    """Prometheus asks for OpenMetrics; a `_created` series per counter and histogram would
    double their series for nothing any dashboard or rule reads."""
    from monitor.export.metrics import AgentMetrics

    registry = CollectorRegistry()
    AgentMetrics(registry).events.labels("processed", "ok").inc()
    server = MetricsServer("127.0.0.1", 0, registry, *probes)
    try:
        body = get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}).body.decode()
    finally:
        server.close()
    assert 'attnmon_events_total{outcome="processed",reason="ok"} 1.0' in body
    assert "_created" not in body
