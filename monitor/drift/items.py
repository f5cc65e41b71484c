"""Attention mass per item: a bounded, mergeable heavy-hitter sketch.

Every attention row spreads one unit of mass over the items of its event's history. Summed
over a cohort's events, that mass per item says *which items* collect the attention: what a
promotion, a flooded retrain or a herd of users watching the same titles changes. The
catalogue has thousands of items and a cohort's window attends to most of them, so the mass
is kept in a weighted Misra-Gries summary (the deterministic "Frequent" algorithm; weighted
Space-Saving with one counter more is the same summary read as upper bounds) of at most
``capacity`` counters:

- **add**: a batch's masses are aggregated per item and appended to a buffer; once the
  counters and the buffer together hold more than ``2 * capacity`` items they are
  *compacted*: masses of equal items added, and if more than ``capacity`` items remain, the
  ``(capacity + 1)``-th largest mass is subtracted from every counter and the counters at
  or below 0 dropped;
- **merge** (replicas, recent-traffic blocks): the counters of both added, then compacted.
  This is the mergeable-summaries merge of Agarwal et al. (2012); the bound below holds
  after any sequence of adds and merges.

**Error bound.** With ``W`` the total mass added and ``R`` the mass the compactions
removed (``W`` minus the sum of the counters), every item's counter ``c(x)`` satisfies
``f(x) - R / (capacity + 1) <= c(x) <= f(x)`` (``f``: its true mass; an item without a
counter reads 0). Each compaction subtracts one value ``d`` from every item it touches and
removes at least ``(capacity + 1) * d`` mass in all, so no item ever lost more than
``R / (capacity + 1) <= W / (capacity + 1)``. ``error_bound()`` returns it: with the default
256 counters an item's share is known to within ``1 / 257`` of the total, and every item
holding more than that share has a counter.

>>> sketch = ItemSketch(capacity=3)
>>> sketch.add(np.array([7, 7, 3, 5, 9]), np.array([0.5, 0.25, 0.5, 0.5, 0.25]))
>>> sketch.compact()
>>> sketch.total, sketch.top(2)     # 4 items for 3 counters: the 4th largest (0.25) subtracted
(2.0, [(7, 0.5), (3, 0.25)])
>>> sketch.error_bound()           # 1.0 removed over 4 counters' worth: 7 holds 0.75, 3 holds 0.5
0.25
"""

from __future__ import annotations

from typing import Any

import numpy as np

from monitor.drift.sample import pack, unpack

DEFAULT_CAPACITY = 256  # counters per sketch: items' masses known within 1/257 of the total
_MASS_SCALE = 1 << 20  # masses are stored in the checkpoint as integer multiples of 2**-20


class ItemSketch:
    """Attention mass per item id, at most ``capacity`` counters (module docstring)."""

    __slots__ = ("capacity", "items", "mass", "total", "_pending_items", "_pending_mass", "_pending")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if type(capacity) is not int or capacity < 1:
            raise ValueError(f"ItemSketch capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.items = np.zeros(0, dtype=np.int64)  # item ids with a counter, mass descending after compact()
        self.mass = np.zeros(0, dtype=np.float64)
        self.total = 0.0  # W: all mass ever added (merged sketches' included)
        self._pending_items: list[np.ndarray] = []
        self._pending_mass: list[np.ndarray] = []
        self._pending = 0

    def add(self, items: np.ndarray, mass: np.ndarray) -> None:
        """Add ``mass`` [n] (>= 0) to ``items`` [n] (repeats allowed); compacts when the buffer is full."""
        items = np.asarray(items, dtype=np.int64)
        mass = np.asarray(mass, dtype=np.float64)
        if items.shape != mass.shape or items.ndim != 1:
            raise ValueError(f"items and mass must be equal 1-d arrays, got {items.shape} and {mass.shape}")
        if not items.size:
            return
        self._pending_items.append(items)
        self._pending_mass.append(mass)
        self._pending += items.size
        self.total += float(mass.sum())
        if self._pending + self.items.size > 2 * self.capacity:
            self.compact()

    def merge(self, other: ItemSketch) -> None:
        """Add another sketch's counters (its bound adds to this one's)."""
        other.compact()
        self._pending_items.append(other.items)
        self._pending_mass.append(other.mass)
        self._pending += other.items.size
        self.total += other.total
        self.compact()

    def compact(self) -> None:
        """Fold the buffer into at most ``capacity`` counters, mass descending (module docstring)."""
        if not self._pending:
            return
        items = np.concatenate([self.items, *self._pending_items])
        mass = np.concatenate([self.mass, *self._pending_mass])
        self._pending_items, self._pending_mass, self._pending = [], [], 0
        unique, inverse = np.unique(items, return_inverse=True)
        summed = np.bincount(inverse, weights=mass, minlength=unique.size)
        if unique.size > self.capacity:
            cut = np.partition(summed, unique.size - self.capacity - 1)[unique.size - self.capacity - 1]
            summed = summed - cut  # the (capacity + 1)-th largest mass
        keep = summed > 0
        order = np.argsort(-summed[keep], kind="stable")
        self.items = unique[keep][order]
        self.mass = summed[keep][order]

    def removed(self) -> float:
        """R: mass the compactions removed (total minus the counters), >= 0."""
        self.compact()
        return max(0.0, self.total - float(self.mass.sum()))

    def error_bound(self) -> float:
        """The most any item's counter falls short of its true mass: R / (capacity + 1)."""
        return self.removed() / (self.capacity + 1)

    def top(self, n: int) -> list[tuple[int, float]]:
        """The ``n`` items with the largest counters, as (item id, mass), largest first."""
        self.compact()
        return [(int(i), float(m)) for i, m in zip(self.items[:n], self.mass[:n], strict=True)]

    def estimate(self, items: np.ndarray) -> np.ndarray:
        """Counters of ``items`` [n] (0 for those without one): lower bounds within ``error_bound()``."""
        self.compact()
        items = np.asarray(items, dtype=np.int64)
        order = np.argsort(self.items)
        sorted_items = self.items[order]
        at = np.searchsorted(sorted_items, items)
        at = np.minimum(at, max(sorted_items.size - 1, 0))
        found = sorted_items.size > 0
        hit = (sorted_items[at] == items) if found else np.zeros(items.shape, dtype=bool)
        return np.where(hit, self.mass[order][at] if found else 0.0, 0.0)

    def reset(self) -> None:
        self.items = np.zeros(0, dtype=np.int64)
        self.mass = np.zeros(0, dtype=np.float64)
        self.total = 0.0
        self._pending_items, self._pending_mass, self._pending = [], [], 0

    def copy(self) -> ItemSketch:
        twin = ItemSketch(self.capacity)
        twin.merge(self)
        return twin

    def to_state(self) -> dict[str, Any]:
        """JSON-able: at most ``capacity`` ids and masses, packed (masses in units of 2**-20,
        rounded down, so a restored counter stays a lower bound)."""
        self.compact()
        return {"capacity": self.capacity, "items": pack(self.items),
                "mass": pack(np.floor(self.mass * _MASS_SCALE)), "total": self.total}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ItemSketch:
        sketch = cls(int(state["capacity"]))
        items, mass = unpack(state["items"]), unpack(state["mass"]) / _MASS_SCALE
        if items.ndim != 1 or items.shape != mass.shape or items.size > sketch.capacity or (mass < 0).any():
            raise ValueError(f"an item sketch holds {items.shape} ids and {mass.shape} masses, "
                             f"at most {sketch.capacity} non-negative")
        order = np.argsort(-mass, kind="stable")
        sketch.items, sketch.mass = items[order], mass[order]
        sketch.total = max(float(state["total"]), float(mass.sum()))
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemSketch):
            return NotImplemented
        self.compact()
        other.compact()
        return (self.capacity == other.capacity and np.array_equal(self.items, other.items)
                and np.allclose(self.mass, other.mass) and np.isclose(self.total, other.total))

    def __repr__(self) -> str:
        return f"ItemSketch(capacity={self.capacity}, counters={self.items.size}, total={self.total:.1f})"
