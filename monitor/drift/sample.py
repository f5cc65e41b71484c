"""A cohort's binned evidence over a stretch of its events: what windows and references hold.

The statistics and layers of one cohort are computed from the same events, so they share
one ``Sample``: bin counts per series (statistic x layer), per history-length stratum
(``monitor.drift.strata``), per bin; the same counts per **random group of users**
(16 groups; a user's events always fall in one group); and one ``UserSketch`` of who the
events came from. Memory is fixed whatever the traffic. Samples with the same shape merge
by addition (replicas, the recent-traffic blocks).

``design_effects()`` says how much user clustering inflates each series' variance. The
groups are random collections of whole users, so the spread of a bin's share between
groups is its clustered variance (the random-groups estimator of survey sampling,
linearised for unequal group sizes); over the binomial variance, pooled over bins, it is
the series' design effect. Kish's ``events / effective users`` (the sketch) is its upper
bound, reached when a user's events repeat each other exactly (one session); when a
user's events differ (different histories, other times) the real effect is far smaller
(docs/drift.md, "Events come in clusters"). The estimate rests on as many groups as hold
much of the spread (few when a few heavy users dominate: Satterthwaite's degrees of
freedom), so it is taken at its one-sided 90 % upper confidence bound, never below 1 nor
above Kish: with few users that is Kish, with many it nears the estimate.

``bin_batch`` turns a whole batch of one cohort dimension into every cohort's counts with
a single ``np.bincount`` over a combined (cohort, series, stratum, bin) index: the fold's
per-batch cost no longer grows with cohorts x statistics x layers Python calls.

>>> values = np.array([[0.05, 0.9], [0.55, np.nan], [0.95, 0.1]])    # [B=3, series=2]
>>> binned = bin_batch(values, strata=np.array([0, 1, 1]), cohorts=np.array([0, 0, 1]), n_cohorts=2,
...                    n_strata=2, bins=2, user_groups=np.array([3, 3, 0]))
>>> binned.counts[0].tolist()   # cohort 0: [series, strata, bins]
[[[1, 0], [0, 1]], [[0, 1], [0, 0]]]
>>> binned.by_group[0, 0, 3].tolist(), binned.nan.tolist(), binned.events.tolist()
([1, 1], [1, 0], [2, 1])
"""

from __future__ import annotations

import base64
import zlib
from typing import Any, NamedTuple

import numpy as np
from scipy import stats

from monitor.drift.items import ItemSketch
from monitor.drift.users import UserSketch

SKETCH_WIDTH = 256  # users sketch per sample: 256 x 5 counters, ~3 % median error on n_eff (docs/drift.md)
SKETCH_DEPTH = 5
USER_GROUPS = 16  # random groups of users behind each sample's design effects
DESIGN_CONFIDENCE = 0.9  # design effects are taken at their one-sided 90 % upper confidence bound


class Binned(NamedTuple):
    """One batch binned per cohort: what ``Sample.add`` takes, cohort by cohort."""

    counts: np.ndarray  # [cohorts, series, strata, bins] int64
    by_group: np.ndarray  # [cohorts, series, user groups, bins] int64
    events: np.ndarray  # [cohorts] events (rows) per cohort
    nan: np.ndarray  # [cohorts] NaN values (rejected)
    clipped: np.ndarray  # [cohorts] values outside [0, 1] (clipped into the end bins)


def bin_batch(values: np.ndarray, strata: np.ndarray, cohorts: np.ndarray, n_cohorts: int, n_strata: int,
              bins: int, user_groups: np.ndarray) -> Binned:
    """Bin ``values`` [B, series] (in [0, 1]) by cohort [B], stratum [B], series and bin, and
    again by the users' random group [B] (``users.user_groups``), in one pass each."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be [B, series], got shape {v.shape}")
    batch, series = v.shape
    cohorts = np.asarray(cohorts, dtype=np.intp)
    strata = np.asarray(strata, dtype=np.intp)
    user_groups = np.asarray(user_groups, dtype=np.intp)
    if cohorts.shape != (batch,) or strata.shape != (batch,) or user_groups.shape != (batch,):
        raise ValueError(f"cohorts, strata and user_groups must have shape ({batch},)")
    nan = np.isnan(v)
    bin_index = np.floor(np.where(nan, 0.0, v) * bins)
    np.clip(bin_index, 0, bins - 1, out=bin_index)
    bin_index = bin_index.astype(np.intp)
    row = (cohorts * series)[:, None] + np.arange(series, dtype=np.intp)[None, :]  # [B, series]
    flat = (row * n_strata + strata[:, None]) * bins + bin_index  # [B, series]
    grouped = (row * USER_GROUPS + user_groups[:, None]) * bins + bin_index
    keep = ~nan if nan.any() else slice(None)
    counts = np.bincount(flat[keep].ravel(), minlength=n_cohorts * series * n_strata * bins)
    by_group = np.bincount(grouped[keep].ravel(), minlength=n_cohorts * series * USER_GROUPS * bins)
    nan_per_cohort = (np.bincount(cohorts, weights=nan.sum(axis=1), minlength=n_cohorts).astype(np.int64)
                      if nan.any() else np.zeros(n_cohorts, dtype=np.int64))
    outside = (v < 0.0) | (v > 1.0)  # NaN compares False
    clipped = (np.bincount(cohorts, weights=outside.sum(axis=1), minlength=n_cohorts).astype(np.int64)
               if outside.any() else np.zeros(n_cohorts, dtype=np.int64))
    return Binned(counts.reshape(n_cohorts, series, n_strata, bins).astype(np.int64, copy=False),
                  by_group.reshape(n_cohorts, series, USER_GROUPS, bins).astype(np.int64, copy=False),
                  np.bincount(cohorts, minlength=n_cohorts).astype(np.int64), nan_per_cohort, clipped)


def pack(array: np.ndarray) -> dict[str, Any]:
    """An int64 array as JSON: its shape and its little-endian bytes, zlib-compressed, in base64
    (counts are mostly small or zero: ~20x smaller and ~10x faster to write than a list).

    >>> unpack(pack(np.arange(6).reshape(2, 3))).tolist()
    [[0, 1, 2], [3, 4, 5]]
    """
    data = np.ascontiguousarray(array, dtype="<i8")
    return {"shape": list(data.shape), "zlib": base64.b64encode(zlib.compress(data.tobytes(), 1)).decode("ascii")}


def unpack(state: dict[str, Any]) -> np.ndarray:
    """The array ``pack`` wrote (a copy); a size that does not match its shape is refused."""
    shape = tuple(int(n) for n in state["shape"])
    data = np.frombuffer(zlib.decompress(base64.b64decode(state["zlib"])), dtype="<i8")
    if data.size != int(np.prod(shape)):
        raise ValueError(f"packed array holds {data.size} values, its shape {shape} needs {int(np.prod(shape))}")
    return data.reshape(shape).astype(np.int64)


class Sample:
    """Bin counts ``[series, strata, bins]`` of a run of one cohort's events, and their users."""

    __slots__ = ("counts", "by_group", "users", "nan", "clipped", "items", "served")

    def __init__(self, series: int, strata: int, bins: int) -> None:
        self.counts = np.zeros((series, strata, bins), dtype=np.int64)
        self.by_group = np.zeros((series, USER_GROUPS, bins), dtype=np.int64)
        self.users = UserSketch(SKETCH_WIDTH, SKETCH_DEPTH)
        self.nan = 0
        self.clipped = 0
        self.items: ItemSketch | None = None  # attention mass per item and layer (once fed)
        self.served: ItemSketch | None = None  # served recommendation slots per item (once fed)

    @property
    def events(self) -> int:
        """Events (rows) in the sample, whatever their values."""
        return self.users.events

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.counts.shape  # type: ignore[return-value]

    def effective_users(self) -> float:
        """Kish's effective number of users (``UserSketch``): what the events are worth."""
        return self.users.effective_users()

    def design_effect(self) -> float:
        """Kish's events / effective users (>= 1): the variance inflation if a user's events repeated
        each other exactly; the upper bound of ``design_effects``."""
        return self.users.design_effect()

    def design_effects(self) -> np.ndarray:
        """Each series' variance inflation by user clustering ``[series]``, in [1, Kish]: the
        random-groups estimate at its upper confidence bound (module docstring)."""
        y = self.by_group.astype(np.float64)  # [series, G, bins]
        per_group = y.sum(axis=2)  # [series, G]
        n = per_group.sum(axis=1)  # [series]
        safe_n = np.where(n > 0, n, 1.0)
        p = y.sum(axis=1) / safe_n[:, None]  # [series, bins]
        spread = np.square(y - per_group[:, :, None] * p[:, None, :]).sum(axis=2)  # [series, G] per group
        groups = y.shape[1]
        clustered = groups / (groups - 1) * spread.sum(axis=1) / safe_n**2
        binomial = (p * (1.0 - p)).sum(axis=1) / safe_n
        total = spread.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            # Satterthwaite: how many groups the estimate really rests on (few heavy users: few).
            df = np.where(total > 0, total**2 / np.square(spread).sum(axis=1), 1.0)
            upper = df / stats.chi2.ppf(1.0 - DESIGN_CONFIDENCE, np.maximum(df, 0.5))
            estimate = np.where(binomial > 0, upper * clustered / binomial, np.inf)
        return np.clip(estimate, 1.0, max(1.0, self.design_effect()))

    def add(self, counts: np.ndarray, by_group: np.ndarray, user_counters: np.ndarray, events: int, nan: int = 0,
            clipped: int = 0, items: tuple[np.ndarray, np.ndarray] | None = None,
            served: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Add one batch's counts ``[series, strata, bins]``, ``[series, groups, bins]``, its
        users' sketch counters and, when given, its mass per item (ids [d], mass [d, layers])
        and its served slots per item (ids [d], mass [d, 1]: each event's list is one unit)."""
        self.counts += counts
        self.by_group += by_group
        self.users.add_counters(user_counters, events)
        self.nan += int(nan)
        self.clipped += int(clipped)
        if items is not None:
            ids, mass = items
            if self.items is None:
                self.items = ItemSketch(layers=mass.shape[1])
            self.items.add(ids, mass)
        if served is not None:
            if self.served is None:
                self.served = ItemSketch()
            self.served.add(*served)

    def merge(self, other: Sample) -> None:
        """Add another sample of the same shape (the events of both)."""
        if other.counts.shape != self.counts.shape:
            raise ValueError(f"cannot merge a {other.counts.shape} sample into {self.counts.shape}")
        self.counts += other.counts
        self.by_group += other.by_group
        self.users.merge(other.users)
        self.nan += other.nan
        self.clipped += other.clipped
        if other.items is not None:
            if self.items is None:
                self.items = ItemSketch(other.items.capacity, other.items.layers)
            self.items.merge(other.items)
        if other.served is not None:
            if self.served is None:
                self.served = ItemSketch(other.served.capacity, other.served.layers)
            self.served.merge(other.served)

    def reset(self) -> None:
        self.counts[:] = 0
        self.by_group[:] = 0
        self.users.reset()
        self.nan = self.clipped = 0
        if self.items is not None:
            self.items.reset()
        if self.served is not None:
            self.served.reset()

    def copy(self) -> Sample:
        twin = Sample(*self.counts.shape)
        twin.merge(self)
        return twin

    def to_state(self) -> dict[str, Any]:
        """JSON-able state; the arrays packed (``pack``): a checkpoint holds hundreds of samples."""
        return {"counts": pack(self.counts), "by_group": pack(self.by_group), "users": pack(self.users.counters),
                "events": self.events, "nan": self.nan, "clipped": self.clipped,
                "items": None if self.items is None else self.items.to_state(),
                "served": None if self.served is None else self.served.to_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Sample:
        counts = unpack(state["counts"])
        if counts.ndim != 3 or (counts < 0).any():
            raise ValueError(f"sample counts must be non-negative [series, strata, bins], got shape {counts.shape}")
        sample = cls(*counts.shape)
        sample.counts = counts
        by_group = unpack(state["by_group"])
        if by_group.shape != sample.by_group.shape or (by_group < 0).any():
            raise ValueError(f"sample group counts must be non-negative {sample.by_group.shape}, got {by_group.shape}")
        sample.by_group = by_group
        sample.users = UserSketch.from_counters(unpack(state["users"]), int(state["events"]))
        sample.nan = int(state.get("nan", 0))
        sample.clipped = int(state.get("clipped", 0))
        items = state.get("items")  # absent before item mass
        sample.items = ItemSketch.from_state(items) if items else None
        served = state.get("served")  # absent before served recommendations were judged
        sample.served = ItemSketch.from_state(served) if served else None
        return sample

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return (np.array_equal(self.counts, other.counts) and np.array_equal(self.by_group, other.by_group)
                and self.users.to_state() == other.users.to_state()
                and (self.nan, self.clipped) == (other.nan, other.clipped) and self.items == other.items
                and self.served == other.served)

    def __repr__(self) -> str:
        series, strata, bins = self.counts.shape
        return f"Sample(series={series}, strata={strata}, bins={bins}, events={self.events})"
