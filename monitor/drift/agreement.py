"""Per-event agreement of two versions: does the new model read each event like the old one?

A benign retrain attends differently -- attention is not identifiable, so per-event rows and
whole statistic distributions move (docs/drift.md) -- but it has learnt the same function of
the history: on the events where the old model's attention is peaked, the new one's is
peaked too; where the old one spreads over the whole span, so does the new one. A model
that reads its input differently (a catalogue it was not trained on, a context cut, a job
stopped early) loses that ordering. So for the events both versions saw, per attention
statistic and layer, the rank correlation (Spearman) of the old and the new version's
values measures agreement, and it is invariant to the global shifts a retrain brings (a
sharper or flatter model moves every event alike and keeps the order).

History length drives every statistic in both versions alike (a 12-item history cannot
spread like a 150-item one), which would make any two models agree. The correlation is
therefore taken *within* history-length strata (``strata_edges``, the event's own length)
and averaged over strata weighted by events; histories shorter than the first edge are
left out (with a handful of positions any two models' statistics agree, measured). The
cohort's agreement is the median over its (statistic, layer) series, so one degenerate
statistic cannot decide.

Evidence. The sample is a bounded reservoir of pairs (uniform over every pair since the
update started: agreement is a property of the two models, so evidence accumulates for as
long as the update is judged). One user's events nearly repeat, so the uncertainty is a
delete-a-group jackknife over random groups of whole users (``user_groups``). A cohort
shows a *model-caused change* when agreement is credibly below ``cutoff``: the one-sided
normal p-value of H0: agreement >= cutoff, Benjamini-Hochberg across the cohorts of a
round. The cutoff sits below every benign retrain measured (figures in docs/drift.md,
"Per-event agreement").

>>> rng = np.random.default_rng(0)
>>> sample = AgreementSample(capacity=512, series=1, seed=0)
>>> old = rng.random((400, 1))
>>> sample.add(old, 0.5 * old + 0.5 * rng.random((400, 1)), np.full(400, 60), np.arange(400, dtype=np.uint64))
>>> a = agreement(sample, (10, 50, 200))
>>> round(a.value, 1), a.pairs, a.standard_error < 0.05
(0.7, 400, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from monitor.drift.sample import pack, unpack
from monitor.drift.users import user_groups

JACKKNIFE_GROUPS = 16  # random groups of whole users for the clustered standard error
_QUANTUM = 65_535  # statistics are stored as uint16 fractions of [0, 1] (ranks survive; state stays small)


@dataclass(frozen=True, slots=True)
class Agreement:
    """One cohort's agreement over its reservoir."""

    value: float  # median over series of the within-stratum rank correlation (NaN: nothing to correlate)
    standard_error: float  # user-group jackknife
    pairs: int  # pairs in the reservoir
    used: int  # of them, in strata that were correlated


class AgreementSample:
    """A uniform reservoir of paired per-event statistics, with the events' lengths and users."""

    __slots__ = ("capacity", "series", "seen", "size", "_old", "_new", "_lengths", "_users", "_rng")

    def __init__(self, capacity: int, series: int, seed: int = 0) -> None:
        if capacity < 1 or series < 1:
            raise ValueError("capacity and series must be >= 1")
        self.capacity = int(capacity)
        self.series = int(series)
        self.seen = 0  # pairs offered since the start (the reservoir keeps a uniform sample of them)
        self.size = 0
        self._old = np.zeros((capacity, series), dtype=np.uint16)
        self._new = np.zeros((capacity, series), dtype=np.uint16)
        self._lengths = np.zeros(capacity, dtype=np.int64)
        self._users = np.zeros(capacity, dtype=np.uint64)
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    @property
    def old(self) -> np.ndarray:
        return self._old[:self.size]

    @property
    def new(self) -> np.ndarray:
        return self._new[:self.size]

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths[:self.size]

    @property
    def users(self) -> np.ndarray:
        return self._users[:self.size]

    def add(self, old: np.ndarray, new: np.ndarray, lengths: np.ndarray, users: np.ndarray) -> None:
        """Offer pairs: ``old``, ``new`` [P, series] statistics in [0, 1] (NaN rows are the caller's
        to drop), ``lengths`` [P] the events' history lengths, ``users`` uint64 [P] hashes."""
        old, new = _quantise(old), _quantise(new)
        if old.shape != new.shape or old.ndim != 2 or old.shape[1] != self.series:
            raise ValueError(f"old and new must both be [pairs, {self.series}], got {old.shape} and {new.shape}")
        lengths = np.asarray(lengths, dtype=np.int64)
        users = np.asarray(users, dtype=np.uint64)
        for i in range(len(lengths)):  # Algorithm R; pairs per batch are few (paired_max_per_batch)
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
            else:
                slot = int(self._rng.integers(0, self.seen + 1))
            if slot < self.capacity:
                self._old[slot], self._new[slot] = old[i], new[i]
                self._lengths[slot], self._users[slot] = lengths[i], users[i]
            self.seen += 1

    def to_state(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "series": self.series, "seen": self.seen,
                "old": pack(self.old), "new": pack(self.new), "lengths": pack(self.lengths),
                "users": pack(self.users.view(np.int64))}

    @classmethod
    def from_state(cls, state: dict[str, Any], seed: int = 0) -> AgreementSample:
        sample = cls(int(state["capacity"]), int(state["series"]), seed)
        sample.seen = int(state["seen"])
        old, new = unpack(state["old"]), unpack(state["new"])
        lengths, users = unpack(state["lengths"]), unpack(state["users"])
        size = len(lengths)
        if not (old.shape == new.shape == (size, sample.series) and len(users) == size <= sample.capacity):
            raise ValueError("agreement sample arrays disagree in shape or exceed the capacity")
        sample.size = size
        sample._old[:size], sample._new[:size] = old, new
        sample._lengths[:size], sample._users[:size] = lengths, users.view(np.uint64)
        return sample


def _quantise(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * _QUANTUM).astype(np.uint16)


def _within_strata(old: np.ndarray, new: np.ndarray, strata: np.ndarray, min_per_stratum: int) -> np.ndarray:
    """Per series, the event-weighted mean over strata of Spearman's rho -> [series] (NaN where undefined)."""
    total = np.zeros(old.shape[1])
    weight = np.zeros(old.shape[1])
    for stratum in np.unique(strata):
        members = strata == stratum
        n = int(members.sum())
        if n < min_per_stratum:
            continue
        a = stats.rankdata(old[members], axis=0)
        b = stats.rankdata(new[members], axis=0)
        a -= a.mean(axis=0)
        b -= b.mean(axis=0)
        denominator = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
        defined = denominator > 0  # a constant series (e.g. one attended position) has no order
        rho = np.divide((a * b).sum(axis=0), denominator, out=np.zeros(old.shape[1]), where=defined)
        total += np.where(defined, rho * n, 0.0)
        weight += np.where(defined, n, 0.0)
    return np.divide(total, weight, out=np.full(old.shape[1], np.nan), where=weight > 0)


def _median(per_series: np.ndarray) -> float:
    defined = per_series[np.isfinite(per_series)]
    return float(np.median(defined)) if defined.size else float("nan")


def agreement(sample: AgreementSample, strata_edges: tuple[int, ...], *, columns: np.ndarray | None = None,
              min_per_stratum: int = 20) -> Agreement:
    """The sample's agreement over ``columns`` of its series (default: all) and its
    user-clustered standard error."""
    kept = sample.lengths >= strata_edges[0]
    old, new = sample.old[kept].astype(np.float64), sample.new[kept].astype(np.float64)
    if columns is not None:
        old, new = old[:, columns], new[:, columns]
    strata = np.searchsorted(np.asarray(strata_edges), sample.lengths[kept], side="right")
    value = _median(_within_strata(old, new, strata, min_per_stratum))
    if not np.isfinite(value):
        return Agreement(float("nan"), float("nan"), len(sample), 0)
    groups = user_groups(sample.users[kept], JACKKNIFE_GROUPS)
    leave_one_out = []
    for g in range(JACKKNIFE_GROUPS):
        rest = groups != g
        if rest.all():  # nobody in this group: deleting it changes nothing
            continue
        leave_one_out.append(_median(_within_strata(old[rest], new[rest], strata[rest], min_per_stratum)))
    estimates = np.asarray([e for e in leave_one_out if np.isfinite(e)])
    g = len(estimates)
    se = float(np.sqrt((g - 1) / g * ((estimates - estimates.mean()) ** 2).sum())) if g >= 2 else float("nan")
    return Agreement(value, se, len(sample), int(kept.sum()))


def effective_users(users: np.ndarray) -> float:
    """Kish's effective number of users behind ``users`` (one hash per pair): n^2 / sum of n_u^2."""
    if not len(users):
        return 0.0
    counts = np.unique(np.asarray(users), return_counts=True)[1].astype(np.float64)
    return float(counts.sum() ** 2 / (counts**2).sum())


def below_cutoff_p(value: float, standard_error: float, cutoff: float) -> float:
    """One-sided p-value of H0: agreement >= cutoff (normal approximation of the jackknife).

    >>> round(below_cutoff_p(0.1, 0.05, 0.3), 5), round(below_cutoff_p(0.5, 0.05, 0.3), 3)
    (3e-05, 1.0)
    """
    if not (np.isfinite(value) and np.isfinite(standard_error)):
        return 1.0
    if standard_error <= 0:
        return 0.0 if value < cutoff else 1.0
    return float(stats.norm.cdf((value - cutoff) / standard_error))
