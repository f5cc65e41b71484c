"""KafkaSource, DeadLetterSink and EventProducer against the stack's real broker."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from kafka.admin import KafkaAdminClient, NewPartitions

from monitor.settings import KafkaSettings
from monitor.stream.kafka import (
    CommitFailed,
    DeadLetterSink,
    EventProducer,
    JudgeElection,
    KafkaSource,
    Partition,
    Record,
    SourceError,
    ensure_topic,
)


class Agent:
    """Stands in for the daemon: records callbacks, seeks where told, commits on revoke."""

    def __init__(self, seeks: dict[Partition, int] | None = None, commit_on_revoke: bool = False) -> None:
        self.seeks = seeks or {}
        self.commit_on_revoke = commit_on_revoke
        self.assigned: list[list[Partition]] = []
        self.revoked: list[list[Partition]] = []
        self.processed: dict[Partition, int] = {}  # next offset per partition
        self.source: KafkaSource | None = None

    def on_assigned(self, partitions: list[Partition]) -> dict[Partition, int]:
        self.assigned.append(partitions)
        return {p: o for p, o in self.seeks.items() if p in partitions}

    def on_revoked(self, partitions: list[Partition]) -> None:
        self.revoked.append(partitions)
        if self.commit_on_revoke and self.source is not None:
            self.source.commit({p: o for p, o in self.processed.items() if p in partitions})

    def take(self, records: list[Record]) -> None:
        for r in records:
            self.processed[(r.topic, r.partition)] = r.offset + 1


def open_source(settings: KafkaSettings, agent: Agent) -> KafkaSource:
    source = KafkaSource(settings, on_assigned=agent.on_assigned, on_revoked=agent.on_revoked)
    agent.source = source
    return source


def poll_until(
    source: KafkaSource, done: Callable[[list[Record]], bool], timeout_s: float = 10.0, max_records: int = 500
) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while not done(got):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s}s with {len(got)} records")
        got.extend(source.poll(max_records=max_records, timeout_ms=200))
    return got


@contextlib.contextmanager
def members(*turns: Callable[[], None]) -> Iterator[None]:
    """Each ``turn`` called over and over on a thread of its own (each group member is its own
    process in production), until the block ends."""
    stop = threading.Event()

    def loop(turn: Callable[[], None]) -> None:
        while not stop.is_set():
            turn()

    threads = [threading.Thread(target=loop, args=(turn,), daemon=True) for turn in turns]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def settle(done: Callable[[], bool], timeout_s: float, state: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not settled in {timeout_s:.0f} s: {state()}"
        time.sleep(0.2)


def produce(settings: KafkaSettings, topic: str, values: list[bytes], partition: int | None = None) -> None:
    producer = EventProducer(settings, topic=topic)
    try:
        for i, value in enumerate(values):
            producer.send(value, key=b"k%d" % i, partition=partition)
        producer.flush()
    finally:
        producer.close()


@pytest.fixture
def topic2(unique_topic: Callable[..., str]) -> str:
    return unique_topic(2)


def test_second_member_resumes_after_committed_offsets(kafka_settings: KafkaSettings, topic2: str) -> None:
    settings = dataclasses.replace(kafka_settings, topic=topic2)
    values = [b"event-%02d" % i for i in range(40)]
    produce(settings, topic2, values)

    first = Agent()
    with open_source(settings, first) as source:
        got = poll_until(source, lambda got: len(got) >= 15, max_records=15)
        processed = got[:15]  # the rest was fetched but never folded in, so not committed
        first.take(processed)
        source.commit(first.processed)
        assert sorted(source.assignment()) == [(topic2, 0), (topic2, 1)]

    second = Agent()
    with open_source(settings, second) as source:
        rest = poll_until(source, lambda got: len(got) >= 25)
        rest += source.poll(max_records=500, timeout_ms=500)  # nothing more may come
    seen = [r.value for r in processed] + [r.value for r in rest]
    assert sorted(seen) == sorted(values), "lost or repeated records across the two members"
    for r in rest:
        assert r.offset >= first.processed.get((r.topic, r.partition), 0)


def test_members_polled_without_waiting_and_busy_between_polls_are_assigned(
    kafka_settings: KafkaSettings, topic2: str
) -> None:
    """The agent polls with short (under back-pressure, zero) timeouts and works between
    polls. kafka-python 3.0 throws away a join that finishes between two polls and starts
    another; such members never held an assignment (generation after generation, for as
    long as the test ran). The source waits for a join it started in the same call."""
    settings = dataclasses.replace(kafka_settings, topic=topic2)
    agents = [Agent(), Agent()]
    sources = [open_source(settings, agent) for agent in agents]

    def turn(source: KafkaSource) -> Callable[[], None]:
        def poll_and_work() -> None:
            source.poll(max_records=10, timeout_ms=0)
            time.sleep(0.2)  # a batch's work
        return poll_and_work

    def split() -> bool:
        held = [sorted(source.assignment()) for source in sources]
        return all(held) and sorted(held[0] + held[1]) == [(topic2, 0), (topic2, 1)]

    try:
        with members(*(turn(source) for source in sources)):
            settle(split, 30, lambda: ([source.assignment() for source in sources], [a.assigned for a in agents]))
    finally:
        for source in sources:
            source.close()


def test_a_leader_polled_without_waiting_takes_partitions_added_later(kafka_settings: KafkaSettings, unique_topic) -> None:
    """Partitions added to the topic change the leader's metadata, which starts a rebalance,
    here while the caller's thread stalls after every poll of the client, so each round
    finishes between polls: the member still takes the new partitions (kafka-python 3.0
    can leave such a round unread; ``tests/unit/test_kafka_join.py`` has that case)."""
    topic = unique_topic(1)
    settings = dataclasses.replace(kafka_settings, topic=topic, metadata_max_age_ms=1_000)
    agent = Agent()
    source = open_source(settings, agent)
    try:
        deadline = time.monotonic() + 20
        while source.assignment() != [(topic, 0)]:
            assert time.monotonic() < deadline, "never assigned"
            source.poll(max_records=10, timeout_ms=100)
        admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        try:
            admin.create_partitions({topic: NewPartitions(total_count=3)})
        finally:
            admin.close()
        # The caller's thread stalls after each of the client's polls (under load, the worker
        # holding the GIL), so the round the poll started finishes before the source looks.
        client_poll = source._consumer.poll

        def stalled_poll(*args, **kwargs):
            result = client_poll(*args, **kwargs)
            time.sleep(0.3)
            return result

        source._consumer.poll = stalled_poll
        deadline = time.monotonic() + 30
        while sorted(source.assignment()) != [(topic, 0), (topic, 1), (topic, 2)]:
            assert time.monotonic() < deadline, f"still holding {source.assignment()}, assigned {agent.assigned}"
            source.poll(max_records=10, timeout_ms=0)
    finally:
        source.close()


def test_two_replicas_settle_both_groups_within_seconds(kafka_settings: KafkaSettings, unique_topic) -> None:
    """A replica is a member of two groups, the events' and the judge election's (which keeps
    its membership on its own thread). Two replicas started together, each looping as the
    daemon does (poll the events for 100 ms, ask the election, work for 200 ms): within 15 s
    each holds one events partition and exactly one judges."""
    events, control = unique_topic(2), unique_topic(1)
    settings = dataclasses.replace(kafka_settings, topic=events)
    replicas = [(open_source(settings, Agent()), JudgeElection(settings, control, f"{settings.group_id}-judge"))
                for _ in range(2)]

    def turn(source: KafkaSource, election: JudgeElection) -> Callable[[], None]:
        def loop_turn() -> None:
            source.poll(max_records=10, timeout_ms=100)
            election.poll()
            time.sleep(0.2)
        return loop_turn

    def state() -> list[tuple[list[Partition], bool]]:
        return [(sorted(source.assignment()), election.poll()) for source, election in replicas]

    def settled() -> bool:
        now = state()
        return all(len(held) == 1 for held, _ in now) and sum(judges for _, judges in now) == 1

    try:
        with members(*(turn(*replica) for replica in replicas)):
            settle(settled, 15, state)
    finally:
        for source, election in replicas:
            source.close()
            election.close()


def test_an_agent_that_stops_asking_hands_the_judge_role_over(kafka_settings: KafkaSettings, unique_topic) -> None:
    """The election polls on its own thread, yet lives only as long as the agent asks it:
    a judge whose agent is stuck past max_poll_interval_ms leaves, and another member judges."""
    control = unique_topic(1)
    settings = dataclasses.replace(kafka_settings, max_poll_interval_ms=2_000)
    stuck = JudgeElection(settings, control, f"{settings.group_id}-judge")
    heir = None
    try:
        deadline = time.monotonic() + 20
        while not stuck.poll():
            assert time.monotonic() < deadline, "never elected"
            time.sleep(0.1)
        heir = JudgeElection(settings, control, f"{settings.group_id}-judge")
        time.sleep(1.0)
        assert not heir.poll(), "the first member judges while its agent asks"
        deadline = time.monotonic() + 15  # no stuck.poll() from here on
        while not heir.poll():
            assert time.monotonic() < deadline, "the stuck judge kept the role"
            time.sleep(0.1)
    finally:
        stuck.close()
        if heir is not None:
            heir.close()


def test_pause_keeps_member_past_max_poll_interval(kafka_settings: KafkaSettings, topic2: str) -> None:
    settings = dataclasses.replace(kafka_settings, topic=topic2, max_poll_interval_ms=2_000)
    produce(settings, topic2, [b"before-%d" % i for i in range(10)])
    agent = Agent()
    with open_source(settings, agent) as source:
        poll_until(source, lambda got: len(got) >= 10)
        source.pause()
        assert source.paused
        produce(settings, topic2, [b"during-%d" % i for i in range(10)])
        deadline = time.monotonic() + 5.0  # 2.5 x max_poll_interval_ms
        while time.monotonic() < deadline:
            assert source.poll(max_records=500, timeout_ms=200) == []
        assert agent.revoked == [] and len(agent.assigned) == 1, "member was dropped while paused"
        source.resume()
        during = poll_until(source, lambda got: len(got) >= 10)
        assert sorted(r.value for r in during) == sorted(b"during-%d" % i for i in range(10))
        agent.take(during)
        source.commit(agent.processed)  # still a member: the commit is accepted


def test_not_polling_past_max_poll_interval_loses_partitions(kafka_settings: KafkaSettings, topic2: str) -> None:
    """The control for the test above: without polling, the member leaves the group."""
    settings = dataclasses.replace(kafka_settings, topic=topic2, max_poll_interval_ms=1_500)
    produce(settings, topic2, [b"x%d" % i for i in range(6)])
    agent = Agent(commit_on_revoke=True)  # its commit for lost partitions is refused, quietly
    with open_source(settings, agent) as source:
        agent.take(poll_until(source, lambda got: len(got) >= 6))
        time.sleep(3.0)
        deadline = time.monotonic() + 10
        while len(agent.assigned) < 2 and time.monotonic() < deadline:
            source.poll(max_records=10, timeout_ms=200)
        assert agent.revoked == [[(topic2, 0), (topic2, 1)]] and len(agent.assigned) == 2


def test_on_assigned_offsets_win_over_committed(kafka_settings: KafkaSettings, topic2: str) -> None:
    settings = dataclasses.replace(kafka_settings, topic=topic2)
    produce(settings, topic2, [b"p0-%d" % i for i in range(10)], partition=0)
    produce(settings, topic2, [b"p1-%d" % i for i in range(10)], partition=1)
    with open_source(settings, Agent()) as source:
        poll_until(source, lambda got: len(got) >= 20)
        source.commit({(topic2, 0): 1, (topic2, 1): 1})

    agent = Agent(seeks={(topic2, 0): 6})  # the checkpoint knows partition 0 only
    with open_source(settings, agent) as source:
        got = poll_until(source, lambda got: len(got) >= 4 + 9)
        got += source.poll(max_records=500, timeout_ms=300)
    assert agent.assigned == [[(topic2, 0), (topic2, 1)]]
    offsets = {p: sorted(r.offset for r in got if r.partition == p) for p in (0, 1)}
    assert offsets[0] == list(range(6, 10)), "on_assigned's offset was not honoured"
    assert offsets[1] == list(range(1, 10)), "the committed offset was not used"


def test_commit_in_on_revoked_hands_over_cleanly(kafka_settings: KafkaSettings, topic2: str) -> None:
    """A rebalance runs on_revoked, whose commit must land before the new owner reads."""
    settings = dataclasses.replace(kafka_settings, topic=topic2)
    values = [b"v%02d" % i for i in range(30)]
    produce(settings, topic2, values)

    first, second = Agent(commit_on_revoke=True), Agent()
    a = open_source(settings, first)
    b = None
    try:
        got_a = poll_until(a, lambda got: len(got) >= 30)
        first.take(got_a)  # processed, not committed yet
        b = open_source(settings, second)
        got_b: list[Record] = []
        # Each member polls on its own thread, as each is its own process in production: a
        # poll that starts a rebalance returns once the group has rejoined, which takes the
        # other member's poll.
        rebalanced = threading.Event()
        stop_at: list[float] = []

        def member(source: KafkaSource, got: list[Record]) -> None:
            deadline = time.monotonic() + 15
            while time.monotonic() < (stop_at[0] if stop_at else deadline):
                got += source.poll(max_records=500, timeout_ms=100)
                if second.assigned and first.assigned[1:] and not rebalanced.is_set():
                    rebalanced.set()
                    stop_at.append(time.monotonic() + 1.0)  # and a second more: nothing may come

        threads = [threading.Thread(target=member, args=(a, got_a)), threading.Thread(target=member, args=(b, got_b))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert first.revoked == [[(topic2, 0), (topic2, 1)]], first.revoked
        assert rebalanced.is_set(), "the group did not rebalance"
        assert got_b == [], "the new owner re-read records the old one had committed on revoke"
        assert sorted(r.value for r in got_a) == sorted(values)
    finally:
        a.close()
        if b is not None:
            b.close()


def test_commit_of_unassigned_partition_is_refused(kafka_settings: KafkaSettings, topic2: str) -> None:
    settings = dataclasses.replace(kafka_settings, topic=topic2)
    with open_source(settings, Agent()) as source:
        poll_until(source, lambda got: bool(source.assignment()))
        with pytest.raises(CommitFailed):
            source.commit({("some.other.topic", 0): 1})


def test_dead_letter_keeps_reason_and_original_bytes(
    kafka_settings: KafkaSettings, unique_topic: Callable[..., str]
) -> None:
    dlq = unique_topic(1, prefix="attnmon.test.dlq")
    settings = dataclasses.replace(kafka_settings, topic=unique_topic(1), dead_letter_topic=dlq)
    bad = Record(topic=settings.topic, partition=0, offset=41, key=b"user-7", value=b"\xff\x00{not json", timestamp_ms=1)
    big = Record(topic=settings.topic, partition=0, offset=42, key=None, value=b"x" * 5000, timestamp_ms=2)
    sink = DeadLetterSink(settings, max_original_bytes=1000)
    try:
        sink.send(bad, "decode_error", "Expecting value: line 1 column 1")
        sink.send(big, "oversized", "history too long")
        sink.flush()
    finally:
        sink.close()

    reader = dataclasses.replace(
        settings, topic=dlq, dead_letter_topic=dlq + ".unused", group_id=settings.group_id + "-dlq"
    )
    with open_source(reader, Agent()) as source:
        got = poll_until(source, lambda got: len(got) >= 2)
    first, second = (json.loads(r.value) for r in got)
    assert first["reason"] == "decode_error"
    assert first["detail"] == "Expecting value: line 1 column 1"
    assert (first["topic"], first["partition"], first["offset"]) == (settings.topic, 0, 41)
    assert base64.b64decode(first["original_b64"]) == bad.value
    assert got[0].key == b"user-7"
    assert dict(got[0].headers)["reason"] == b"decode_error"
    assert dict(got[0].headers)["source_offset"] == b"41"
    assert second["reason"] == "oversized" and second["original_size"] == 5000
    assert base64.b64decode(second["original_b64"]) == b"x" * 1000


def test_lag_counts_what_poll_has_not_returned(kafka_settings: KafkaSettings, topic2: str) -> None:
    settings = dataclasses.replace(kafka_settings, topic=topic2)
    produce(settings, topic2, [b"a%d" % i for i in range(7)], partition=0)
    produce(settings, topic2, [b"b%d" % i for i in range(4)], partition=1)
    with open_source(settings, Agent()) as source:
        got = poll_until(source, lambda got: len(got) >= 1, max_records=3)
        taken = {p: sum(1 for r in got if r.partition == p) for p in (0, 1)}
        assert source.lag() == {(topic2, 0): 7 - taken[0], (topic2, 1): 4 - taken[1]}
        poll_until(source, lambda more: len(more) >= 11 - len(got))
        assert source.lag() == {(topic2, 0): 0, (topic2, 1): 0}
        produce(settings, topic2, [b"c0", b"c1"], partition=1)
        time.sleep(1.1)  # past the end-offset cache
        assert source.lag() == {(topic2, 0): 0, (topic2, 1): 2}


def test_ensure_topic_is_idempotent_and_refuses_to_shrink(kafka_settings: KafkaSettings, topic2: str) -> None:
    ensure_topic(kafka_settings, topic2, 2)
    ensure_topic(kafka_settings, topic2, 1)
    with pytest.raises(SourceError, match="fewer than 3"):
        ensure_topic(kafka_settings, topic2, 3)


def test_unreachable_broker_is_a_readable_source_error() -> None:
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", connect_timeout_ms=500)
    with pytest.raises(SourceError, match="127.0.0.1:1") as raised:
        EventProducer(settings)
    assert raised.value.retriable
