"""Attention mass per item: a bounded, mergeable heavy-hitter sketch.

Every attention row spreads one unit of mass over the items of its event's history. Summed
over a cohort's events, that mass per item says *which items* collect the attention: what a
promotion, a flooded retrain or a herd of users watching the same titles changes. The
catalogue has thousands of items and a cohort's window attends to most of them, so the mass
is kept in a weighted Misra-Gries summary (the deterministic "Frequent" algorithm; weighted
Space-Saving with one counter more is the same summary read as upper bounds) of at most
``capacity`` counters:

- **add**: a batch's masses, aggregated per item, are added to the counters (new items get
  one); if more than ``capacity`` counters result, the ``(capacity + 1)``-th largest is
  subtracted from every counter and the counters at or below 0 dropped (a *compaction*).
  The batch arrives aggregated per cohort and item (``Attended.by_cohort``, ascending ids),
  so an add is a ``searchsorted``, a ``partition`` and a sort of at most ``capacity`` ids;
- **merge** (replicas, recent-traffic blocks): the counters of both added, then compacted.
  This is the mergeable-summaries merge of Agarwal et al. (2012); the bound below holds
  after any sequence of adds and merges.

**Error bound.** With ``W`` the total mass added and ``R`` the mass the compactions
removed (``W`` minus the sum of the counters), every item's counter ``c(x)`` satisfies
``f(x) - R / (capacity + 1) <= c(x) <= f(x)`` (``f``: its true mass; an item without a
counter reads 0). A compaction takes at most ``d`` (the ``(capacity + 1)``-th largest counter)
from any item and exactly ``d`` from each of the ``capacity + 1`` largest, so it removes at
least ``(capacity + 1) * d`` in all; summed over compactions no item ever lost more than
``R / (capacity + 1) <= W / (capacity + 1)``. ``error_bound()`` returns it: with the default
256 counters an item's share is known to within ``1 / 257`` of the total, and every item
holding more than that share has a counter.

>>> sketch = ItemSketch(capacity=3)
>>> sketch.add(np.array([7, 7, 3, 5, 9]), np.array([0.5, 0.25, 0.5, 0.5, 0.25]))
>>> sketch.total, sketch.top(2)     # 4 items for 3 counters: the 4th largest (0.25) subtracted
(2.0, [(7, 0.5), (3, 0.25)])
>>> sketch.error_bound()           # 1.0 removed over 4 counters' worth: 7 holds 0.75, 3 holds 0.5
0.25
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

ItemMass = tuple[np.ndarray, np.ndarray]  # (item ids [d], mass [d, layers]): one cohort's share of a batch

DEFAULT_CAPACITY = 256  # counters per sketch: items' masses known within 1/257 of the total


def _pack(array: np.ndarray, dtype: str) -> str:
    """A 1-d array as little-endian bytes, zlib-compressed, in base64 (``sample.pack`` for floats)."""
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array, dtype=dtype).tobytes(), 1)).decode("ascii")


def _unpack(text: str, dtype: str) -> np.ndarray:
    return np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=dtype).copy()


@dataclass(frozen=True)
class Attended:
    """The attention a batch's events put on their items: one entry per real history position.

    Items are dense codes into ``ids`` (ascending raw ids): the fold passes the model's rank
    of each raw id, so aggregating per (cohort, item) is a ``bincount`` with no sort.
    """

    event: np.ndarray  # [K] the event's row in the batch
    item: np.ndarray  # [K] item code: a position in ``ids``
    mass: np.ndarray  # [K, layers] head-averaged attention weight
    ids: np.ndarray  # [V] ascending raw item ids

    def __post_init__(self) -> None:
        if not (self.event.shape == self.item.shape == self.mass.shape[:1]) or self.mass.ndim != 2:
            raise ValueError(f"attended entries disagree: {self.event.shape}, {self.item.shape}, {self.mass.shape}")

    @classmethod
    def of_raw(cls, event: np.ndarray, raw: np.ndarray, mass: np.ndarray) -> Attended:
        """From raw item ids (tests, tools): codes by ``np.unique``."""
        ids, code = np.unique(np.asarray(raw, dtype=np.int64), return_inverse=True)
        return cls(np.asarray(event, dtype=np.int64), code.reshape(-1), np.asarray(mass), ids)

    def by_cohort(self, cohorts: np.ndarray, n_cohorts: int) -> list[ItemMass]:
        """Each cohort's mass per item (ascending ids), summed over its events: one ``np.bincount``
        per layer over a dense (cohort, item) index, ``cohorts`` [B] the cohort of each event."""
        v = self.ids.size
        key = np.asarray(cohorts, dtype=np.int64)[self.event] * v + self.item
        held = np.bincount(key, minlength=n_cohorts * v).reshape(n_cohorts, v) > 0
        mass = np.stack([np.bincount(key, weights=self.mass[:, layer], minlength=n_cohorts * v)
                         for layer in range(self.mass.shape[1])], axis=-1).reshape(n_cohorts, v, -1)
        out = []
        for cohort in range(n_cohorts):
            columns = np.flatnonzero(held[cohort])
            out.append((self.ids[columns], mass[cohort, columns]))
        return out

    def of_events(self, members: np.ndarray) -> ItemMass:
        """The mass per item of the events where ``members`` [B] (bool) holds."""
        return self.by_cohort(np.asarray(members, dtype=np.int64), 2)[1]


class ItemSketch:
    """Attention mass per item id, at most ``capacity`` counters (module docstring)."""

    __slots__ = ("capacity", "items", "mass", "total")

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if type(capacity) is not int or capacity < 1:
            raise ValueError(f"ItemSketch capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self.items = np.zeros(0, dtype=np.int64)  # item ids with a counter, ascending
        self.mass = np.zeros(0, dtype=np.float64)  # their counters
        self.total = 0.0  # W: all mass ever added (merged sketches' included)

    def add(self, items: np.ndarray, mass: np.ndarray) -> None:
        """Add ``mass`` [n] (>= 0) to ``items`` [n] (repeats allowed; ascending unique ids, as
        ``Attended.by_cohort`` gives them, skip the aggregation)."""
        items = np.asarray(items, dtype=np.int64)
        mass = np.asarray(mass, dtype=np.float64)
        if items.shape != mass.shape or items.ndim != 1:
            raise ValueError(f"items and mass must be equal 1-d arrays, got {items.shape} and {mass.shape}")
        if not items.size:
            return
        if not (items[1:] > items[:-1]).all():
            items, inverse = np.unique(items, return_inverse=True)
            mass = np.bincount(inverse.reshape(-1), weights=mass, minlength=items.size)
        self.total += float(mass.sum())
        self._merge(items, mass)

    def merge(self, other: ItemSketch) -> None:
        """Add another sketch's counters (its bound adds to this one's)."""
        self.total += other.total
        self._merge(other.items, other.mass)

    def _merge(self, items: np.ndarray, mass: np.ndarray) -> None:
        """Add ascending unique ``items`` to the counters; past ``capacity`` counters, subtract the
        ``(capacity + 1)``-th largest from all and drop those at or below 0 (module docstring)."""
        counted = self.mass.copy()
        if self.items.size:
            at = np.minimum(np.searchsorted(self.items, items), self.items.size - 1)
            hit = self.items[at] == items
            counted[at[hit]] += mass[hit]
            items, mass = items[~hit], mass[~hit]
        ids = np.concatenate([self.items, items])
        counted = np.concatenate([counted, mass])
        if ids.size > self.capacity:
            cut = np.partition(counted, ids.size - self.capacity - 1)[ids.size - self.capacity - 1]
            keep = counted > cut
            ids, counted = ids[keep], counted[keep] - cut
        if items.size:
            order = np.argsort(ids, kind="stable")
            ids, counted = ids[order], counted[order]
        self.items, self.mass = ids, counted

    def removed(self) -> float:
        """R: mass the compactions removed (total minus the counters), >= 0."""
        return max(0.0, self.total - float(self.mass.sum()))

    def error_bound(self) -> float:
        """The most any item's counter falls short of its true mass: R / (capacity + 1)."""
        return self.removed() / (self.capacity + 1)

    def top(self, n: int) -> list[tuple[int, float]]:
        """The ``n`` items with the largest counters, as (item id, mass), largest first (ties: lower id)."""
        order = np.argsort(-self.mass, kind="stable")[:n]
        return [(int(i), float(m)) for i, m in zip(self.items[order], self.mass[order], strict=True)]

    def estimate(self, items: np.ndarray) -> np.ndarray:
        """Counters of ``items`` [n] (0 for those without one): lower bounds within ``error_bound()``."""
        items = np.asarray(items, dtype=np.int64)
        if not self.items.size:
            return np.zeros(items.shape)
        at = np.minimum(np.searchsorted(self.items, items), self.items.size - 1)
        return np.where(self.items[at] == items, self.mass[at], 0.0)

    def reset(self) -> None:
        self.items = np.zeros(0, dtype=np.int64)
        self.mass = np.zeros(0, dtype=np.float64)
        self.total = 0.0

    def copy(self) -> ItemSketch:
        twin = ItemSketch(self.capacity)
        twin.merge(self)
        return twin

    def to_state(self) -> dict[str, Any]:
        """JSON-able: at most ``capacity`` ids and masses (float64, exact), packed: at most
        ~6 KB at the default capacity, whatever the traffic."""
        return {"capacity": self.capacity, "items": _pack(self.items, "<i8"), "mass": _pack(self.mass, "<f8"),
                "total": self.total}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ItemSketch:
        sketch = cls(int(state["capacity"]))
        items, mass = _unpack(state["items"], "<i8").astype(np.int64), _unpack(state["mass"], "<f8").astype(np.float64)
        if items.ndim != 1 or items.shape != mass.shape or items.size > sketch.capacity or (mass < 0).any():
            raise ValueError(f"an item sketch holds {items.shape} ids and {mass.shape} masses, "
                             f"at most {sketch.capacity} non-negative")
        order = np.argsort(items, kind="stable")
        if (np.diff(items[order]) == 0).any():
            raise ValueError("an item sketch holds an item twice")
        sketch.items, sketch.mass = items[order], mass[order]
        sketch.total = max(float(state["total"]), float(mass.sum()))
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemSketch):
            return NotImplemented
        return (self.capacity == other.capacity and np.array_equal(self.items, other.items)
                and np.allclose(self.mass, other.mass) and np.isclose(self.total, other.total))

    def __repr__(self) -> str:
        return f"ItemSketch(capacity={self.capacity}, counters={self.items.size}, total={self.total:.1f})"
