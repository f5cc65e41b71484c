"""Scale-out core: partials per (partition, window), merged by the judge's rounds, judge a
split log exactly as one process does (monitor.drift.partial, monitor.drift.rounds)."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.drift.judge import Judge
from monitor.drift.partial import Partitions, PartialSink
from monitor.drift.rounds import Rounds
from scale_log import (
    CONFIG,
    PARTITIONS,
    WIDTH_S,
    Election,
    MemoryTable,
    fold,
    judge_stream,
    make_log,
    one_process,
    verdicts,
)


@pytest.fixture(scope="module")
def log() -> list[dict[str, np.ndarray]]:
    return make_log()


@pytest.fixture(scope="module")
def single(log) -> list:
    return one_process(log)


def test_the_single_process_sees_both_kinds_of_drift(single) -> None:
    final = {(v, d, c, k): s for v, d, c, k, s in single[-1]}
    assert final[("v1", "platform", "ios", "within_version")], "ios drifts within v1"
    assert not final[("v1", "platform", "android", "within_version")]
    assert final[("v2", "all", "all", "model_update")], "v2 attends differently from v1"
    assert sum(len(rows) for _, _, rows in single[:-1]) > 20


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_replicas_and_a_judge_judge_as_one_process(log, single, seed) -> None:
    """Partitions split between two replicas with other poll sizes; the judge reads their
    partials interleaved at random: every round's results and the verdicts are identical."""
    streams = []
    for owned, batch in (((0, 2), 64), ((1, 3), 211)):
        sink = PartialSink(CONFIG)
        parts = Partitions(sink, WIDTH_S)
        for p in owned:
            parts.assign(p)
            streams.append(fold(sink, parts, p, log, 0, len(log[p]["ts"]), batch) + [parts.seal(p)])
    assert verdicts(judge_stream(streams, seed)[0]) == single


def test_a_replayed_partition_replaces_its_partials(log, single) -> None:
    """A replica dies mid-window; the new owner resumes from the last progress it published
    (an older one too): the partials it publishes again are replays, the verdicts unchanged."""
    streams = []
    for p in range(PARTITIONS):
        sink = PartialSink(CONFIG)
        parts = Partitions(sink, WIDTH_S)
        parts.assign(p)
        n = len(log[p]["ts"])
        if p != 2:
            streams.append(fold(sink, parts, p, log, 0, n, 100) + [parts.seal(p)])
            continue
        before = fold(sink, parts, p, log, 0, n // 2, 100)  # then kill -9: the open partial is lost
        resume = before[-3]  # the new owner read an older progress record (its commit raced the kill)
        heir = PartialSink(CONFIG)
        heir_parts = Partitions(heir, WIDTH_S)
        heir_parts.assign(p, sealed=resume.window)
        after = fold(heir, heir_parts, p, log, resume.end, n, 77) + [heir_parts.seal(p)]
        replayed = [q for q in after if q.window <= before[-1].window]
        assert [q.to_bytes() for q in replayed] == [q.to_bytes() for q in before[-2:]]
        streams.append(before + after)
    reports, rounds, _ = judge_stream(streams, seed=5)
    assert verdicts(reports) == single
    assert rounds.counts["late_partials"] == 0


def test_a_new_judge_resumes_from_the_state_topic(log, single) -> None:
    """The judge is lost after some rounds; the next one restores Judge + Rounds state and
    reads the whole (compacted) partials topic again: no round twice, the same verdicts."""
    sink = PartialSink(CONFIG)
    parts = Partitions(sink, WIDTH_S)
    streams = []
    for p in range(PARTITIONS):
        parts.assign(p)
        streams.append(fold(sink, parts, p, log, 0, len(log[p]["ts"]), 500) + [parts.seal(p)])
    half = [s[: len(s) // 2] for s in streams]
    first, rounds, judge = judge_stream(half, seed=4, finish=False)
    assert first, "the first judge judged some rounds before it was lost"
    rounds_state, judge_state = rounds.to_state(), judge.to_state()
    heir_rounds = Rounds.from_state(rounds_state)
    heir_judge = Judge.from_state(judge_state, CONFIG)
    topic = [list(s) for s in streams]  # compacted: every key's latest record, from the beginning
    rest, heir_rounds, _ = judge_stream(topic, seed=None, rounds=heir_rounds, judge=heir_judge)
    # Every partial the first judge folded comes back from the topic and is ignored as a replay.
    assert heir_rounds.counts["replays"] == sum(len(s) for s in half) - len(rounds.pending)
    assert verdicts(first + rest)[:-1] == single[:-1]
    assert verdicts(rest)[-1] == single[-1]


def test_the_judge_tombstones_what_its_saved_state_has_folded(log, single) -> None:
    """Every partial a saved state has folded is deleted (compaction drops it): the topic keeps
    only unfolded partials and the progress records; a judge that takes over from that
    compacted topic and the state gives the same verdicts."""
    from monitor.stream.scale import JudgeRole, publish

    sink = PartialSink(CONFIG)
    parts = Partitions(sink, WIDTH_S)
    partials, state = MemoryTable(), MemoryTable()
    first = JudgeRole(Election(), partials, state, PARTITIONS, WIDTH_S, CONFIG)
    streams = []
    for p in range(PARTITIONS):
        parts.assign(p)
        streams.append(fold(sink, parts, p, log, 0, len(log[p]["ts"]), 500) + [parts.seal(p)])
    half = max(len(s) for s in streams) // 2
    for k in range(half):
        for p, stream in enumerate(streams):
            if k < len(stream):
                publish(partials, [stream[k]], p, stream[k].window, stream[k].end)
        first.step()
    first.step()
    folded = first.rounds.folded
    live = {k for k, _ in partials.compacted() if k.startswith("partial/")}
    assert first.tombstoned > 0
    assert all(int(k.split("/")[2]) > folded.get(int(k.split("/")[1]), -1) for k in live), "folded ones deleted"
    # The judge is lost; the next one reads the compacted topic and the state.
    topic = MemoryTable()
    topic.log = partials.compacted()
    heir = JudgeRole(Election(), topic, state, PARTITIONS, WIDTH_S, CONFIG)
    for k in range(half, max(len(s) for s in streams)):
        for p, stream in enumerate(streams):
            if k < len(stream):
                publish(topic, [stream[k]], p, stream[k].window, stream[k].end, idle=k == len(stream) - 1)
        heir.step()
    for p, stream in enumerate(streams):
        publish(topic, [], p, stream[-1].window, stream[-1].end, idle=True)
    heir.step()
    assert verdicts(first.reports + heir.reports) == single
