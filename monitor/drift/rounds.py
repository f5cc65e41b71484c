"""The elected judge's rounds: merge every partition's partial of a window, then judge it.

A window is *closed* once every partition's watermark has passed it (its replica sealed it,
``monitor.drift.partial``) or the partition is idle at its log end. Closed windows are
folded into the ``Judge`` in window order, each as one round: the partials merged
(``partial.merge``, in partition order), every cohort's merged sample observed
(``Judge.observe_sample``, in key order), model updates started for versions first seen in
the window, then ``judge(now=window end)``. With a paired comparison (``advance_paired``),
the window's paired parts are merged into it too (``partial.merge_paired``, for the updates
the judge holds) and it is judged at the same time, as one process judges both each round.
What the judge sees is therefore a function of the partitions' logs alone: which replica held
which partition, when it crashed and who replayed it do not enter.

- a partial of a window the judge already folded for that partition is a *replay* (a
  replica resumed from an older progress record) and is ignored: the compacted topic's
  record it replaced was folded already;
- a partial of a window already closed, but not from that partition (a partition that was
  idle and woke up with old events) is *late*: it is folded into the next round.

Retirement (``retire_windows``, from ``retire_after_s``): each round records the round's
window as the last one that held an event of every version its merged partials saw (late
events included: they are judged with the round they arrived in). A version whose last
window is more than ``retire_windows`` windows before the round's is forgotten before the
round is judged (Judge, paired comparison, version history), as the single agent's
``Pipeline.retire_absent``; event time, so which replica held what does not enter.

>>> from monitor.drift.partial import Partial
>>> rounds = Rounds(partitions=2, width_s=5.0)
>>> rounds.offer(Partial(0, 0, 0, 10)), rounds.mark(0, sealed=0, idle=False), rounds.ready()
('pending', None, -1)
>>> rounds.offer(Partial(1, 0, 0, 7)), rounds.mark(1, sealed=0, idle=False), rounds.ready()
('pending', None, 0)
>>> len(rounds.advance(Judge())), rounds.offer(Partial(1, 0, 0, 7))
(1, 'replay')
"""

from __future__ import annotations

import math
from typing import Any

from monitor.drift.judge import Judge, JudgeReport
from monitor.drift.paired import PairedComparison, PairedReport
from monitor.drift.partial import Partial, merge, merge_paired

STATE_FORMAT = 1


class Rounds:
    """Partials waiting per (partition, window), watermarks, and what the judge has folded."""

    def __init__(self, partitions: int, width_s: float, retire_after_s: float | None = None) -> None:
        if partitions < 1:
            raise ValueError("partitions must be >= 1")
        self.partitions = partitions
        self.width_s = width_s
        self.closed = -1  # every window <= closed is folded into the judge
        self.folded: dict[int, int] = {}  # partition -> its last window folded
        self.sealed: dict[int, int] = {}  # partition -> its watermark (from its progress records)
        self.idle: set[int] = set()  # partitions at their log end: they hold back no window
        self.pending: dict[tuple[int, int], Partial] = {}
        self.versions: list[str] = []  # in the order the judge first saw them (model updates)
        self.counts = {"replays": 0, "late_partials": 0, "late_events": 0, "versions_retired": 0}
        self.retire_windows = retire_windows(retire_after_s, width_s)  # None: never retire
        self.last_seen: dict[str, int] = {}  # version -> the last window whose merged partials held an event of it
        self.retired: list[str] = []  # versions retired since the caller last took them (``take_retired``)

    def offer(self, partial: Partial) -> str:
        """Take a partial from the topic: "pending", "replay" (ignored) or "late" (next round)."""
        p, w = partial.partition, partial.window
        if w <= self.folded.get(p, -1):
            self.counts["replays"] += 1
            return "replay"
        self.pending[(p, w)] = partial  # a newer copy of the same key replaces the older one
        self.counts["late_events"] += partial.late
        if w <= self.closed:
            self.counts["late_partials"] += 1
            return "late"
        return "pending"

    def mark(self, partition: int, sealed: int, idle: bool) -> None:
        """A partition's progress record: its watermark, and whether it is idle at its log end."""
        self.sealed[partition] = max(sealed, self.sealed.get(partition, -1))
        (self.idle.add if idle else self.idle.discard)(partition)

    def ready(self) -> int:
        """The last window every partition has passed (-1: none)."""
        busy = [self.sealed.get(p, -1) for p in range(self.partitions) if p not in self.idle]
        if busy:
            return min(busy)
        return max((w for _, w in self.pending), default=self.closed)

    def advance(self, judge: Judge) -> list[JudgeReport]:
        """Fold and judge every closed window with partials, oldest first; one report each."""
        return [report for report, _ in self._advance(judge, None)]

    def advance_paired(self, judge: Judge, paired: PairedComparison) -> list[tuple[JudgeReport, PairedReport]]:
        """As ``advance``, with the windows' paired parts merged into ``paired`` and judged each round."""
        return [(report, paired_report) for report, paired_report in self._advance(judge, paired)
                if paired_report is not None]

    def _advance(self, judge: Judge, paired: PairedComparison | None) -> list[tuple[JudgeReport, PairedReport | None]]:
        ready = self.ready()
        reports = []
        late = [k for k in self.pending if k[1] <= self.closed]
        windows = sorted({w for _, w in self.pending if self.closed < w <= ready})
        if late and not windows and ready > self.closed:
            windows = [ready]
        for window in windows:
            keys = [k for k in self.pending if k[1] == window] + late
            late = []
            partials = [self.pending.pop(k) for k in keys]
            reports.append(self._round(judge, window, partials, paired))
        return reports

    def _round(self, judge: Judge, window: int, partials: list[Partial],
               paired: PairedComparison | None) -> tuple[JudgeReport, PairedReport | None]:
        series, samples, first_seen = merge(partials)
        start = window * self.width_s
        for version in sorted((v for v in first_seen if v not in self.versions), key=lambda v: (first_seen[v], v)):
            if self.versions:
                judge.start_update(version, self.versions[-1], start)
            self.versions.append(version)
        for version in first_seen:
            self.last_seen[version] = window
        # After the updates start (a new version's update from a retiring one is kept, as the
        # single agent's, which starts updates as it folds and retires when it judges).
        self._retire(window, first_seen, judge, paired)
        for key in sorted(samples):
            judge.observe_sample(key, series[key], samples[key], start)
        if paired is not None:
            merge_paired(partials, paired, {v: u.previous_version for v, u in judge.updates.items()})
        for partial in partials:
            self.folded[partial.partition] = max(partial.window, self.folded.get(partial.partition, -1))
        self.closed = max(self.closed, window)
        end = (window + 1) * self.width_s
        return judge.judge(end), None if paired is None else paired.judge(end)

    def forget(self, version: str) -> None:
        if version in self.versions:
            self.versions.remove(version)
        self.last_seen.pop(version, None)

    def _retire(self, window: int, present: dict[str, int], judge: Judge, paired: PairedComparison | None) -> None:
        """Forget the versions no merged window has held for more than ``retire_windows``
        windows before ``window``. A round with no version (nothing merged) retires nothing:
        a quiet stream is no evidence of absence; the versions in it are the ones served now."""
        if self.retire_windows is None or not present:
            return
        for version in [v for v in self.versions if window - self.last_seen.get(v, window) > self.retire_windows]:
            judge.forget(version)
            if paired is not None:
                paired.forget(version)
            self.forget(version)
            self.retired.append(version)
            self.counts["versions_retired"] += 1

    def take_retired(self) -> list[str]:
        """The versions retired since the last call (for the caller's counter and log)."""
        retired, self.retired = self.retired, []
        return retired

    # -- persistence (the judge's state topic, with Judge.to_state) ---------------------

    def to_state(self) -> dict[str, Any]:
        """What a new judge needs besides the Judge: pending partials stay in their topic."""
        return {"format": STATE_FORMAT, "partitions": self.partitions, "width_s": self.width_s,
                "closed": self.closed, "folded": {str(p): w for p, w in self.folded.items()},
                "versions": list(self.versions), "counts": dict(self.counts), "last_seen": dict(self.last_seen)}

    @classmethod
    def from_state(cls, state: dict[str, Any], partitions: int | None = None,
                   retire_after_s: float | None = None) -> Rounds:
        """Resume; a state saved before retirement (no ``last_seen``) counts every version as
        seen in its last closed window, so each gets a full period (as the single agent's)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown rounds state format {state.get('format')!r}")
        rounds = cls(partitions or int(state["partitions"]), float(state["width_s"]), retire_after_s)
        rounds.closed = int(state["closed"])
        rounds.folded = {int(p): int(w) for p, w in state["folded"].items()}
        rounds.versions = [str(v) for v in state["versions"]]
        rounds.counts.update({k: int(v) for k, v in state["counts"].items()})
        saved = state.get("last_seen")
        rounds.last_seen = ({str(v): int(w) for v, w in saved.items()} if saved is not None
                            else {v: rounds.closed for v in rounds.versions})
        return rounds


def retire_windows(retire_after_s: float | None, width_s: float) -> int | None:
    """``retire_after_s`` in windows of ``width_s`` (rounded up); None (or inf): never retire."""
    if retire_after_s is None or not math.isfinite(retire_after_s):
        return None
    return math.ceil(retire_after_s / width_s)
