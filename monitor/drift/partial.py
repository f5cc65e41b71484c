"""Partial windows: one partition's share of one event-time window, binned per cohort.

Scale-out (docs/architecture.md, "Scale-out"): replicas fold the events of the
partitions they hold into partials; one elected judge merges the partials of a window
from every partition (``monitor.drift.rounds``) and judges the merged samples. A partial
is keyed by (partition, window) and covers the offsets [start, end) of its partition,
so a replica that replays a partition after a crash publishes the same partial again
and it *replaces* the first (compacted topic), never adds to it.

Windows are event time, tumbling, ``width_s`` wide: ``window = ts_ms // (width_s*1000)``.
Each partition has its own watermark, the last window it sealed, and the rule that
places an event depends only on the partition's own log, never on who holds it:

- an event of the open window, or of an older one (*late*), folds into the open window
  (late events are counted, never dropped: the window they belong to may be judged already);
- an event of a newer window seals the open one and opens its own;
- a partition at its log end for a while seals its open window (``PartitionWindows.seal``);
  the next window it opens is after it, whatever the events' times.

After a model update a partial also carries the *paired* evidence of its events (``paired``:
a ``PairedComparison`` of the pairs only, no verdicts): the replica recomputes the previous
version on the sampled events of its partitions, as one process does
(``monitor.stream.updates``). Which version is the previous one is, again, the partition's own
log's: the version first seen in the partition before the new one (``PartitionWindows.versions``,
carried over to the next owner in the progress record). The judge merges the paired parts of
a window (``merge_paired``) for the updates it started itself.

>>> windows = PartitionWindows(width_s=5.0)
>>> [windows.place(ts) for ts in (1_000, 4_000, 6_000, 2_000, 12_000)]
[(0, False, None), (0, False, None), (1, False, 0), (1, True, None), (2, False, 1)]
>>> windows.sealed, windows.seal(), windows.place(3_000)
(1, 2, (3, True, None))
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from monitor.drift.baseline import CohortKey
from monitor.drift.paired import PairedComparison, PairedConfig
from monitor.drift.items import Attended
from monitor.drift.judge import Judge, JudgeConfig, Update, _Part
from monitor.drift.sample import Sample

Series = tuple[tuple[str, int], ...]
VERSIONS_REMEMBERED = 32  # of a partition's version history (its progress record carries them)


class PartitionWindows:
    """Which window each event of one partition falls in, and the partition's watermark."""

    def __init__(self, width_s: float, sealed: int = -1, versions: Iterable[str] = ()) -> None:
        if width_s <= 0:
            raise ValueError("width_s must be > 0")
        self.width_ms = width_s * 1000.0
        self.sealed = sealed  # every window <= sealed is final for this partition
        self.open: int | None = None
        self.versions: list[str] = list(versions)  # model versions in the order the partition's log shows them

    def see(self, version: str) -> None:
        """A record of ``version`` was placed: it joins the history if it is new there."""
        if version not in self.versions:
            self.versions.append(version)
            del self.versions[:-VERSIONS_REMEMBERED]

    def previous(self, version: str) -> str | None:
        """The version ``version`` replaced in this partition's log (None: it came first, or is unseen)."""
        if version not in self.versions:
            return None
        at = self.versions.index(version)
        return self.versions[at - 1] if at else None

    def place(self, ts_ms: int) -> tuple[int, bool, int | None]:
        """(the window the event folds into, whether it is late, the window this event sealed or None)."""
        window = int(ts_ms // self.width_ms)
        closed = None
        if self.open is None:
            self.open = max(window, self.sealed + 1)
        elif window > self.open:
            closed = self.seal()
            self.open = window
        return self.open, window < self.open, closed

    def seal(self) -> int:
        """Seal the open window (if any); returns the watermark."""
        if self.open is not None:
            self.sealed, self.open = self.open, None
        return self.sealed


@dataclass
class Partial:
    """One partition's events of one window: samples per cohort, offsets [start, end)."""

    partition: int
    window: int
    start: int
    end: int
    series: dict[CohortKey, Series] = field(default_factory=dict)
    samples: dict[CohortKey, Sample] = field(default_factory=dict)
    first_seen: dict[str, int] = field(default_factory=dict)  # version -> its first event time (ms) here
    late: int = 0  # events of an older window folded in
    paired: PairedComparison | None = None  # pairs of its events after an update (no verdicts)
    paired_previous: dict[str, str] = field(default_factory=dict)  # new version -> the version it was paired with
    # The partition's version history through ``end`` (for its progress record; not published)
    versions: list[str] = field(default_factory=list, compare=False)

    @property
    def key(self) -> str:
        """The compacted topic's key: a replay replaces, never adds."""
        return f"partial/{self.partition}/{self.window}"

    def sample(self, key: CohortKey, series: Series, shape: tuple[int, int, int]) -> Sample:
        if key not in self.samples:
            self.series[key] = series
            self.samples[key] = Sample(*shape)
        return self.samples[key]

    def see(self, version: str, ts_ms: int) -> None:
        self.first_seen[version] = min(ts_ms, self.first_seen.get(version, ts_ms))

    def pairs(self, new_version: str, previous: str, config: PairedConfig) -> PairedComparison:
        """Where the pairs of ``new_version`` against ``previous`` fold (a partition pairs a
        version with one previous version: its log's)."""
        if self.paired_previous.setdefault(new_version, previous) != previous:
            raise ValueError(f"{new_version} is paired with {self.paired_previous[new_version]} in this partial")
        if self.paired is None:
            self.paired = PairedComparison(config)
        return self.paired

    def to_bytes(self) -> bytes:
        return json.dumps({
            "partition": self.partition, "window": self.window, "start": self.start, "end": self.end,
            "cohorts": [[k.to_state(), [list(s) for s in self.series[k]], self.samples[k].to_state()]
                        for k in self.samples],
            "first_seen": self.first_seen, "late": self.late,
            "paired": None if self.paired is None else self.paired.to_state(),
            "paired_previous": self.paired_previous,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Partial:
        s = json.loads(raw)
        partial = cls(int(s["partition"]), int(s["window"]), int(s["start"]), int(s["end"]),
                      first_seen={str(v): int(t) for v, t in s["first_seen"].items()}, late=int(s["late"]))
        for key_state, series, sample in s["cohorts"]:
            key = CohortKey.from_state(key_state)
            partial.series[key] = tuple((str(n), int(layer)) for n, layer in series)
            partial.samples[key] = Sample.from_state(sample)
        if s.get("paired") is not None:  # absent: published before replicas paired
            partial.paired = PairedComparison.from_state(s["paired"])
            partial.paired_previous = {str(v): str(p) for v, p in s["paired_previous"].items()}
        return partial

    @property
    def events(self) -> int:
        """Events of the partial (each counted once: in the ``all`` dimension)."""
        return sum(s.events for k, s in self.samples.items() if k.dimension == "all")


def merge(partials: Iterable[Partial]) -> tuple[dict[CohortKey, Series], dict[CohortKey, Sample], dict[str, int]]:
    """One window's partials merged in partition order (the item sketches' merge depends on
    the order; this one depends on nothing but the partials): series, samples, first sightings."""
    series: dict[CohortKey, Series] = {}
    samples: dict[CohortKey, Sample] = {}
    first: dict[str, int] = {}
    for partial in sorted(partials, key=lambda p: p.partition):
        for key, sample in partial.samples.items():
            if key in samples:
                samples[key].merge(sample)
            else:
                series[key], samples[key] = partial.series[key], sample.copy()
        for version, ts in partial.first_seen.items():
            first[version] = min(ts, first.get(version, ts))
    return series, samples, first


def merge_paired(partials: Iterable[Partial], paired: PairedComparison, updates: Mapping[str, str]) -> None:
    """Fold one window's paired parts into the judge's ``paired``, in partition order: the pairs
    of each new version the judge updates from the same previous version (``updates``: new ->
    previous); the others are counted (``refused_no_update``)."""
    for partial in sorted(partials, key=lambda p: p.partition):
        if partial.paired is None:
            continue
        taken = {v for v, previous in partial.paired_previous.items() if updates.get(v) == previous}
        paired.merge(partial.paired, versions=taken)


class PartialSink(Judge):
    """The replica's stand-in for the judge in the pipeline's fold: it bins a batch exactly as
    the judge does (``Judge.observe_batch``) but adds each cohort's share to the partial of
    the partition being folded (``target``) instead of judging it. No baselines, windows,
    updates or verdicts live here: those are the elected judge's."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        super().__init__(config)
        self.open: dict[int, Partial] = {}  # partition -> its open partial
        self.target: Partial | None = None  # what the fold adds to now (a run of ``Partitions.split``)
        self.rows: list[Partial] | None = None  # or: each row's partial, for the batch folded now

    def observe_batch(self, version: str, dimension: str, codes: np.ndarray, labels: Any, values: np.ndarray,
                      users: np.ndarray, strata: np.ndarray, now: float | None = None, *, statistics: Any,
                      attended: Attended | None = None, served: Attended | None = None) -> dict[str, str]:
        """As the judge's, into ``target``; or, with ``rows`` set (one partial per row of the
        batch: a whole poll folded at once, its partitions' runs mixed), each row into its own
        partial, one ``Judge.observe_batch`` per partial."""
        if self.rows is None:
            return super().observe_batch(version, dimension, codes, labels, values, users, strata, now,
                                         statistics=statistics, attended=attended, served=served)
        if len(self.rows) != len(codes):
            raise ValueError(f"PartialSink: {len(self.rows)} row partials for a batch of {len(codes)}")
        slots: dict[int, int] = {}
        which = np.fromiter((slots.setdefault(id(t), len(slots)) for t in self.rows), dtype=np.intp,
                            count=len(self.rows))
        partials = {slots[id(t)]: t for t in self.rows}
        codes, values, users, strata = np.asarray(codes), np.asarray(values), np.asarray(users), np.asarray(strata)
        outcomes: dict[str, str] = {}
        for slot, partial in partials.items():
            rows = np.flatnonzero(which == slot)
            self.target = partial
            outcomes.update(super().observe_batch(
                version, dimension, codes[rows], labels, values[rows], users[rows], strata[rows], now,
                statistics=statistics, attended=_rows_of(attended, rows), served=_rows_of(served, rows)))
        self.target = None
        return outcomes

    def begin(self, partition: int, window: int, start: int) -> Partial:
        """Open the partition's partial of ``window`` at offset ``start``."""
        partial = self.open[partition] = Partial(partition, window, start, start)
        return partial

    def take(self, partition: int) -> Partial | None:
        """The partition's open partial, removed (to publish it)."""
        return self.open.pop(partition, None)

    def _observe_cohort(self, key: CohortKey, series: Series, shape: tuple[int, int, int], part: _Part,
                        members: np.ndarray, flat: np.ndarray, strata: np.ndarray, users: np.ndarray,
                        attended: Any = None, watch_x: Any = None, groups: Any = None, served: Any = None) -> str:
        if self.target is None:
            raise RuntimeError("PartialSink: no partial to fold into (set target to a run's partial)")
        # A sink never judges, so none of its cohorts watches items (the judge's watched-items
        # test needs the previous window's top items): the part carries no watched sums.
        part.add_to(self.target.sample(key, series, shape))
        return "partial"

    def start_update(self, new_version: str, previous_version: str, at: float) -> bool:
        return False  # updates are the judge's: it sees every partition's versions (rounds.py)

    @property
    def updates(self) -> dict[str, Update]:
        return {}  # replicas pair by each partition's own version history (Partitions.previous), not by updates


def _rows_of(attended: Attended | None, rows: np.ndarray) -> Attended | None:
    """The attention entries of ``rows`` (ascending) of a batch, renumbered as a batch of those rows."""
    if attended is None:
        return None
    keep = np.isin(attended.event, rows)
    return Attended(np.searchsorted(rows, attended.event[keep]), attended.item[keep], attended.mass[keep],
                    attended.ids)


class Run(NamedTuple):
    """Records ``[i, j)`` of a polled run, all of one window: folded into ``partial``."""

    i: int
    j: int
    partial: Partial
    sealed: list[Partial]  # completed before record i: to publish


class Partitions:
    """A replica's partitions: their windows, and their open partials in the sink.

    ``split`` cuts a polled run of one partition's records into runs of one window each;
    the caller folds each run into its partial (``sink.target = run.partial``) and
    publishes the partials sealed before it (folded by then: runs come in order). The record at offset ``next_offset`` of an assigned
    partition is the first after its last sealed partial: the replica seeks there."""

    def __init__(self, sink: PartialSink, width_s: float) -> None:
        self.sink = sink
        self.width_s = width_s
        self.windows: dict[int, PartitionWindows] = {}

    def assign(self, partition: int, sealed: int = -1, versions: Iterable[str] = ()) -> None:
        """Hold ``partition`` from its watermark ``sealed``, with its version history through there."""
        self.windows[partition] = PartitionWindows(self.width_s, sealed, versions)
        self.sink.open.pop(partition, None)

    def revoke(self, partition: int) -> None:
        self.windows.pop(partition, None)
        self.sink.open.pop(partition, None)  # the next owner replays it from the last sealed partial

    def split(self, partition: int, offsets: list[int], ts: list[int | None],
              versions: list[str | None] | None = None) -> list[Run]:
        """Runs: records ``[i, j)`` fold into ``partial``; ``sealed`` are the
        partials completed before record ``i`` (to publish). A record without a time (an
        invalid one: dead-lettered, not folded) belongs to the open window. ``versions``:
        each record's model version, whose first sighting the partial keeps (model updates)."""
        windows = self.windows[partition]
        runs: list[Run] = []
        for i, (offset, t) in enumerate(zip(offsets, ts)):
            version = versions[i] if versions is not None else None
            if t is None:
                t = int(windows.open if windows.open is not None else windows.sealed + 1) * int(windows.width_ms)
            window, late, closed = windows.place(t)
            sealed = []
            if closed is not None:
                done = self.sink.take(partition)
                if done is not None:
                    done.versions = list(windows.versions)  # through its last record: this one is after it
                    sealed.append(done)
            partial = self.sink.open.get(partition)
            if partial is None:
                partial = self.sink.begin(partition, window, offset)
            partial.end = offset + 1
            partial.late += int(late)
            if version is not None:
                partial.see(version, t)
                windows.see(version)
            if runs and closed is None and runs[-1].j == i:
                runs[-1] = runs[-1]._replace(j=i + 1)
            else:
                runs.append(Run(i, i + 1, partial, sealed))
        return runs

    def seal(self, partition: int) -> Partial | None:
        """Seal the partition's open window (idle at its log end); the partial to publish."""
        self.windows[partition].seal()
        partial = self.sink.take(partition)
        if partial is not None:
            partial.versions = self.versions(partition)
        return partial

    def sealed(self, partition: int) -> int:
        return self.windows[partition].sealed

    def versions(self, partition: int) -> list[str]:
        """The partition's version history through its last record placed."""
        return list(self.windows[partition].versions)

    def previous(self, partition: int, version: str) -> str | None:
        """The version ``version`` replaced in the partition's log: what its events are paired with."""
        windows = self.windows.get(partition)
        return None if windows is None else windows.previous(version)
