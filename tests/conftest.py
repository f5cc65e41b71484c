"""Shared fixtures: the real services that deploy/stack.sh starts.

A test that needs Kafka, Prometheus or Alertmanager asks for its fixture. If the
service does not answer, the test is skipped with the command that starts it,
except under CI (CI=true), where a missing service is a failure.

Tests under tests/integration and tests/e2e get the matching marker automatically.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from monitor.settings import KafkaSettings

REPO = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_service(name: str, probe: Callable[[], object], hint: str | None = None) -> None:
    """Skips the test (fails it under CI) unless ``probe()`` returns truthy without raising.

    ``hint`` is the command that provides the service (default: deploy/stack.sh start NAME).
    """
    try:
        answered = bool(probe())
        detail = "no answer"
    except Exception as error:  # noqa: BLE001 -- any failure means "not there"
        answered = False
        detail = f"{type(error).__name__}: {error}"
    if answered:
        return
    hint = hint or f"deploy/stack.sh start {name}"
    message = f"{name} is not available ({detail}); run: {hint}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _port(variable: str, default: int) -> int:
    return int(os.environ.get(variable, default))


def tcp_open(port: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> bool:
    with socket.create_connection((host, port), timeout=timeout_s):
        return True


def http_ready(url: str, timeout_s: float = 2.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.status == 200


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0 loads its protocol schemas with importlib.resources' legacy API.
    config.addinivalue_line("filterwarnings", "ignore:.*is deprecated. Use files:DeprecationWarning")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            parts = item.path.relative_to(REPO).parts
        except ValueError:
            continue
        if len(parts) > 1 and parts[0] == "tests" and parts[1] in ("integration", "e2e"):
            item.add_marker(parts[1])


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """host:port of the stack's Kafka broker (ATTNMON_KAFKA_PORT, default 19092)."""
    port = _port("ATTNMON_KAFKA_PORT", 19092)
    require_service("kafka", lambda: tcp_open(port))
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def prometheus_url() -> str:
    """Base URL of the stack's Prometheus (ATTNMON_PROMETHEUS_PORT, default 19090)."""
    url = f"http://127.0.0.1:{_port('ATTNMON_PROMETHEUS_PORT', 19090)}"
    require_service("prometheus", lambda: http_ready(f"{url}/-/ready"))
    return url


@pytest.fixture(scope="session")
def alertmanager_url() -> str:
    """Base URL of the stack's Alertmanager (ATTNMON_ALERTMANAGER_PORT, default 19094)."""
    url = f"http://127.0.0.1:{_port('ATTNMON_ALERTMANAGER_PORT', 19094)}"
    require_service("alertmanager", lambda: http_ready(f"{url}/-/ready"))
    return url


@pytest.fixture
def scrape_targets(prometheus_url: str) -> Iterator[Callable[[list[int]], None]]:
    """``scrape(ports)``: the stack's Prometheus scrapes 127.0.0.1:PORT (job attnmon) for each
    port until the test ends, and has scraped each once when it returns.

    Agents on ports chosen at start (scale-out replicas) are found by file_sd: a target file
    in the directory that the *running* Prometheus's config names for job attnmon
    (deploy/prometheus/prometheus.yml), so it works whichever checkout started the stack.
    """
    with urllib.request.urlopen(f"{prometheus_url}/api/v1/status/config", timeout=5) as response:
        config = yaml.safe_load(json.loads(response.read())["data"]["yaml"])
    patterns = [f for job in config.get("scrape_configs", []) if job["job_name"] == "attnmon"
                for sd in job.get("file_sd_configs", []) for f in sd.get("files", [])]
    require_service("prometheus file_sd targets", lambda: patterns,
                    hint="deploy/stack.sh reload prometheus (its config predates the file_sd targets)")
    pattern = patterns[0]
    path = Path(pattern).parent / f"attnmon-test-{uuid.uuid4().hex[:8]}{Path(pattern).suffix}"
    assert fnmatch.fnmatch(str(path), pattern), (path, pattern)
    written: list[Path] = []

    def scrape(ports: list[int]) -> None:
        instances = {f"127.0.0.1:{port}" for port in ports}
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")  # outside the glob until complete
        staging.write_text(json.dumps([{"targets": sorted(instances)}]))
        staging.rename(path)
        written.append(path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{prometheus_url}/api/v1/targets?state=active", timeout=5) as response:
                active = json.loads(response.read())["data"]["activeTargets"]
            if instances <= {t["labels"]["instance"] for t in active if t["health"] == "up"}:
                return
            time.sleep(1)
        pytest.fail(f"Prometheus did not scrape {sorted(instances)} within 60 s (target file {path})")

    yield scrape
    for p in written:
        p.unlink(missing_ok=True)


def _tool(name: str) -> str:
    path = shutil.which(name)
    require_service(name, lambda: path, hint="deploy/stack.sh install")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (Debian package prometheus)."""
    return _tool("promtool")


@pytest.fixture(scope="session")
def amtool() -> str:
    """Path of amtool (Debian package prometheus-alertmanager)."""
    return _tool("amtool")


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Settings for the stack's broker with a group of this test's own, and short timeouts."""
    return KafkaSettings(
        bootstrap_servers=kafka_bootstrap,
        group_id=f"attnmon-test-{uuid.uuid4().hex[:8]}",
        client_id="attnmon-test",
        session_timeout_ms=6_000,
        max_poll_interval_ms=30_000,
    )


@pytest.fixture
def unique_topic(kafka_settings: KafkaSettings) -> Iterator[Callable[..., str]]:
    """Factory: ``unique_topic(partitions=2)`` creates a fresh topic; all are deleted afterwards."""
    from monitor.stream.kafka import delete_topic, ensure_topic

    created: list[str] = []

    def make(partitions: int = 2, prefix: str = "attnmon.test") -> str:
        topic = f"{prefix}.{uuid.uuid4().hex[:10]}"
        ensure_topic(kafka_settings, topic, partitions)
        created.append(topic)
        return topic

    yield make
    for topic in created:
        try:
            delete_topic(kafka_settings, topic)
        except Exception:  # noqa: BLE001 -- cleanup must not mask the test's own result
            pass


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny forwards: a second intra-op thread only spins against the other tenants of 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
