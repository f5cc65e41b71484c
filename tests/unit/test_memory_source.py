"""monitor.stream.memory: the in-process source behaves like a Kafka partition at its edges."""

from __future__ import annotations

from monitor.stream.memory import MemorySource


def _batches(count: int, size: int = 10):
    for start in range(0, count, size):
        yield [b"event-%d" % i for i in range(start, min(count, start + size))]


def test_seek_within_the_stream_resumes_there():
    source = MemorySource(_batches(100), 100, lambda p: {p[0]: 42}, lambda p: None)
    records = source.poll(500, 10)
    assert [r.offset for r in records] == list(range(42, 100))
    assert records[0].value == b"event-42"


def test_seek_past_the_end_says_so_and_returns_nothing(caplog):
    """It used to raise StopIteration out of poll(), which killed the agent thread."""
    source = MemorySource(_batches(100), 100, lambda p: {p[0]: 500}, lambda p: None)
    assert source.poll(500, 10) == []
    assert source.exhausted and source.lag() == {("attnmon.demo", 0): 0}
    assert "past the end" in caplog.text


def test_a_generator_shorter_than_announced_ends_the_stream():
    source = MemorySource(_batches(30), 100, lambda p: {p[0]: 50}, lambda p: None)
    assert source.poll(500, 10) == [] and source.exhausted


def _endless(size: int = 10):
    start = 0
    while True:
        yield [b"event-%d" % i for i in range(start, start + size)]
        start += size


def test_an_endless_source_keeps_going_and_reports_its_position():
    source = MemorySource(_endless(), None, lambda p: {}, lambda p: None)
    first = source.poll(25, 10)
    assert [r.offset for r in first] == list(range(25)) and source.position == 25
    assert not source.exhausted and source.lag() == {("attnmon.demo", 0): 5}  # what is buffered


def test_set_rate_paces_from_now_on():
    source = MemorySource(_endless(), None, lambda p: {}, lambda p: None)
    assert len(source.poll(100, 10)) == 100
    source.set_rate(1.0)  # one event a second from here: nothing due at once
    assert source.poll(100, 10) == []
