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

Evidence. The sample is a bounded *bottom-k* sample of pairs: each pair carries a 64-bit
priority, a hash of its event (user and event id, ``event_priorities``), and the sample keeps
the ``capacity`` pairs of lowest priority among every pair since the update started
(agreement is a property of the two models, so evidence accumulates for as long as the update
is judged). A hash is a uniform draw, so the sample is uniform; and since it is a function of
the set of pairs alone, not of their order, the samples of disjoint parts of the stream merge
(``merge``) into exactly the sample of the whole: the scale-out judge merges the partitions'
samples and holds what one process would (docs/architecture.md, "Scale-out"). One user's
events nearly repeat, so the uncertainty is a
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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from monitor.drift.sample import pack, unpack
from monitor.drift.users import _MIX, _splitmix, hash_users, user_groups

JACKKNIFE_GROUPS = 16  # random groups of whole users for the clustered standard error
_QUANTUM = 65_535  # statistics are stored as uint16 fractions of [0, 1] (ranks survive; state stays small)


@dataclass(frozen=True, slots=True)
class Agreement:
    """One cohort's agreement over its sample."""

    value: float  # median over series of the within-stratum rank correlation (NaN: nothing to correlate)
    standard_error: float  # user-group jackknife
    pairs: int  # pairs in the sample
    used: int  # of them, in strata that were correlated


class AgreementSample:
    """A bottom-k sample of paired per-event statistics, with the events' lengths, users and priorities.

    The kept rows are stored in a canonical order (priority first, then every field), so two
    samples of the same pairs are equal array for array, whatever order the pairs came in.
    """

    __slots__ = ("capacity", "series", "seen", "size", "_old", "_new", "_lengths", "_users", "_priority", "_seed")

    def __init__(self, capacity: int, series: int, seed: int = 0) -> None:
        if capacity < 1 or series < 1:
            raise ValueError("capacity and series must be >= 1")
        self.capacity = int(capacity)
        self.series = int(series)
        self.seen = 0  # pairs offered since the start (the sample keeps the capacity lowest priorities of them)
        self.size = 0
        self._old = np.zeros((0, series), dtype=np.uint16)
        self._new = np.zeros((0, series), dtype=np.uint16)
        self._lengths = np.zeros(0, dtype=np.int64)
        self._users = np.zeros(0, dtype=np.uint64)
        self._priority = np.zeros(0, dtype=np.uint64)
        self._seed = int(seed)  # only for priorities of a restored reservoir saved without them (``from_state``)

    def __len__(self) -> int:
        return self.size

    @property
    def old(self) -> np.ndarray:
        return self._old

    @property
    def new(self) -> np.ndarray:
        return self._new

    @property
    def lengths(self) -> np.ndarray:
        return self._lengths

    @property
    def users(self) -> np.ndarray:
        return self._users

    @property
    def priorities(self) -> np.ndarray:
        return self._priority

    def add(self, old: np.ndarray, new: np.ndarray, lengths: np.ndarray, users: np.ndarray,
            priorities: np.ndarray | None = None) -> None:
        """Offer pairs: ``old``, ``new`` [P, series] statistics in [0, 1] (NaN rows are the caller's
        to drop), ``lengths`` [P] the events' history lengths, ``users`` uint64 [P] hashes,
        ``priorities`` uint64 [P] the events' hashes (``event_priorities``; None: a hash of the
        user and the pair's position in this sample's stream, which is order-dependent)."""
        old, new = _quantise(old), _quantise(new)
        if old.shape != new.shape or old.ndim != 2 or old.shape[1] != self.series:
            raise ValueError(f"old and new must both be [pairs, {self.series}], got {old.shape} and {new.shape}")
        lengths = np.asarray(lengths, dtype=np.int64)
        users = np.asarray(users, dtype=np.uint64)
        if priorities is None:
            with np.errstate(over="ignore"):
                position = np.arange(self.seen, self.seen + len(lengths), dtype=np.uint64)
                priorities = _splitmix(users + position * _MIX)
        priorities = np.asarray(priorities, dtype=np.uint64)
        if not (len(lengths) == len(users) == len(priorities) == len(old)):
            raise ValueError("old, new, lengths, users and priorities must hold one row per pair")
        self.seen += len(lengths)
        self._keep_lowest(old, new, lengths, users, priorities)

    def merge(self, other: AgreementSample) -> None:
        """Add ``other``'s pairs (disjoint from this sample's stream): the bottom-k sample of both
        streams together, exactly (a pair outside either sample's k lowest is outside the union's)."""
        if other.series != self.series:
            raise ValueError(f"cannot merge a sample of {other.series} series into one of {self.series}")
        self.seen += other.seen
        self._keep_lowest(other.old, other.new, other.lengths, other.users, other.priorities)

    def _keep_lowest(self, old: np.ndarray, new: np.ndarray, lengths: np.ndarray, users: np.ndarray,
                     priorities: np.ndarray) -> None:
        if self.size == self.capacity and len(priorities):  # full: only a lower priority can enter
            keep = priorities <= self._priority[-1]
            old, new, lengths, users, priorities = old[keep], new[keep], lengths[keep], users[keep], priorities[keep]
        if not len(priorities):
            return
        old = np.concatenate([self._old, old])
        new = np.concatenate([self._new, new])
        lengths = np.concatenate([self._lengths, lengths])
        users = np.concatenate([self._users, users])
        priorities = np.concatenate([self._priority, priorities])
        # Canonical order: priority, then every field, so ties (one event offered twice) break alike everywhere.
        order = np.lexsort((*new.T[::-1], *old.T[::-1], lengths, users, priorities))[: self.capacity]
        self._old, self._new, self._lengths = old[order], new[order], lengths[order]
        self._users, self._priority = users[order], priorities[order]
        self.size = len(order)

    def to_state(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "series": self.series, "seen": self.seen,
                "old": pack(self.old), "new": pack(self.new), "lengths": pack(self.lengths),
                "users": pack(self.users.view(np.int64)), "priorities": pack(self.priorities.view(np.int64))}

    @classmethod
    def from_state(cls, state: dict[str, Any], seed: int = 0) -> AgreementSample:
        """Resume from ``to_state()``. A sample saved before priorities (a uniform reservoir of
        ``seen`` pairs) gets the priorities its pairs would hold as the lowest of ``seen``
        uniform hashes (``_reservoir_priorities``, drawn with ``seed``), so new pairs enter as
        they would have."""
        sample = cls(int(state["capacity"]), int(state["series"]), seed)
        sample.seen = int(state["seen"])
        old, new = unpack(state["old"]), unpack(state["new"])
        lengths, users = unpack(state["lengths"]), unpack(state["users"]).view(np.uint64)
        size = len(lengths)
        if not (old.shape == new.shape == (size, sample.series) and len(users) == size <= sample.capacity):
            raise ValueError("agreement sample arrays disagree in shape or exceed the capacity")
        if "priorities" in state:
            priorities = unpack(state["priorities"]).view(np.uint64)
            if len(priorities) != size:
                raise ValueError("agreement sample priorities disagree in shape")
        else:
            priorities = _reservoir_priorities(size, max(sample.seen, size), np.random.default_rng(sample._seed))
        sample._keep_lowest(old.astype(np.uint16), new.astype(np.uint16), lengths, users, priorities)
        return sample


def event_priorities(user_ids: Iterable[str], event_ids: Iterable[str]) -> np.ndarray:
    """Each event's priority in a bottom-k sample, the same in every process: ``uint64 [n]``, a
    hash of (user id, event id). The paired sampling uses it too (``monitor.stream.updates``)."""
    return hash_users(f"{user}\x1f{event}" for user, event in zip(user_ids, event_ids, strict=True))


def _reservoir_priorities(size: int, seen: int, rng: np.random.Generator) -> np.ndarray:
    """Priorities for a uniform sample of ``size`` of ``seen`` pairs: distributed as the ``size``
    lowest of ``seen`` uniform 64-bit hashes (the largest is Beta(size, seen - size + 1); given
    it, the others are uniform below it)."""
    if size == 0:
        return np.zeros(0, dtype=np.uint64)
    top = rng.beta(size, seen - size + 1)
    fractions = np.append(rng.random(size - 1) * top, top)
    return np.minimum(fractions * 2.0**64, 2.0**64 - 4096.0).astype(np.uint64)


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
