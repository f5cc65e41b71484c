"""What each version would serve on the same events: the paired served-list test.

The paired comparison's attention tests cannot see one harmful update: a retrain on logs a
promotion flooded attends like a benign retrain (its rows move as far, its per-event agreement
is as high). What it changes is what it recommends: a handful of promoted titles in most lists.
So after an update, each paired event's top-k list is recomputed by *both* versions, each on its
own window, seen items excluded (as the demo's producer serves them), and every list is one unit
of mass spread over its slots, as ``items.served_slots`` spreads a served list.

The test is the served-recommendation test of the judge (``concentration.compare_served``): each
version's lists are measured on their *own* cross-fitted top items (two re-seeds serve other
items, so "the new lists favour the new top items" holds for any retrain), and the new version is
flagged when its share is credibly larger (Yates' chi-square on effective counts, in the paired
round's Benjamini-Hochberg family) and at least ``served_min_ratio`` times the previous version's.
The two sides come from the same events, which the test treats as independent samples; their
shares are positively correlated if at all, so that overstates the variance of the difference:
conservative. Effective counts divide by the Kish design effect of the users behind the lists
(a user's lists nearly repeat).

Lists accumulate from the update on (like the agreement sample): the question is about the
version, not about a window of traffic, and a cohort's paired events are few per window.

>>> rng = np.random.default_rng(0)
>>> lists = ServedPairs()
>>> users = rng.integers(0, 2**63, 400).astype(np.uint64)
>>> spread = rng.choice(np.arange(1, 2001), (400, 10))            # the previous version: lists over 2,000 titles
>>> promoted = np.where(rng.random((400, 10)) < 0.5, rng.choice(np.arange(1, 6), (400, 10)), spread)
>>> lists.add(spread, promoted, users)
>>> out = judge_lists([lists], top_k=10)
>>> bool(out.ratio[0] > 2), bool(out.test.p_value[0] < 1e-6), round(float(out.share[0]), 1)
(True, True, 0.5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from monitor.drift.concentration import ServedComparison, Side, compare_served
from monitor.drift.items import DEFAULT_CAPACITY, ItemSketch, served_slots, split_halves
from monitor.drift.sample import USER_GROUPS  # halves are the parity of the judge's random groups of users
from monitor.drift.users import UserSketch, user_groups

USER_SKETCH_WIDTH = 256  # as the paired windows': about 6 % error on n_eff


class ServedPairs:
    """A cohort's recomputed top-k lists since the update, both versions: item sketches keyed
    ``item * 2 + half`` (the users' half, as the judge's served sketches), lists per half, and
    who the lists came from."""

    __slots__ = ("previous", "new", "halves", "users")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.previous = ItemSketch(capacity)
        self.new = ItemSketch(capacity)
        self.halves = np.zeros(2)  # lists per half of the users (each side has one per pair)
        self.users = UserSketch(USER_SKETCH_WIDTH)

    @property
    def lists(self) -> int:
        """Pairs of lists held."""
        return self.users.events

    def add(self, previous: np.ndarray, new: np.ndarray, users: np.ndarray) -> None:
        """Fold pairs of lists in: ``previous``, ``new`` [P, k] raw item ids (-1: an empty slot),
        ``users`` uint64 [P]. A pair where either version has no item is left out."""
        previous, new = np.asarray(previous, dtype=np.int64), np.asarray(new, dtype=np.int64)
        if previous.ndim != 2 or new.ndim != 2 or not len(previous) == len(new) == len(users):
            raise ValueError(f"lists must be [pairs, k] on both sides: {previous.shape} and {new.shape} "
                             f"for {len(users)} users")
        users = np.asarray(users, dtype=np.uint64)
        keep = (previous >= 0).any(axis=1) & (new >= 0).any(axis=1)
        previous, new, users = previous[keep], new[keep], users[keep]
        if not len(users):
            return
        half = (user_groups(users, USER_GROUPS) & 1).astype(np.int64)
        everyone = np.ones(len(users), dtype=bool)
        for sketch, lists in ((self.previous, previous), (self.new, new)):
            # each list one unit over its slots, keyed item * 2 + half: as the judge's served sketches
            slots = served_slots([row[row >= 0] for row in lists])
            assert slots is not None  # every kept pair has an item on both sides
            sketch.add(*slots.of_events(everyone, half))
        self.halves += np.bincount(half, minlength=2)
        self.users.add(users)

    def merge(self, other: ServedPairs) -> None:
        """Add ``other``'s lists (pairs of other events): the lists of both."""
        self.previous.merge(other.previous)
        self.new.merge(other.new)
        self.halves += other.halves
        self.users.merge(other.users)

    def sides(self) -> tuple[Side, Side]:
        """(new, previous) as the concentration test reads them."""
        totals = (float(self.halves[0]), float(self.halves[1]))
        out = []
        for sketch in (self.new, self.previous):
            whole, a, b = split_halves(sketch, totals)
            out.append(Side(whole, (a, b), 0))
        return out[0], out[1]

    def to_state(self) -> dict[str, Any]:
        return {"previous": self.previous.to_state(), "new": self.new.to_state(), "halves": self.halves.tolist(),
                "users": self.users.to_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ServedPairs:
        restored = cls()
        restored.previous = ItemSketch.from_state(state["previous"])
        restored.new = ItemSketch.from_state(state["new"])
        halves = np.asarray(state["halves"], dtype=np.float64)
        if halves.shape != (2,) or (halves < 0).any():
            raise ValueError(f"served pairs hold lists per half of the users: got {halves}")
        restored.halves = halves
        restored.users = UserSketch.from_state(state["users"])
        return restored


def judge_lists(lists: Sequence[ServedPairs], *, top_k: int) -> ServedComparison:
    """The served-list test of each cohort's lists: the new version's against the previous's."""
    sides = [held.sides() for held in lists]
    design = np.array([held.users.design_effect() for held in lists])
    return compare_served([new for new, _ in sides], [previous for _, previous in sides], design, design,
                          top_k=top_k)
