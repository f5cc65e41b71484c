"""What real producers send, through the real broker: every compression codec Kafka
supports, from kafka-python and from kcat (librdkafka), with keys and headers; and a
batch the client cannot decode, which is skipped and marked instead of stopping the agent."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable

import kafka.codec
import pytest

from monitor.settings import KafkaSettings
from monitor.stream.kafka import EventProducer, KafkaSource, Record

CODECS = ("gzip", "snappy", "lz4", "zstd")
PER_CODEC = 40


def _source(settings: KafkaSettings, topic: str) -> KafkaSource:
    return KafkaSource(dataclasses.replace(settings, topic=topic), on_assigned=lambda p: {}, on_revoked=lambda p: None)


def _poll_until(source: KafkaSource, done: Callable[[list[Record]], bool], timeout_s: float = 20.0) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s}s with {len(got)} records")
        got.extend(source.poll(max_records=500, timeout_ms=200))
    return got


def _produce(settings: KafkaSettings, topic: str, codec: str | None, values: list[bytes]) -> None:
    """One flush per call: the values travel as batches compressed with ``codec``."""
    producer = EventProducer(settings, topic=topic, compression_type=codec, linger_ms=50)
    try:
        for value in values:
            producer.send(value, key=b"user-" + value[-2:], partition=0,
                          headers=[("codec", (codec or "none").encode()), ("trace", b"\x00\xff")])
        producer.flush()
    finally:
        producer.close()


def _values(codec: str, count: int = PER_CODEC) -> list[bytes]:
    return [f'{{"codec":"{codec}","n":{n:02d}}}'.encode() for n in range(count)]


def test_every_codec_from_kafka_python_arrives_with_keys_and_headers(kafka_settings, unique_topic):
    topic = unique_topic(1)
    for codec in (None, *CODECS):
        _produce(kafka_settings, topic, codec, _values(codec or "none"))
    with _source(kafka_settings, topic) as source:
        records = _poll_until(source, lambda got: len(got) >= PER_CODEC * 5)
    assert all(r.skipped is None for r in records)
    assert [r.offset for r in records] == list(range(PER_CODEC * 5))
    assert [r.value for r in records] == [v for c in ("none", *CODECS) for v in _values(c)]
    for record in records:
        headers = dict(record.headers)
        assert headers["trace"] == b"\x00\xff"
        assert headers["codec"].decode() in record.value.decode()
        assert record.key == b"user-" + record.value[-2:]


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_from_kcat_arrives_with_keys_and_headers(kafka_settings, unique_topic, codec):
    """kcat is librdkafka's producer: the batches a C, Go or .NET service would write."""
    topic = unique_topic(1)
    lines = b"".join(b"user-%02d\t" % n + value + b"\n" for n, value in enumerate(_values(codec)))
    subprocess.run(
        ["kcat", "-P", "-b", kafka_settings.bootstrap_servers, "-t", topic, "-p", "0", "-z", codec,
         "-K", "\t", "-H", f"codec={codec}", "-H", "origin=kcat", "-X", "linger.ms=50"],
        input=lines, check=True, timeout=60,
    )
    with _source(kafka_settings, topic) as source:
        records = _poll_until(source, lambda got: len(got) >= PER_CODEC)
    assert [r.value for r in records] == _values(codec)
    assert [r.key for r in records] == [b"user-%02d" % n for n in range(PER_CODEC)]
    assert all(dict(r.headers) == {"codec": codec.encode(), "origin": b"kcat"} for r in records)


def test_a_batch_the_client_cannot_decode_is_skipped_and_marked_not_fatal(kafka_settings, unique_topic, monkeypatch):
    """The outage this guards against: a consumer without a codec's library raised at every
    poll, and a restart resumed at the same offset (a crash loop). Here the client is made
    to lack zstd, as kafka-python did before the codec libraries were dependencies."""
    topic = unique_topic(1)
    _produce(kafka_settings, topic, "gzip", _values("before"))
    _produce(kafka_settings, topic, "zstd", _values("zstd", 25))
    _produce(kafka_settings, topic, "lz4", _values("after"))
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)

    with _source(kafka_settings, topic) as source:
        records = _poll_until(source, lambda got: sum(1 for r in got if r.skipped is None) >= 2 * PER_CODEC)
        assert source.poll(max_records=500, timeout_ms=500) == []  # and nothing further
    markers = [r for r in records if r.skipped is not None]
    assert len(markers) == 1
    marker = markers[0]
    assert (marker.skipped.first_offset, marker.offset) == (PER_CODEC, PER_CODEC + 24)
    assert marker.skipped.count(marker.offset) == 25
    assert "zstd" in marker.skipped.error
    assert [r.value for r in records if r.skipped is None] == _values("before") + _values("after")
    assert [r.offset for r in records] == [*range(PER_CODEC), PER_CODEC + 24, *range(PER_CODEC + 25, 2 * PER_CODEC + 25)]


def test_the_agent_dead_letters_an_undecodable_batch_and_keeps_folding(
    kafka_settings, unique_topic, tmp_path, monkeypatch
):
    from model.data import load_movielens
    from monitor.settings import IntervalSettings, ModelSettings, Settings, StateSettings
    from monitor.stream.agent import Agent
    from monitor.stream.kafka import DeadLetterSink
    from monitor.tools.replay import EventFactory, Scenario
    from scaffold import publish_small, small_models

    models = tmp_path / "models"
    version = publish_small(models)
    topic, dlq = unique_topic(1), unique_topic(1)
    settings = Settings(
        kafka=dataclasses.replace(kafka_settings, topic=topic, dead_letter_topic=dlq),
        models=ModelSettings(root=models, retry_after_s=0.5),
        state=StateSettings(directory=tmp_path / "state"),
        intervals=IntervalSettings(judge_s=1.0, checkpoint_s=1.0, lag_s=0.5),
    )
    factory = EventFactory(load_movielens(), small_models(models, [version]), Scenario(versions=((0, version),)))
    events = [value for batch in factory.events(90) for value in batch]
    for codec, chunk in zip(("snappy", "zstd", "lz4"), (events[:30], events[30:60], events[60:]), strict=True):
        producer = EventProducer(settings.kafka, compression_type=codec, linger_ms=50)
        for value in chunk:
            producer.send(value, partition=0)
        producer.flush()
        producer.close()
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)

    agent = Agent(settings, lambda a, r: KafkaSource(settings.kafka, on_assigned=a, on_revoked=r),
                  DeadLetterSink(settings.kafka))
    thread = threading.Thread(target=agent.run)
    thread.start()

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return agent.registry.get_sample_value(name, labels or {}) or 0.0

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sample("attnmon_events_total", {"outcome": "processed", "reason": "ok"}) < 60:
            time.sleep(0.2)
    finally:
        agent.stop()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert sample("attnmon_events_total", {"outcome": "processed", "reason": "ok"}) == 60
    assert sample("attnmon_kafka_skipped_offsets_total") == 30  # exactly the zstd records
    batches = sample("attnmon_events_total", {"outcome": "dead_lettered", "reason": "undecodable_batch"})
    assert batches >= 1  # one dead letter per undecodable batch (the producer may split 30 events)

    with _source(dataclasses.replace(kafka_settings, group_id="dlq-reader"), dlq) as reader:
        letters = _poll_until(reader, lambda got: len(got) >= batches)
    assert Counter(dict(r.headers)["reason"] for r in letters) == {b"undecodable_batch": batches}
    assert min(int(dict(r.headers)["source_offset"]) for r in letters) >= 30
    assert max(int(dict(r.headers)["source_offset"]) for r in letters) == 59
    # Committed past the skipped range: the group has nothing left to read.
    with _source(settings.kafka, topic) as again:
        leftover: list[Record] = []
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            leftover.extend(again.poll(max_records=500, timeout_ms=200))
    assert leftover == []
