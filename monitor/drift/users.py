"""Who is behind a window's events: a bounded, mergeable sketch of events per user.

Events of one user are not independent evidence: consecutive events of a user share
nearly the same history, so their attention statistics nearly repeat. A window of
2,000 events from 30 users holds about 30 users' worth of evidence, not 2,000. Kish's
effective sample size says how many independent draws a clustered sample is worth,

    n_eff = (sum_u w_u)^2 / sum_u w_u^2        (w_u: events of user u)

which is n for n users with one event each and 1 for one user with all of them. It
treats a user's events as identical (intra-user correlation 1), the conservative end.

``sum_u w_u^2`` is the stream's second frequency moment. A count sketch (Alon, Matias
and Szegedy's estimator with Charikar et al.'s buckets) estimates it in fixed memory:
``depth`` rows of ``width`` signed counters; each user adds its sign to one counter
per row; the sum of a row's squared counters is an unbiased estimate of the moment
(relative standard error about sqrt(2 / width)), and the median over rows tames the
tails. Sketches of the same shape merge by adding their counters, so replicas can
merge them, and a user split across two windows counts once in their merge.

User ids arrive untrusted and unbounded; only their 64-bit hashes (``hash_users``,
stable across processes and restarts) touch the sketch.

>>> sketch = UserSketch()
>>> sketch.add(hash_users(["ann"] * 30 + ["bob"] * 10))   # two users, 40 events
>>> sketch.events, round(sketch.effective_users(), 2)    # 40^2 / (30^2 + 10^2)
(40, 1.6)
>>> spread = UserSketch()
>>> spread.add(hash_users([f"user-{i}" for i in range(300)]))
>>> 280 < spread.effective_users() <= 300
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio increment of splitmix64
_GROUP_SALT = np.uint64(0xD1B54A32D192ED03)  # random groups use their own mix of the hash


def hash_users(user_ids: Iterable[str]) -> np.ndarray:
    """64-bit hashes of user ids (BLAKE2b), the same in every process: ``uint64 [n]``."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
         for u in user_ids),
        dtype=np.uint64,
    )


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a cheap, well-mixed 64-bit permutation (vectorised)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sketch_cells(user_hashes: np.ndarray, width: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each hash lands in a ``depth x width`` sketch: flat counter index (row * width +
    bucket) and sign (+1 / -1), both ``[depth, n]``. Computed once per batch and shared by
    every grouping of its events (``group_counters``)."""
    hashes = np.asarray(user_hashes, dtype=np.uint64).ravel()
    rows = np.arange(1, depth + 1, dtype=np.uint64)[:, None]  # [depth, 1]
    with np.errstate(over="ignore"):
        mixed = _splitmix(hashes[None, :] + _MIX * rows)  # [depth, n]
    offsets = (np.arange(depth, dtype=np.intp) * width)[:, None]
    cells = (mixed & np.uint64(width - 1)).astype(np.intp) + offsets
    signs = np.where((mixed >> np.uint64(63)) == 0, 1.0, -1.0)
    return cells, signs


def user_groups(user_hashes: np.ndarray, groups: int) -> np.ndarray:
    """Each hash's random group in ``[0, groups)`` (a power of two), the same in every process:
    ``intp [n]``. A user's events always share a group, so groups are random collections of
    whole users: the between-group spread of a sample measures its clustered variance."""
    if groups < 2 or groups & (groups - 1):
        raise ValueError(f"groups must be a power of two >= 2, got {groups}")
    hashes = np.asarray(user_hashes, dtype=np.uint64).ravel()
    with np.errstate(over="ignore"):
        mixed = _splitmix(hashes ^ _GROUP_SALT)
    return (mixed >> np.uint64(64 - groups.bit_length() + 1)).astype(np.intp)


def group_counters(cells: np.ndarray, signs: np.ndarray, groups: np.ndarray, n_groups: int,
                   width: int) -> np.ndarray:
    """Sketch counters of every group of a batch in one pass: ``[n_groups, depth, width]``.

    ``cells``, ``signs``: ``sketch_cells(hashes, width, depth)`` of the batch, ``[depth, n]``;
    ``groups``: each event's group in ``[0, n_groups)``, ``[n]``. Group g's slice is what a
    sketch of group g's events alone would hold (``UserSketch.add_counters``).
    """
    depth = cells.shape[0]
    size = depth * width
    index = (np.asarray(groups, dtype=np.intp)[None, :] * size + cells).ravel()
    counts = np.bincount(index, weights=signs.ravel(), minlength=n_groups * size)
    return np.rint(counts).astype(np.int64).reshape(n_groups, depth, width)


class UserSketch:
    """Events per user, sketched: ``events`` exactly, ``effective_users()`` estimated."""

    __slots__ = ("width", "depth", "events", "_counters")

    def __init__(self, width: int = 512, depth: int = 5) -> None:
        if width < 8 or width & (width - 1):
            raise ValueError(f"width must be a power of two >= 8, got {width}")
        if depth < 1 or depth % 2 == 0:
            raise ValueError(f"depth must be odd and >= 1 (a median of rows), got {depth}")
        self.width = int(width)
        self.depth = int(depth)
        self.events = 0
        self._counters = np.zeros((self.depth, self.width), dtype=np.int64)  # [depth, width]

    def add(self, user_hashes: np.ndarray) -> None:
        """Count one event for each hash in ``user_hashes`` (``uint64 [n]``, repeats allowed)."""
        hashes = np.asarray(user_hashes, dtype=np.uint64).ravel()
        if hashes.size == 0:
            return
        cells, signs = sketch_cells(hashes, self.width, self.depth)
        counters = group_counters(cells, signs, np.zeros(hashes.size, dtype=np.intp), 1, self.width)[0]
        self.add_counters(counters, int(hashes.size))

    def add_counters(self, counters: np.ndarray, events: int) -> None:
        """Add counters already summed for ``events`` events (``[depth, width]``, e.g. a slice of
        ``group_counters``): what ``add`` of those events' hashes would have added."""
        c = np.asarray(counters)
        if c.shape != (self.depth, self.width):
            raise ValueError(f"counters have shape {c.shape}, expected {(self.depth, self.width)}")
        self._counters += c.astype(np.int64, copy=False)
        self.events += int(events)

    def merge(self, other: UserSketch) -> None:
        """Add ``other``'s events (same shape): the sketch of both streams together."""
        if (other.width, other.depth) != (self.width, self.depth):
            raise ValueError(f"cannot merge a {other.depth}x{other.width} sketch into {self.depth}x{self.width}")
        self.events += other.events
        self._counters += other._counters

    def second_moment(self) -> float:
        """Estimated sum over users of (events of the user)^2; at least ``events``."""
        if self.events == 0:
            return 0.0
        rows = np.square(self._counters.astype(np.float64)).sum(axis=1)
        median = np.partition(rows, self.depth // 2)[self.depth // 2]  # depth is odd; np.median is 10x slower here
        return float(max(median, self.events))

    def effective_users(self) -> float:
        """Kish's effective sample size: how many independent events the window is worth."""
        if self.events == 0:
            return 0.0
        return float(min(self.events, self.events**2 / self.second_moment()))

    def design_effect(self) -> float:
        """``events / effective_users()`` (>= 1): how much clustering inflates the variance."""
        return self.events / self.effective_users() if self.events else 1.0

    def reset(self) -> None:
        self.events = 0
        self._counters[:] = 0

    def copy(self) -> UserSketch:
        twin = UserSketch(self.width, self.depth)
        twin.merge(self)
        return twin

    def to_state(self) -> dict[str, Any]:
        return {"width": self.width, "depth": self.depth, "events": self.events,
                "counters": self._counters.tolist()}

    @property
    def counters(self) -> np.ndarray:
        """The sketch's counters ``[depth, width]`` (read-only view, for compact state)."""
        view = self._counters.view()
        view.flags.writeable = False
        return view

    @classmethod
    def from_counters(cls, counters: np.ndarray, events: int) -> UserSketch:
        """A sketch holding ``counters`` ``[depth, width]`` for ``events`` events (its shape follows them)."""
        counters = np.asarray(counters, dtype=np.int64)
        if counters.ndim != 2:
            raise ValueError(f"sketch counters must be [depth, width], got shape {counters.shape}")
        sketch = cls(counters.shape[1], counters.shape[0])
        if events < 0:
            raise ValueError(f"sketch events must be >= 0, got {events}")
        sketch._counters = counters.copy()
        sketch.events = int(events)
        return sketch

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> UserSketch:
        sketch = cls(int(state["width"]), int(state["depth"]))
        counters = np.asarray(state["counters"], dtype=np.int64)
        if counters.shape != (sketch.depth, sketch.width):
            raise ValueError(f"sketch counters have shape {counters.shape}, expected {(sketch.depth, sketch.width)}")
        events = int(state["events"])
        if events < 0:
            raise ValueError(f"sketch events must be >= 0, got {events}")
        sketch.events = events
        sketch._counters = counters
        return sketch
