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


ASSIGNED = "INFO monitor.stream.agent: assigned ["


def _assigned_since(log: Path, since_line: int) -> bool:
    return any(ASSIGNED in line for line in log.read_text().splitlines()[since_line:])


def _seconds_to_assignment(log: Path, since_line: int) -> float:
    """From the daemon's 'joining the consumer group' to its first 'assigned' line, by the
    log's own timestamps (start-up, torch import and model loading are not rejoin time)."""
    from datetime import datetime

    def stamp(line: str) -> datetime:
        return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")

    lines = log.read_text().splitlines()[since_line:]
    joined = next(stamp(line) for line in lines if "joining the consumer group" in line)
    assigned = next(stamp(line) for line in lines if ASSIGNED in line)
    return (assigned - joined).total_seconds()


def test_held_events_and_a_static_member_survive_a_kill_between_checkpoints(setup, tmp_path):
    """Events held for an unpublished version are checkpointed with the state: a kill after a
    checkpoint that folded later events (offsets past the held one) neither loses the held
    event nor folds the later ones twice (the old code re-read from the held offset). The
    replica is a static member: restarted with its id, it gets its partition back without
    waiting for the group to drop the dead member (session timeout 20 s here)."""
    staged = tmp_path / "staged"
    late = publish_small(staged, seed=7, label="late")
    models = Path(yaml.safe_load(setup["config"].read_text())["models"]["root"])
    held = small_models(staged, [late])
    factory = EventFactory(load_movielens(), held, Scenario(versions=((0, late),)))
    late_event = next(iter(factory.events(1)))[0]
    config = yaml.safe_load(setup["config"].read_text())
    config["kafka"].update(group_instance_id="attnmon-e2e-0", session_timeout_ms=20_000)
    config["pipeline"] = {"unknown_version_grace_s": 600}
    setup["config"].write_text(yaml.safe_dump(config))
    kafka = dataclasses.replace(setup["kafka"])
    events = setup["events"]
    producer = EventProducer(kafka)
    for i, value in enumerate([*events[:50], late_event, *events[50:200]]):
        producer.send(value, partition=0)  # one partition: the held offset sits between folded ones
    producer.flush()
    producer.close()

    first = Daemon(setup["config"], setup["port"], setup["log"])
    first.wait(lambda: first.processed() >= 200, timeout_s=240)  # start-up spawns the forward process
    folded_at = time.time()

    def checkpointed() -> bool:
        body = first.get("/metrics")[1]
        line = next((l for l in body.splitlines() if l.startswith("attnmon_last_checkpoint_timestamp_seconds ")), "")
        held = next((l for l in body.splitlines() if l.startswith("attnmon_events_held ")), "")
        return bool(line) and float(line.split()[1]) > folded_at and held.endswith(" 1.0")

    first.wait(checkpointed, timeout_s=120)
    first.stop(signal.SIGKILL)  # after the held offset, before the next checkpoint
    total, offsets = _state_total(setup["state"], setup["version"])
    assert total == 200 and offsets[(kafka.topic, 0)] == 201  # the held offset is not kept back

    lines_before = len(setup["log"].read_text().splitlines())
    second = Daemon(setup["config"], setup["port"], setup["log"])
    second.wait(lambda: second.get("/readyz")[0] == 200, timeout_s=240)
    # Ready means a model is loaded, not that the group has assigned the partition yet.
    second.wait(lambda: _assigned_since(setup["log"], lines_before), timeout_s=60)
    rejoin_s = _seconds_to_assignment(setup["log"], lines_before)
    assert rejoin_s < 10.0, f"static member took {rejoin_s:.1f}s to get its partition back"
    (staged / late).rename(models / late)  # the held event's version is published
    second.wait(lambda: second.processed() >= 1)
    time.sleep(2.0)  # and a checkpoint after it
    assert second.stop(signal.SIGTERM) == 0
    total, offsets = _state_total(setup["state"], setup["version"])
    assert total == 200, "events after the held offset were folded twice"  # old code: 350
    state, _ = state_store.load(setup["state"])
    assert state["held"] == []
    late_total = Judge.from_state(state["judge"]).baselines.get(CohortKey(late, "all", "all"))
    assert late_total is not None and late_total.sample.events == 1  # the held event, folded once
    assert "left group" in setup["log"].read_text()  # SIGTERM: a static member leaves explicitly
