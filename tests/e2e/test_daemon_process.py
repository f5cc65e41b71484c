"""The daemon as a process: `attnmon run` on the real broker, scraped, terminated, killed.

- /readyz turns ready once partitions are assigned and a model is loaded;
- a real scrape of /metrics passes `promtool check metrics`;
- SIGTERM drains, checkpoints and commits, and the process exits 0;
- SIGKILL loses nothing: a restarted daemon resumes from the checkpoint, and the
  restored state counts every event exactly once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from model.data import load_movielens
from monitor.stream import state as state_store
from monitor.drift.baseline import CohortKey
from monitor.drift.judge import Judge
from monitor.tools.replay import EventFactory, Scenario
from monitor.stream.kafka import EventProducer, KafkaSource
from scaffold import publish_small, small_models

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", "--config", str(config)],
            cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError:
            return 0, ""

    def processed(self) -> float:
        status, body = self.get("/metrics")
        for line in body.splitlines():
            if line.startswith('attnmon_events_total{outcome="processed",reason="ok"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def wait(self, what, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"daemon exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if what():
                return
            time.sleep(0.2)
        pytest.fail(f"timed out; daemon log:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int, timeout_s: float = 60.0) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout_s)


@pytest.fixture()
def setup(kafka_settings, unique_topic, tmp_path):
    models = tmp_path / "models"
    version = publish_small(models)
    topic, dlq = unique_topic(2), unique_topic(1)
    port = _free_port()
    config = tmp_path / "attnmon.yml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": kafka_settings.bootstrap_servers, "topic": topic, "dead_letter_topic": dlq,
                  "group_id": kafka_settings.group_id, "session_timeout_ms": 6000},
        "models": {"root": str(models)},
        "state": {"directory": str(tmp_path / "state")},
        "http": {"host": "127.0.0.1", "port": port},
        "intervals": {"judge_s": 1.0, "checkpoint_s": 1.0, "lag_s": 0.5},
    }))
    factory = EventFactory(load_movielens(), small_models(models, [version]), Scenario(versions=((0, version),)))
    events = [e for batch in factory.events(500) for e in batch]
    producer_settings = dataclasses.replace(kafka_settings, topic=topic, dead_letter_topic=dlq)
    return {"config": config, "port": port, "events": events, "kafka": producer_settings, "version": version,
            "state": tmp_path / "state", "log": tmp_path / "daemon.log"}


def _produce(kafka, values) -> None:
    producer = EventProducer(kafka)
    for i, v in enumerate(values):
        producer.send(v, key=str(i).encode())
    producer.flush()
    producer.close()


def _state_total(state_dir: Path, version: str) -> int:
    pipeline_state, offsets = state_store.load(state_dir)
    judge = Judge.from_state(pipeline_state["judge"])
    baseline = judge.baselines.get(CohortKey(version, "all", "all"))
    return baseline.sample.events, offsets


def test_daemon_ready_scrape_sigterm_and_sigkill_recovery(setup, promtool, tmp_path):
    events, kafka = setup["events"], setup["kafka"]
    _produce(kafka, events[:300])

    first = Daemon(setup["config"], setup["port"], setup["log"])
    first.wait(lambda: first.get("/readyz")[0] == 200)
    assert first.get("/healthz")[0] == 200
    first.wait(lambda: first.processed() >= 300)

    status, body = first.get("/metrics")
    scrape = tmp_path / "scrape.txt"
    scrape.write_text(body)
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "attnmon_attention_entropy_ratio_bucket" in body

    assert first.stop(signal.SIGTERM) == 0
    assert "stopped cleanly" in setup["log"].read_text()
    total, offsets = _state_total(setup["state"], setup["version"])
    assert total == 300 and sum(offsets.values()) == 300
    reader = KafkaSource(kafka, on_assigned=lambda p: {}, on_revoked=lambda p: None)  # same group: all committed
    leftover = []
    end = time.monotonic() + 5
    while time.monotonic() < end:
        leftover += reader.poll(100, 200)
    reader.close()
    assert leftover == []

    # A crash: SIGKILL mid-stream, with whatever was folded since the last checkpoint lost.
    second = Daemon(setup["config"], setup["port"], setup["log"])
    second.wait(lambda: second.get("/readyz")[0] == 200)
    _produce(kafka, events[300:])
    second.wait(lambda: second.processed() >= 100)
    second.stop(signal.SIGKILL)

    third = Daemon(setup["config"], setup["port"], setup["log"])
    third.wait(lambda: third.get("/readyz")[0] == 200)
    time.sleep(3.0)  # let it re-read whatever the checkpoint did not include
    assert third.stop(signal.SIGTERM) == 0
    total, offsets = _state_total(setup["state"], setup["version"])
    assert sum(offsets.values()) == 500
    assert total == 500  # nothing lost, nothing counted twice
