"""Attention mass per item: a bounded, mergeable heavy-hitter sketch.

Every attention row spreads one unit of mass over the items of its event's history. Summed
over a cohort's events, that mass per item says *which items* collect the attention: what a
promotion, a flooded retrain or a herd of users watching the same titles changes. The
catalogue has thousands of items and a cohort's window attends to most of them, so the mass
is kept in a weighted Misra-Gries summary (the deterministic "Frequent" algorithm; weighted
Space-Saving with one counter more is the same summary read as upper bounds) of at most
``capacity`` counters per layer (the layers share one array of item ids, so a sketch holds
at most ``layers * capacity`` ids):

- **add**: a batch's masses, aggregated per item (``Attended.by_cohort``), wait in a buffer
  of at most ``PENDING * capacity`` entries; when it is full, or the sketch is read, they are
  added to the counters (new items get one), and in each layer holding more than
  ``capacity`` counters the ``(capacity + 1)``-th largest is subtracted from every counter,
  those at or below 0 dropped (a *compaction*). Buffering makes an add an append: the
  per-batch cost is what the fold's throughput feels;
- **merge** (replicas, recent-traffic blocks): the counters of both added, then compacted.
  This is the mergeable-summaries merge of Agarwal et al. (2012); the bound below holds
  after any sequence of adds and merges.

**Error bound**, per layer. With ``W`` the total mass added and ``R`` the mass the compactions
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
>>> sketch.mass_total(), sketch.top(2)     # 4 items for 3 counters: the 4th largest (0.25) subtracted
(2.0, [(7, 0.5), (3, 0.25)])
>>> sketch.error_bound()           # 1.0 removed over 4 counters' worth: 7 holds 0.75, 3 holds 0.5
0.25
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ItemMass = tuple[np.ndarray, np.ndarray]  # (item ids [d], mass [d, layers]): one cohort's share of a batch

DEFAULT_CAPACITY = 256  # counters per sketch and layer: items' masses known within 1/257 of the total
PENDING = 8  # batch entries buffered before a compaction, in multiples of the capacity


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
        # The batch's own items, once for every dimension: the dense index below is then as
        # wide as the batch's distinct items, whatever the catalogue's size.
        present, local = np.unique(self.item, return_inverse=True)
        object.__setattr__(self, "_present", self.ids[present])
        object.__setattr__(self, "_local", local.reshape(-1))

    @classmethod
    def of_raw(cls, event: np.ndarray, raw: np.ndarray, mass: np.ndarray) -> Attended:
        """From raw item ids (tests, tools): codes by ``np.unique``."""
        ids, code = np.unique(np.asarray(raw, dtype=np.int64), return_inverse=True)
        return cls(np.asarray(event, dtype=np.int64), code.reshape(-1), np.asarray(mass), ids)

    def by_cohort(self, cohorts: np.ndarray, n_cohorts: int, halves: np.ndarray | None = None) -> list[ItemMass]:
        """Each cohort's mass per item (ascending ids), summed over its events: one ``np.bincount``
        per layer over a dense (cohort, item) index, ``cohorts`` [B] the cohort of each event.

        With ``halves`` [B] (0 or 1: the half of the users each event's user falls in) the
        keys are ``item * 2 + half``: each half of the users keeps its own counters, which
        the test needs (``concentration.compare``; ``split_halves`` reads them back)."""
        ids, local = self._codes(halves)
        d = ids.size
        key = np.asarray(cohorts, dtype=np.int64)[self.event] * d + local
        # One [cohorts, d] plane per layer: reducing over a trailing axis of 2 (``any(axis=2)``,
        # ``np.stack(axis=1)``) cost ten times the bincounts themselves.
        planes = [np.bincount(key, weights=self.mass[:, layer], minlength=n_cohorts * d).reshape(n_cohorts, d)
                  for layer in range(self.mass.shape[1])]
        held = planes[0] != 0  # an item with no mass in any layer adds nothing
        for plane in planes[1:]:
            held |= plane != 0
        out = []
        for cohort in range(n_cohorts):
            columns = np.flatnonzero(held[cohort])
            out.append((ids[columns], np.stack([plane[cohort, columns] for plane in planes], axis=1)))
        return out

    def _codes(self, halves: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(keys [d], each entry's code [K]): item ids, or ``item * 2 + half`` with ``halves``;
        the halves' codes are kept for the next dimension of the batch (the same array)."""
        present: np.ndarray = self._present  # type: ignore[attr-defined]
        local: np.ndarray = self._local  # type: ignore[attr-defined]
        if halves is None:
            return present, local
        cached = self.__dict__.get("_halved")
        if cached is not None and cached[0] is halves:
            return cached[1], cached[2]
        ids = (present[:, None] * 2 + np.arange(2)).reshape(-1)
        codes = local * 2 + np.asarray(halves, dtype=np.int64)[self.event]
        object.__setattr__(self, "_halved", (halves, ids, codes))
        return ids, codes

    def on_watched(self, rows: np.ndarray, watched: list[list[np.ndarray]], events: int) -> np.ndarray:
        """Each event's mass on the items it watches ``[B, layers]``: ``rows`` [B] the entry of
        ``watched`` (per layer, raw item ids) an event's cohort and half watch, -1 for none.
        One lookup table over the batch's own items, one gather and a ``bincount`` per layer
        (``concentration.watched`` tests the sums per group of users)."""
        present: np.ndarray = self._present  # type: ignore[attr-defined]
        local: np.ndarray = self._local  # type: ignore[attr-defined]
        layers = self.mass.shape[1]
        table = np.zeros((len(watched), layers, present.size), dtype=bool)
        # Every (row, layer, id) watched, looked up in the batch's items at once.
        lists = [(row, layer, ids) for row, per_layer in enumerate(watched) for layer, ids in enumerate(per_layer)]
        ids = np.concatenate([np.asarray(i, dtype=np.int64) for _, _, i in lists]) if lists else np.zeros(0, np.int64)
        sizes = [len(i) for _, _, i in lists]
        at = np.minimum(np.searchsorted(present, ids), max(present.size - 1, 0))
        found = present[at] == ids if present.size else np.zeros(ids.size, dtype=bool)
        row_of = np.repeat(np.asarray([r for r, _, _ in lists], dtype=np.intp), sizes)
        layer_of = np.repeat(np.asarray([lay for _, lay, _ in lists], dtype=np.intp), sizes)
        table[row_of[found], layer_of[found], at[found]] = True
        entry_row = np.asarray(rows, dtype=np.intp)[self.event]
        on = entry_row >= 0
        event, row, code, mass = self.event[on], entry_row[on], local[on], self.mass[on]
        out = np.zeros((events, layers))
        for layer in range(layers):
            hit = table[row, layer, code]
            out[:, layer] = np.bincount(event[hit], weights=mass[hit, layer], minlength=events)
        return out

    def of_events(self, members: np.ndarray, halves: np.ndarray | None = None) -> ItemMass:
        """The mass per item of the events where ``members`` [B] (bool) holds."""
        return self.by_cohort(np.asarray(members, dtype=np.int64), 2, halves)[1]


def served_slots(lists: Sequence[Sequence[int]]) -> Attended | None:
    """A batch's served recommendations as mass per item: each event's list (raw item ids) is
    one unit spread evenly over its slots, as an attention row is over its history; None when
    no event carries a list. Served ids need not be in any model's catalogue."""
    sizes = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    if not sizes.any():
        return None
    raw = np.fromiter((item for x in lists for item in x), dtype=np.int64, count=int(sizes.sum()))
    event = np.repeat(np.arange(len(lists), dtype=np.int64), sizes)
    mass = np.repeat(1.0 / np.maximum(sizes, 1), sizes).reshape(-1, 1)
    return Attended.of_raw(event, raw, mass)


class ItemSketch:
    """Attention mass per item id and layer, at most ``capacity`` counters per layer (module docstring)."""

    __slots__ = ("capacity", "layers", "_items", "_mass", "total", "_pending", "_waiting")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, layers: int = 1) -> None:
        if type(capacity) is not int or capacity < 1:
            raise ValueError(f"ItemSketch capacity must be a positive int, got {capacity!r}")
        if type(layers) is not int or layers < 1:
            raise ValueError(f"ItemSketch layers must be a positive int, got {layers!r}")
        self.capacity = capacity
        self.layers = layers
        self._items = np.zeros(0, dtype=np.int64)  # item ids with a counter in some layer, ascending
        self._mass = np.zeros((0, layers), dtype=np.float64)  # their counters
        self.total = np.zeros(layers)  # W per layer: all mass ever added (merged sketches' included)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._waiting = 0

    @property
    def items(self) -> np.ndarray:
        """Item ids with a counter (in some layer), ascending."""
        self._flush()
        return self._items

    @property
    def mass(self) -> np.ndarray:
        """Their counters ``[n, layers]`` (0 where a layer holds none)."""
        self._flush()
        return self._mass

    def add(self, items: np.ndarray, mass: np.ndarray) -> None:
        """Add ``mass`` [n] or [n, layers] (>= 0) to ``items`` [n] (repeats allowed; ascending unique
        ids, as ``Attended.by_cohort`` gives them, skip the aggregation)."""
        items = np.asarray(items, dtype=np.int64)
        mass = np.asarray(mass, dtype=np.float64)
        mass = mass.reshape(-1, 1) if mass.ndim == 1 else mass
        if items.ndim != 1 or mass.shape != (items.size, self.layers):
            raise ValueError(f"items [n] and mass [n, {self.layers}] disagree: {items.shape}, {mass.shape}")
        if not items.size:
            return
        if not (items[1:] > items[:-1]).all():
            items, inverse = np.unique(items, return_inverse=True)
            mass = _sum_rows(inverse.reshape(-1), mass, items.size)
        self.total += mass.sum(axis=0)
        self._pending.append((items, mass))
        self._waiting += items.size
        if self._waiting > PENDING * self.capacity:
            self._flush()

    def merge(self, other: ItemSketch) -> None:
        """Add another sketch's counters (its bound adds to this one's)."""
        if other.layers != self.layers:
            raise ValueError(f"cannot merge a sketch of {other.layers} layers into one of {self.layers}")
        self.total += other.total
        self._pending.append((other.items, other.mass))
        self._waiting += other.items.size
        self._flush()

    def _flush(self) -> None:
        """Add the buffer to the counters and compact each layer (module docstring)."""
        if not self._pending:
            return
        if len(self._pending) == 1:
            items, mass = self._pending[0]
        else:
            items, inverse = np.unique(np.concatenate([i for i, _ in self._pending]), return_inverse=True)
            mass = _sum_rows(inverse.reshape(-1), np.concatenate([m for _, m in self._pending]), items.size)
        self._pending, self._waiting = [], 0
        counted = self._mass.copy()
        if self._items.size:
            at = np.minimum(np.searchsorted(self._items, items), self._items.size - 1)
            hit = self._items[at] == items
            counted[at[hit]] += mass[hit]
            items, mass = items[~hit], mass[~hit]
        ids = np.concatenate([self._items, items])
        counted = np.concatenate([counted, mass])
        if ids.size > self.capacity:
            for layer in range(self.layers):
                column = counted[:, layer]
                held = int(np.count_nonzero(column))
                if held > self.capacity:
                    cut = np.partition(column, ids.size - self.capacity - 1)[ids.size - self.capacity - 1]
                    np.maximum(column - cut, 0.0, out=column)
            keep = _held(counted)
            ids, counted = ids[keep], counted[keep]
        if items.size:
            order = np.argsort(ids, kind="stable")
            ids, counted = ids[order], counted[order]
        self._items, self._mass = ids, counted

    def mass_total(self, layer: int = 0) -> float:
        """W of one layer: all mass added."""
        return float(self.total[layer])

    def removed(self, layer: int = 0) -> float:
        """R of one layer: mass the compactions removed (total minus the counters), >= 0."""
        return max(0.0, float(self.total[layer]) - float(self.mass[:, layer].sum()))

    def error_bound(self, layer: int = 0) -> float:
        """The most any item's counter of ``layer`` falls short of its true mass: R / (capacity + 1)."""
        return self.removed(layer) / (self.capacity + 1)

    def top(self, n: int, layer: int = 0) -> list[tuple[int, float]]:
        """The ``n`` items with the largest counters of ``layer``, as (item id, mass), largest first
        (ties: lower id); only items with a counter there."""
        column = self.mass[:, layer]
        order = np.argsort(-column, kind="stable")[: min(n, int(np.count_nonzero(column)))]
        return [(int(i), float(m)) for i, m in zip(self._items[order], column[order], strict=True)]

    def estimate(self, items: np.ndarray, layer: int = 0) -> np.ndarray:
        """Counters of ``items`` [n] in ``layer`` (0 for those without one): lower bounds within
        ``error_bound(layer)``."""
        items = np.asarray(items, dtype=np.int64)
        held = self.items
        if not held.size:
            return np.zeros(items.shape)
        at = np.minimum(np.searchsorted(held, items), held.size - 1)
        return np.where(held[at] == items, self._mass[at, layer], 0.0)

    def reset(self) -> None:
        self._items = np.zeros(0, dtype=np.int64)
        self._mass = np.zeros((0, self.layers), dtype=np.float64)
        self.total = np.zeros(self.layers)
        self._pending, self._waiting = [], 0

    def copy(self) -> ItemSketch:
        twin = ItemSketch(self.capacity, self.layers)
        twin.merge(self)
        return twin

    def to_state(self) -> dict[str, Any]:
        """JSON-able: at most ``layers * capacity`` ids and their masses (float64, exact), packed:
        ~10 KB for 2 layers at the default capacity, whatever the traffic."""
        return {"capacity": self.capacity, "layers": self.layers, "items": _pack(self.items, "<i8"),
                "mass": _pack(self.mass, "<f8"), "total": self.total.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ItemSketch:
        sketch = cls(int(state["capacity"]), int(state.get("layers", 1)))
        items = _unpack(state["items"], "<i8").astype(np.int64)
        mass = _unpack(state["mass"], "<f8").astype(np.float64)
        total = np.asarray(state["total"], dtype=np.float64).reshape(-1)
        if (items.ndim != 1 or mass.size != items.size * sketch.layers or total.shape != (sketch.layers,)
                or items.size > sketch.layers * sketch.capacity or (mass < 0).any()
                or (np.diff(items) <= 0).any()):
            raise ValueError(f"an item sketch holds {items.shape} ids and {mass.shape} masses, at most "
                             f"{sketch.layers} x {sketch.capacity} ascending ids and non-negative masses")
        mass = mass.reshape(items.size, sketch.layers)
        if ((mass > 0).sum(axis=0) > sketch.capacity).any():
            raise ValueError(f"an item sketch holds more than {sketch.capacity} counters in a layer")
        sketch._items, sketch._mass = items, mass
        sketch.total = np.maximum(total, mass.sum(axis=0))
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemSketch):
            return NotImplemented
        return ((self.capacity, self.layers) == (other.capacity, other.layers)
                and np.array_equal(self.items, other.items) and np.allclose(self.mass, other.mass)
                and np.allclose(self.total, other.total))

    def __repr__(self) -> str:
        return (f"ItemSketch(capacity={self.capacity}, layers={self.layers}, counters={self.items.size}, "
                f"total={self.total.round(1).tolist()})")


def _sum_rows(inverse: np.ndarray, mass: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``mass`` [k, layers] summed by ``inverse`` [k] into [n, layers]."""
    out = np.empty((n, mass.shape[1]))
    for layer in range(mass.shape[1]):
        out[:, layer] = np.bincount(inverse, weights=mass[:, layer], minlength=n)
    return out


def _held(mass: np.ndarray) -> np.ndarray:
    """[n] rows of ``mass`` [n, layers] non-zero in some layer (``any(axis=1)`` over a trailing
    axis of a few layers is several times slower than these column compares)."""
    held = mass[:, 0] != 0
    for layer in range(1, mass.shape[1]):
        held |= mass[:, layer] != 0
    return held


def split_halves(sketch: ItemSketch, half_totals: tuple[float, float]) -> tuple[ItemSketch, ItemSketch, ItemSketch]:
    """(whole, half 0, half 1) of a sketch keyed ``item * 2 + half`` (``Attended.by_cohort``
    with halves), each keyed by item id again, for reading. The whole sums an item's two
    counters, so its bound is twice the sketch's: it reads as a sketch of half the capacity.
    ``half_totals``: each half's mass (its events), which the counters alone do not say."""
    keys, mass = sketch.items, sketch.mass
    ids, inverse = np.unique(keys >> 1, return_inverse=True)
    whole = ItemSketch(max(1, (sketch.capacity + 1) // 2 - 1), sketch.layers)
    whole._items, whole._mass, whole.total = ids, _sum_rows(inverse.reshape(-1), mass, ids.size), sketch.total.copy()
    parts = []
    for half, total in enumerate(half_totals):
        part = ItemSketch(sketch.capacity, sketch.layers)
        chosen = (keys & 1) == half
        part._items, part._mass = keys[chosen] >> 1, mass[chosen]
        part.total = np.maximum(np.full(sketch.layers, float(total)), part._mass.sum(axis=0))
        parts.append(part)
    return whole, parts[0], parts[1]
