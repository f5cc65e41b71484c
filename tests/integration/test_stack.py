"""The local stack as deploy/stack.sh ships and starts it: configs valid, services wired."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = REPO / "alerts" / "alertmanager.yml"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_shipped_prometheus_config(promtool: str) -> None:
    result = run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_accepts_the_shipped_alertmanager_config(amtool: str) -> None:
    result = run(amtool, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_is_ready_and_scrapes_the_agent_port(prometheus_url: str) -> None:
    with urllib.request.urlopen(f"{prometheus_url}/-/ready", timeout=5) as response:
        assert response.status == 200
    targets = get_json(f"{prometheus_url}/api/v1/targets")["data"]["activeTargets"]
    assert "127.0.0.1:9108" in {t["labels"]["instance"] for t in targets if t["labels"]["job"] == "attnmon"}


def test_prometheus_sends_alerts_to_the_stack_alertmanager(prometheus_url: str, alertmanager_url: str) -> None:
    deadline = time.monotonic() + 15  # discovery of the static target takes a moment after start
    while True:
        active = get_json(f"{prometheus_url}/api/v1/alertmanagers")["data"]["activeAlertmanagers"]
        urls = [a["url"] for a in active]
        if any(url.startswith(alertmanager_url) for url in urls) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert any(url.startswith(alertmanager_url) for url in urls), urls


def test_alertmanager_is_ready_with_the_shipped_config(alertmanager_url: str) -> None:
    with urllib.request.urlopen(f"{alertmanager_url}/-/ready", timeout=5) as response:
        assert response.status == 200
    status = get_json(f"{alertmanager_url}/api/v2/status")
    assert "oncall-critical" in status["config"]["original"]
    assert status["cluster"]["status"] == "disabled"


def test_stack_status_reports_every_service_ready(
    kafka_bootstrap: str, prometheus_url: str, alertmanager_url: str
) -> None:
    result = run(str(REPO / "deploy" / "stack.sh"), "status")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ready") == 3, result.stdout
