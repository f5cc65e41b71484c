"""A cohort's binned evidence over a stretch of its events: what windows and references hold.

The statistics and layers of one cohort are computed from the same events, so they share
one ``Sample``: bin counts per series (statistic x layer), per history-length stratum
(``monitor.drift.strata``), per bin, and one ``UserSketch`` of who the events came from.
Memory is fixed whatever the traffic: ``series x strata x bins`` integers plus the sketch.
Samples with the same shape merge by addition (replicas, the recent-traffic blocks).

``bin_batch`` turns a whole batch of one cohort dimension into every cohort's counts with
a single ``np.bincount`` over a combined (cohort, series, stratum, bin) index: the fold's
per-batch cost no longer grows with cohorts x statistics x layers Python calls.

>>> values = np.array([[0.05, 0.9], [0.55, np.nan], [0.95, 0.1]])    # [B=3, series=2]
>>> binned = bin_batch(values, strata=np.array([0, 1, 1]), groups=np.array([0, 0, 1]),
...                    n_groups=2, n_strata=2, bins=2)
>>> binned.counts[0].tolist()   # cohort 0: [series, strata, bins]
[[[1, 0], [0, 1]], [[0, 1], [0, 0]]]
>>> binned.nan.tolist(), binned.events.tolist()
([1, 0], [2, 1])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from monitor.drift.users import UserSketch

SKETCH_WIDTH = 256  # users sketch per sample: 256 x 5 counters, ~6 % error on n_eff (docs/drift.md)
SKETCH_DEPTH = 5


class Binned(NamedTuple):
    """One batch binned per group (cohort): what ``Sample.add`` takes, group by group."""

    counts: np.ndarray  # [groups, series, strata, bins] int64
    events: np.ndarray  # [groups] events (rows) per group
    nan: np.ndarray  # [groups] NaN values (rejected)
    clipped: np.ndarray  # [groups] values outside [0, 1] (clipped into the end bins)


def bin_batch(values: np.ndarray, strata: np.ndarray, groups: np.ndarray, n_groups: int, n_strata: int,
              bins: int) -> Binned:
    """Bin ``values`` [B, series] (in [0, 1]) by group [B], stratum [B], series and bin, in one pass."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be [B, series], got shape {v.shape}")
    batch, series = v.shape
    groups = np.asarray(groups, dtype=np.intp)
    strata = np.asarray(strata, dtype=np.intp)
    if groups.shape != (batch,) or strata.shape != (batch,):
        raise ValueError(f"groups and strata must have shape ({batch},)")
    nan = np.isnan(v)
    bin_index = np.floor(np.where(nan, 0.0, v) * bins)
    np.clip(bin_index, 0, bins - 1, out=bin_index)
    row = (groups * series)[:, None] + np.arange(series, dtype=np.intp)[None, :]  # [B, series]
    flat = ((row * n_strata + strata[:, None]) * bins + bin_index.astype(np.intp))  # [B, series]
    size = n_groups * series * n_strata * bins
    if nan.any():
        counts = np.bincount(flat[~nan], minlength=size)
        nan_per_group = np.bincount(groups, weights=nan.sum(axis=1), minlength=n_groups).astype(np.int64)
    else:
        counts = np.bincount(flat.ravel(), minlength=size)
        nan_per_group = np.zeros(n_groups, dtype=np.int64)
    outside = (v < 0.0) | (v > 1.0)  # NaN compares False
    clipped = (np.bincount(groups, weights=outside.sum(axis=1), minlength=n_groups).astype(np.int64)
               if outside.any() else np.zeros(n_groups, dtype=np.int64))
    return Binned(counts.reshape(n_groups, series, n_strata, bins).astype(np.int64, copy=False),
                  np.bincount(groups, minlength=n_groups).astype(np.int64), nan_per_group, clipped)


class Sample:
    """Bin counts ``[series, strata, bins]`` of a run of one cohort's events, and their users."""

    __slots__ = ("counts", "users", "nan", "clipped")

    def __init__(self, series: int, strata: int, bins: int) -> None:
        self.counts = np.zeros((series, strata, bins), dtype=np.int64)
        self.users = UserSketch(SKETCH_WIDTH, SKETCH_DEPTH)
        self.nan = 0
        self.clipped = 0

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
        """events / effective users (>= 1): the variance inflation of user clustering."""
        return self.users.design_effect()

    def add(self, counts: np.ndarray, user_counters: np.ndarray, events: int, nan: int = 0, clipped: int = 0) -> None:
        """Add one batch's counts ``[series, strata, bins]`` and its users' sketch counters."""
        self.counts += counts
        self.users.add_counters(user_counters, events)
        self.nan += int(nan)
        self.clipped += int(clipped)

    def merge(self, other: Sample) -> None:
        """Add another sample of the same shape (the events of both)."""
        if other.counts.shape != self.counts.shape:
            raise ValueError(f"cannot merge a {other.counts.shape} sample into {self.counts.shape}")
        self.counts += other.counts
        self.users.merge(other.users)
        self.nan += other.nan
        self.clipped += other.clipped

    def reset(self) -> None:
        self.counts[:] = 0
        self.users.reset()
        self.nan = self.clipped = 0

    def copy(self) -> Sample:
        twin = Sample(*self.counts.shape)
        twin.merge(self)
        return twin

    def to_state(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "users": self.users.to_state(), "nan": self.nan,
                "clipped": self.clipped}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Sample:
        counts = np.asarray(state["counts"], dtype=np.int64)
        if counts.ndim != 3 or (counts < 0).any():
            raise ValueError(f"sample counts must be non-negative [series, strata, bins], got shape {counts.shape}")
        sample = cls(*counts.shape)
        sample.counts = counts
        sample.users = UserSketch.from_state(state["users"])
        sample.nan = int(state.get("nan", 0))
        sample.clipped = int(state.get("clipped", 0))
        return sample

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return (np.array_equal(self.counts, other.counts) and self.users.to_state() == other.users.to_state()
                and (self.nan, self.clipped) == (other.nan, other.clipped))

    def __repr__(self) -> str:
        series, strata, bins = self.counts.shape
        return f"Sample(series={series}, strata={strata}, bins={bins}, events={self.events})"
