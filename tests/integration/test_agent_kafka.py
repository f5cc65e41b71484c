"""The agent against the real Kafka broker: outcomes, dead letters, commits, restarts,
model versions published while it runs."""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from model.data import load_movielens
from monitor.drift.baseline import CohortKey
from monitor.stream.agent import Agent
from monitor.tools.replay import EventFactory, Scenario
from monitor.settings import IntervalSettings, ModelSettings, Settings, StateSettings
from monitor.stream.kafka import DeadLetterSink, EventProducer, KafkaSource
from scaffold import publish_small, small_models

# Broken records and the reason each must be dead-lettered with.
MALFORMED = [
    (b"{not json", "not_json"),
    (b'{"event_id": 1}', "schema"),
    (b'{"event_id":"x","ts":1764259200000,"model_version":"v","user_id":"u","history":[]}', "history_empty"),
    (b'{"event_id":"x","ts":-5,"model_version":"v","user_id":"u","history":[1]}', "bad_timestamp"),
    (b'{"event_id":"x","ts":1764259200000,"model_version":"v","user_id":"u","history":[-3]}', "bad_item_id"),
    (b"\xff\xfe\x00", "not_json"),
]


@pytest.fixture(scope="module")
def movielens():
    return load_movielens()


def _settings(kafka_settings, topic: str, dlq: str, models: Path, state: Path) -> Settings:
    return Settings(
        kafka=dataclasses.replace(kafka_settings, topic=topic, dead_letter_topic=dlq),
        models=ModelSettings(root=models, retry_after_s=0.5),
        state=StateSettings(directory=state),
        intervals=IntervalSettings(judge_s=1.0, checkpoint_s=1.0, lag_s=0.5),
    )


class Running:
    """An agent on a thread, stopped (drained) on exit."""

    def __init__(self, settings: Settings) -> None:
        self.agent = Agent(
            settings,
            lambda assigned, revoked: KafkaSource(settings.kafka, on_assigned=assigned, on_revoked=revoked),
            DeadLetterSink(settings.kafka),
        )
        self.thread = threading.Thread(target=self.agent.run)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()

    def count(self, outcome: str, reason: str) -> float:
        return self.agent.registry.get_sample_value("attnmon_events_total", {"outcome": outcome, "reason": reason}) or 0.0

    def total(self) -> float:
        return sum(s.value for m in self.agent.registry.collect() if m.name == "attnmon_events"
                   for s in m.samples if s.name == "attnmon_events_total")

    def wait_for_total(self, expected: float, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.total() >= expected:
                return
            time.sleep(0.2)
        pytest.fail(f"agent folded {self.total()} of {expected} events in {timeout_s}s")


def _produce(settings: Settings, values: list[bytes]) -> None:
    producer = EventProducer(settings.kafka)
    for i, value in enumerate(values):
        producer.send(value, key=str(i).encode())
    producer.flush()
    producer.close()


def _events(movielens, models_root: Path, version: str, count: int, offset: int = 0) -> list[bytes]:
    factory = EventFactory(movielens, small_models(models_root, [version]), Scenario(versions=((0, version),)),
                           offset=offset)
    return [value for batch in factory.events(count) for value in batch]


def _drain(settings: Settings, topic: str, group: str, expected: int, timeout_s: float = 30.0) -> list:
    kafka = dataclasses.replace(settings.kafka, topic=topic, dead_letter_topic=topic + ".unused", group_id=group)
    source = KafkaSource(kafka, on_assigned=lambda p: {}, on_revoked=lambda p: None)
    records: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(records) < expected:
            records.extend(source.poll(500, 500))
        end = time.monotonic() + 2.0
        while time.monotonic() < end:  # and nothing beyond
            records.extend(source.poll(500, 200))
    finally:
        source.close()
    return records


def test_valid_and_malformed_events_are_counted_dead_lettered_and_committed(
    kafka_settings, unique_topic, tmp_path, movielens
):
    models = tmp_path / "models"
    version = publish_small(models)
    settings = _settings(kafka_settings, unique_topic(2), unique_topic(1), models, tmp_path / "state")
    valid = _events(movielens, models, version, 300)
    _produce(settings, valid + [raw for raw, _ in MALFORMED] * 3)
    expected = Counter(reason for _, reason in MALFORMED * 3)

    with Running(settings) as run:
        run.wait_for_total(300 + 18)
    assert run.count("processed", "ok") == 300
    for reason, n in expected.items():
        assert run.count("dead_lettered", reason) == n, reason

    letters = _drain(settings, settings.kafka.dead_letter_topic, "dlq-reader", 18)
    assert len(letters) == 18
    payloads = [json.loads(r.value) for r in letters]
    assert Counter(p["reason"] for p in payloads) == expected
    originals = {base64.b64decode(p["original_b64"]) for p in payloads}
    assert originals == {raw for raw, _ in MALFORMED}
    assert all(dict(r.headers)["reason"].decode() == p["reason"] for r, p in zip(letters, payloads))
    # Offsets were committed: the group has nothing left to read.
    assert _drain(settings, settings.kafka.topic, settings.kafka.group_id, 0, timeout_s=5) == []


def _baseline_total(agent: Agent, version: str) -> int:
    baseline = agent.pipeline.judge.baselines.get(CohortKey(version, "all", "all"))
    return 0 if baseline is None else baseline.sample.events


def test_restart_resumes_from_the_checkpoint_without_loss_or_double_counting(
    kafka_settings, unique_topic, tmp_path, movielens
):
    models = tmp_path / "models"
    version = publish_small(models)
    settings = _settings(kafka_settings, unique_topic(2), unique_topic(1), models, tmp_path / "state")
    events = _events(movielens, models, version, 350)
    _produce(settings, events[:200])
    with Running(settings) as first:
        first.wait_for_total(200)
    assert _baseline_total(first.agent, version) == 200

    _produce(settings, events[200:])
    with Running(settings) as second:
        second.wait_for_total(150)
        time.sleep(1.5)  # would a rewind re-read the first 200? give it the chance
    assert second.count("processed", "ok") == 150
    # The restored state holds every event exactly once.
    assert _baseline_total(second.agent, version) == 350


def test_a_version_published_while_running_is_served_without_restart(
    kafka_settings, unique_topic, tmp_path, movielens
):
    models = tmp_path / "models"
    staging = tmp_path / "staging"
    v1 = publish_small(models, seed=0, label="v1")
    v2 = publish_small(staging, seed=1, label="v2")
    settings = _settings(kafka_settings, unique_topic(2), unique_topic(1), models, tmp_path / "state")
    with Running(settings) as run:
        _produce(settings, _events(movielens, models, v1, 100))
        run.wait_for_total(100)
        (staging / v2).rename(models / v2)  # published by the training pipeline, agent untouched
        _produce(settings, _events(movielens, models, v2, 100, offset=100))
        run.wait_for_total(200)
        assert run.count("processed", "ok") == 200
        assert v2 in run.agent.models.loaded_versions()
        assert run.agent.registry.get_sample_value(
            "attnmon_model_update_timestamp_seconds", {"model_version": v2, "previous_version": v1}) > 0
