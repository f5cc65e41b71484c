"""A synthetic partitioned log, and what replicas and the judge do with it (the scale-out tests)."""

from __future__ import annotations

import random

import numpy as np

from monitor.drift.judge import Judge, JudgeConfig
from monitor.drift.partial import Partial, Partitions, PartialSink
from monitor.drift.rounds import Rounds

WIDTH_S = 10.0
PARTITIONS = 4
STATS = ("entropy", "max_weight")
CONFIG = JudgeConfig(reference_events=600, reference_users=10.0, reference_seconds=25.0, min_samples=150,
                     min_users=10.0, update_min_effect=None)


def make_log(seed: int = 0, per_partition: int = 1500) -> list[dict[str, np.ndarray]]:
    """Per partition: event times (ms, mostly increasing, a few late), versions, users, lengths,
    platforms and statistics [B, stats, layers]. v2 replaces v1 at 60 s and attends differently;
    ios drifts within v1 from 40 s."""
    rng = np.random.default_rng(seed)
    log = []
    for _ in range(PARTITIONS):
        ts = np.sort(rng.integers(0, 90_000, per_partition))
        late = rng.random(per_partition) < 0.02
        ts = np.where(late, np.maximum(ts - 12_000, 0), ts)  # late events, up to a window behind
        version = np.where(ts < 60_000, "v1", "v2")
        platform = rng.integers(0, 2, per_partition)  # 0 android, 1 ios
        a = np.where(version == "v2", 6.0, np.where((platform == 1) & (ts >= 40_000), 4.5, 2.0))
        values = rng.beta(a[:, None, None], 5.0, (per_partition, len(STATS), 2))
        log.append(dict(ts=ts, version=version, users=rng.integers(0, 2**63, per_partition).astype(np.uint64),
                        lengths=rng.integers(1, 300, per_partition), platform=platform, values=values))
    return log


def fold(sink: PartialSink, parts: Partitions, p: int, log: list[dict[str, np.ndarray]], start: int, stop: int,
         batch: int) -> list[Partial]:
    """What a replica does with partition p's records [start, stop), polled ``batch`` at a time:
    the partials it publishes, in order."""
    data = log[p]
    published: list[Partial] = []
    for lo in range(start, stop, batch):
        hi = min(stop, lo + batch)
        runs = parts.split(p, list(range(lo, hi)), [int(t) for t in data["ts"][lo:hi]],
                           [str(v) for v in data["version"][lo:hi]])
        for run in runs:
            published += run.sealed
            sink.target = run.partial
            rows = np.arange(lo + run.i, lo + run.j)
            for version in sorted(set(data["version"][rows].tolist())):
                r = rows[data["version"][rows] == version]
                strata = sink.stratum_of(data["lengths"][r])
                kw = dict(values=data["values"][r], users=data["users"][r], strata=strata, statistics=STATS)
                sink.observe_batch(version, "all", np.zeros(len(r), int), ("all",), **kw)
                sink.observe_batch(version, "platform", data["platform"][r], ("android", "ios"), **kw)
    return published


def judge_stream(streams: list[list[Partial]], seed: int | None, rounds: Rounds | None = None,
                 judge: Judge | None = None, finish: bool = True) -> tuple[list, Rounds, Judge]:
    """The elected judge reading the partials topic: per partition in order, partitions
    interleaved at random (one producer per partition at a time), then (``finish``) every
    partition idle at its log end."""
    rounds = rounds or Rounds(PARTITIONS, WIDTH_S)
    judge = judge or Judge(CONFIG)
    queue = [(s[0].partition, list(s)) for s in streams if s]
    rng = random.Random(seed)
    reports = []
    while queue:
        k = rng.randrange(len(queue)) if seed is not None else 0
        p, items = queue[k]
        partial = items.pop(0)
        rounds.offer(partial)
        rounds.mark(p, partial.window, idle=False)
        reports += rounds.advance(judge)
        if not items:
            queue.pop(k)
    if not finish:
        return reports, rounds, judge
    for p in range(PARTITIONS):
        rounds.mark(p, rounds.sealed.get(p, -1), idle=True)
    reports += rounds.advance(judge)
    return reports, rounds, judge


def verdicts(reports: list) -> list:
    """Everything judged, round by round, and the final cohort verdicts."""
    rows = [(r.round, r.now, [(x.key, x.kind, x.flagged, x.drifting, round(x.score, 12), x.samples)
                              for x in r.results]) for r in reports]
    return rows + [sorted((c.model_version, c.dimension, c.cohort, c.kind, c.drifting_series)
                          for c in reports[-1].cohorts)]


def one_process(log: list[dict[str, np.ndarray]], batch: int = 500) -> list:
    sink = PartialSink(CONFIG)
    parts = Partitions(sink, WIDTH_S)
    streams = []
    for p in range(PARTITIONS):
        parts.assign(p)
        streams.append(fold(sink, parts, p, log, 0, len(log[p]["ts"]), batch) + [parts.seal(p)])
    return verdicts(judge_stream(streams, seed=None)[0])


class MemoryTable:
    """A compacted topic in memory (``monitor.stream.scale.Table``): an append-only log of
    (key, value), a value of None deleting the key."""

    def __init__(self) -> None:
        self.log: list[tuple[str, bytes | None]] = []

    def put(self, key: str, value: bytes | None) -> None:
        self.log.append((key, value))

    def flush(self, timeout_s: float = 30.0) -> None:
        pass

    def read(self, start: int = 0, timeout_s: float = 30.0) -> tuple[list[tuple[str, bytes | None]], int]:
        return self.log[start:], len(self.log)

    def compacted(self) -> list[tuple[str, bytes]]:
        """What the log compacts to: each key's last value, deleted keys left out."""
        latest: dict[str, bytes | None] = {}
        for key, value in self.log:
            latest[key] = value
        return [(k, v) for k, v in latest.items() if v is not None]


class Election:
    """The judge election (``monitor.stream.scale.Election``), decided by the test."""

    def __init__(self, leader: bool = True) -> None:
        self.leader = leader

    def poll(self, timeout_ms: int = 100) -> bool:
        return self.leader
