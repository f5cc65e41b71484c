"""A cohort's recent traffic: what a model update is judged against.

When a new version replaces a running one, the question is "does the new model attend
differently from the old one on today's traffic?". The old version's launch baseline
answers another question: it may be weeks old, and every traffic drift since then would
land in the update's verdict. So each cohort keeps its last judged windows in two
blocks: ``current`` fills with every window the judge empties; once it holds a
reference's worth (``ReferenceRule``: events, effective users, seconds) it becomes
``previous`` and a new block starts. ``snapshot()`` is both blocks: between one and two
references' worth of the latest traffic, in the memory of two samples.

>>> from monitor.drift.baseline import ReferenceRule
>>> rule = ReferenceRule(events=4, users=0, seconds=0)
>>> recent = RecentTraffic((1, 1, 2))
>>> window = Sample(1, 1, 2)
>>> window.add(np.array([[[3, 0]]]), np.zeros((1, 16, 2), dtype=np.int64), np.zeros((5, 256), dtype=np.int64), events=3)
>>> recent.add(window, now=1.0, rule=rule); recent.snapshot().events   # one block, not full
3
>>> recent.add(window, now=2.0, rule=rule); recent.add(window, now=3.0, rule=rule)
>>> recent.snapshot().events                                          # a full block + 3
9
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np  # noqa: F401  (doctest)

from monitor.drift.sample import Sample

if TYPE_CHECKING:
    from monitor.drift.baseline import ReferenceRule


class RecentTraffic:
    """The last one to two references' worth of one cohort's judged windows."""

    __slots__ = ("current", "previous", "started_at")

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.current = Sample(*shape)
        self.previous: Sample | None = None
        self.started_at: float | None = None  # when ``current`` took its first window

    def add(self, window: Sample, now: float | None, rule: ReferenceRule) -> None:
        """Fold a judged (or emptied) window in; close the block once it holds a reference's worth."""
        if window.events == 0:
            return
        if self.current.events == 0:
            self.started_at = now
        self.current.merge(window)
        if rule.holds_enough(self.current) and rule.old_enough(self.started_at, now):
            self.previous, self.current = self.current, Sample(*self.current.shape)
            self.started_at = None

    def snapshot(self) -> Sample:
        """A copy of both blocks together: the latest one to two references' worth."""
        out = self.current.copy()
        if self.previous is not None:
            out.merge(self.previous)
        return out

    def to_state(self) -> dict[str, Any]:
        return {"current": self.current.to_state(), "started_at": self.started_at,
                "previous": None if self.previous is None else self.previous.to_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RecentTraffic:
        current = Sample.from_state(state["current"])
        recent = cls(current.shape)
        recent.current = current
        recent.started_at = state["started_at"]
        recent.previous = None if state["previous"] is None else Sample.from_state(state["previous"])
        return recent
