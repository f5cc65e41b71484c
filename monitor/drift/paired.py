"""Paired old-vs-new comparison: did the *model* change how it attends?

After an update the daemon samples events and recomputes the previous
model's attention on the *same* events, each version on the window it serves
(its own vocabulary and ``max_len``), so each sampled event yields, per layer,
a pair of head-averaged attention rows aligned by history position over the
union of the positions either version reads (a position one version does not
read has weight 0 on its side: a context cut moves the mass it can no longer
place). Per event and layer that gives their Jensen-Shannon distance (base 2,
in [0, 1]) and the overlap of their top-k attended positions (in [0, 1]).
Traffic drift moves both models alike and largely cancels in a pair; what
remains is the model's doing. Head-averaged rows are invariant to the head
permutation a retrain introduces, so pairs compare like with like.

A benign retrain moves rows too (attention is not identifiable: two fits of
the same data attend differently), so "any change" is the wrong null. The
verdict instead tests a tolerance, which is a quantile statement: a series
(cohort, layer) shows a *model-caused change* when the share of its events
whose row moved by more than ``event_js_cutoff`` is credibly above
``benign_fraction`` -- equivalently, the (1 - benign_fraction) quantile of
per-event JS exceeds the cutoff. Layers are judged separately (averaging them
would let an unchanged layer dilute a changed one), with Benjamini-Hochberg
across every (cohort, layer) judged in a round and the same hysteresis as the
drift judge; a cohort's verdict is on while any of its layers' is.

A second test per layer asks what a retrain keeps: the *per-event agreement*
(``monitor.drift.agreement``) of the two versions' attention statistics on the
same events, the rank correlation within history-length strata. A benign
retrain is sharper or flatter but sharp on the same events; a model that reads
its inputs differently (a misaligned item vocabulary, a job stopped after one
epoch) is not, although its rows move no further than a retrain's. It is judged
on the last layer (``agreement_layer``) from a bottom-k sample of every pair since the
update (priorities: hashes of the events), credibly below ``agreement_cutoff``, in the same BH family and through
the same hysteresis as the rows test: a layer is flagged when either test is.

Events of one user are not independent evidence (consecutive events share
nearly the whole history, so their pairs nearly repeat). Each window keeps a
:class:`~monitor.drift.users.UserSketch` of who its pairs came from, and the
test is a one-sided binomial test of H0: share <= benign_fraction on the
*effective* number of users (Kish's n_eff): the share above the cutoff is
estimated from the events, the number of trials is n_eff and the successes are
that share of n_eff, the binomial tail continued to real counts (the
regularised incomplete beta, exact at integers). A heavy user's 40
near-identical pairs then weigh as one user's evidence. Because the tolerance
sits in H0, a huge sample does not turn a benign-sized change into a verdict.

A third test, on the agreement layer too, asks what each version would *serve* on the same
events (``monitor.drift.served_pairs``): both recompute their top-k list there, and the layer is
flagged when the new version's lists are credibly at least ``served_min_ratio`` times as
concentrated on their own top items as the previous version's (a retrain on promotion-flooded
logs, which attends like a benign retrain, serves its handful of titles in most lists). Same BH
family, same hysteresis.

Everything a window holds adds up (histograms, counts, sums, user sketches) and the agreement
sample is a bottom-k sample by event hash, so comparisons of disjoint parts of the stream merge
(``merge``) into the comparison of the whole: the scale-out judge merges the partitions' paired
windows into its own and judges them as one process does (docs/architecture.md, "Scale-out").

Defaults (``cutoff_from_benign`` does the calibration arithmetic; figures in
docs/drift.md, "Paired comparison"):

- ``event_js_cutoff`` = 0.8, calibrated on real benign re-seeds with the union
  comparison: the largest, over re-seed pairs and layers, of ``cutoff_from_benign``
  (benign per-event JS runs .45-.55 median; the context cut's .88-.95).
- ``benign_fraction`` = 0.1: one event in ten may move that much (the
  p90 of per-event JS may reach the cutoff) before the change counts.
- ``min_pairs`` = 100 pairs and ``min_users`` = 50 effective users per window:
  50 independent users tell 10 % from 35 % (power .88 at the strictest BH level
  of 13 cohorts x 2 layers, 0.01 / 26).

>>> rng = np.random.default_rng(0)
>>> pc = PairedComparison(PairedConfig(min_pairs=100))
>>> cohort = PairCohort("v2", "platform", "ios")
>>> for t in range(3):
...     js = rng.beta(16, 2, (150, 2))  # 150 events x 2 layers, rows moved a lot: mean JS 0.89
...     _ = pc.observe(cohort, js, 1.0 - js, users=np.arange(150, dtype=np.uint64))
...     print([r.model_caused for r in pc.judge(now=float(t)).results])
[False, False]
[True, True]
[True, True]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

import numpy as np
from scipy import special

from monitor.drift.agreement import AgreementSample, agreement, below_cutoff_p, effective_users
from monitor.drift.histogram import Histogram
from monitor.drift.served_pairs import ServedPairs, judge_lists
from monitor.drift.users import UserSketch
from monitor.drift.verdict import Hysteresis, bh_adjust

# 1: one series per cohort, layers averaged, no users (restored as empty); 2: no agreement; 3: agreement
# samples without priorities (uniform reservoirs: restored with priorities drawn to match, agreement.py);
# 4: no served lists (restored without: they accumulate from the restart)
STATE_FORMAT = 5
USER_SKETCH_WIDTH = 256  # counters per row: about 6 % error on n_eff, 10 KiB per cohort window


class PairCohort(NamedTuple):
    """Where pairs are folded: the new version and a cohort (all layers of its events together)."""

    new_version: str
    dimension: str
    cohort: str


class PairKey(NamedTuple):
    """One judged paired series: a cohort's pairs at one layer."""

    new_version: str
    dimension: str
    cohort: str
    layer: int

    @property
    def cohort_key(self) -> PairCohort:
        return PairCohort(self.new_version, self.dimension, self.cohort)


@dataclass(frozen=True)
class PairedConfig:
    """Paired-comparison settings; ``from_mapping`` rejects unknown keys."""

    # Per-event, per-layer JS distance counted as "row moved a lot": calibrated on real benign
    # re-seeds with the union comparison (cutoff_from_benign per layer, the largest; docs/drift.md).
    event_js_cutoff: float = 0.8
    benign_fraction: float = 0.1  # share of such events a benign retrain may show
    min_pairs: int = 100  # a window is judged once it holds this many pairs ...
    min_users: float = 50.0  # ... from at least this many effective users (Kish)
    alpha: float = 0.01  # Benjamini-Hochberg FDR across (cohort, layer) series per round
    raise_after: int = 2  # consecutive flagged windows to raise "model-caused change"
    clear_after: int = 3  # consecutive unflagged windows to clear it
    bins: int = 20  # histogram bins for per-event JS and top-k overlap
    max_keys: int = 5_000  # paired cohorts cap (each judged per layer); beyond it: refused, counted
    # Per-event agreement (monitor.drift.agreement): the agreement layer also shows a model-caused change
    # when the rank correlation of the two versions' per-event statistics is credibly below this. Every
    # benign retrain measured agrees at >= 0.31 on the last layer (docs/drift.md, "Per-event agreement").
    agreement_cutoff: float = 0.2
    # The layer judged for agreement (-1: the last, which the prediction reads). A first layer's
    # per-event attention is not reproducible across benign retrains (agreement -0.09 to 0.35, measured).
    agreement_layer: int = -1
    agreement_capacity: int = 1024  # pairs kept per cohort (a bottom-k sample by event hash over the whole update)
    agreement_min_pairs: int = 200  # ... before agreement is judged
    agreement_strata_edges: tuple[int, ...] = (10, 50, 200)  # history-length strata; shorter ones left out
    # Served lists (monitor.drift.served_pairs), judged on the agreement layer: each version's top
    # served_slots items on the same events; flagged when the new lists' share on their own top
    # served_top_k items is credibly at least served_min_ratio times the previous lists' (benign
    # retrains measured .64-1.31 on the same events, a promotion-flooded retrain 3.49-5.09: docs/drift.md).
    served_slots: int = 10
    served_top_k: int = 10
    served_min_ratio: float = 2.0
    served_min_lists: int = 200  # pairs of lists since the update (and min_users effective users) before judging

    def __post_init__(self) -> None:
        Histogram(self.bins)
        object.__setattr__(self, "agreement_strata_edges", tuple(int(e) for e in self.agreement_strata_edges))
        checks = [
            (0.0 < self.event_js_cutoff < 1.0, "event_js_cutoff must be in (0, 1)"),
            (0.0 < self.benign_fraction < 1.0, "benign_fraction must be in (0, 1)"),
            (self.min_pairs >= 1, "min_pairs must be >= 1"),
            (self.min_users >= 1.0, "min_users must be >= 1"),
            (0.0 < self.alpha < 1.0, "alpha must be in (0, 1)"),
            (self.raise_after >= 1, "raise_after must be >= 1"),
            (self.clear_after >= 1, "clear_after must be >= 1"),
            (self.max_keys >= 1, "max_keys must be >= 1"),
            (0.0 < self.agreement_cutoff < 1.0, "agreement_cutoff must be in (0, 1)"),
            (self.agreement_capacity >= 1, "agreement_capacity must be >= 1"),
            (1 <= self.agreement_min_pairs <= self.agreement_capacity,
             "agreement_min_pairs must be in [1, agreement_capacity]"),
            (self.served_slots >= 1 and self.served_top_k >= 1, "served_slots and served_top_k must be >= 1"),
            (self.served_min_ratio > 1.0, "served_min_ratio must be > 1"),
            (self.served_min_lists >= 1, "served_min_lists must be >= 1"),
            (len(self.agreement_strata_edges) >= 1 and self.agreement_strata_edges[0] >= 1
             and list(self.agreement_strata_edges) == sorted(set(self.agreement_strata_edges)),
             "agreement_strata_edges must be ascending positive lengths"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"PairedConfig: {message}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> PairedConfig:
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"PairedConfig: unknown settings {sorted(unknown)}")
        return cls(**dict(values))


def cutoff_from_benign(benign_js: np.ndarray, benign_fraction: float = 0.1) -> float:
    """A per-event cutoff from a benign retrain's per-event JS distances.

    Picks the (1 - benign_fraction / 2) quantile, so the benign retrain
    itself sits at half the tolerated share and its windows are not judged
    at the edge of H0. With distances of several layers ([events, layers]),
    the largest of the per-layer cutoffs, so that no layer's benign share
    exceeds half the tolerance.
    """
    js = np.asarray(benign_js, dtype=np.float64)
    columns = js.reshape(js.shape[0], -1) if js.ndim > 1 else js[:, None]
    cutoffs = []
    for column in columns.T:
        column = column[~np.isnan(column)]
        if column.size:
            cutoffs.append(float(np.quantile(column, 1.0 - benign_fraction / 2.0)))
    if not cutoffs:
        raise ValueError("no benign distances given")
    return max(cutoffs)


def binomial_tail(successes: np.ndarray, trials: np.ndarray, p: float) -> np.ndarray:
    """P(X >= successes) for X ~ Binomial(trials, p), continued to real-valued counts.

    The regularised incomplete beta I_p(k, n - k + 1), which equals the exact
    binomial tail at integer k and n (scipy's ``binom.sf(k - 1, n, p)``) and is
    smooth between them, so effective counts need no rounding. 1 for k <= 0, 0 for k > n.

    >>> float(binomial_tail(np.array(3.0), np.array(10.0), 0.1).round(4))
    0.0702
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    positive, possible = k > 0, k <= n
    tail = special.betainc(np.where(positive, k, 1.0), np.maximum(n - k, 0.0) + 1.0, p)
    return np.where(positive, np.where(possible, tail, 0.0), 1.0)


@dataclass(frozen=True, slots=True)
class PairedResult:
    """One paired series (cohort, layer) judged in one round."""

    key: PairKey
    pairs: int  # pairs in the window
    effective_users: float  # Kish's effective number of users behind them
    above: int  # pairs with JS > cutoff
    fraction_above: float
    cutoff: float  # event_js_cutoff
    benign_fraction: float
    mean_js: float
    p90_js: float  # from the window histogram
    mean_overlap: float
    p_value: float  # one-sided binomial on effective users, H0: share <= benign_fraction
    p_adjusted: float
    flagged: bool  # the rows test or the agreement test flagged the window
    model_caused: bool  # hysteresis verdict after this window
    consecutive_flagged: int
    consecutive_clear: int
    total_pairs: int  # since the series started
    total_above: int
    # Per-event agreement of the layer's statistics (None until judged: agreement_min_pairs pairs
    # from min_users effective users since the update, in strata where it is defined)
    agreement: float | None = None
    agreement_se: float | None = None
    agreement_pairs: int = 0  # pairs in the cohort's agreement sample
    agreement_p_adjusted: float = 1.0  # H0: agreement >= agreement_cutoff, BH with the rows tests
    agreement_flagged: bool = False
    rows_flagged: bool = False  # the share of rows past the cutoff is credibly above the tolerance
    # What each version would serve on the same events (agreement layer; None until judged:
    # served_min_lists pairs of lists from min_users effective users since the update)
    served_ratio: float | None = None  # the new lists' own top-k share over the previous lists'
    served_share: float | None = None
    served_previous_share: float | None = None
    served_lists: int = 0  # pairs of lists since the update
    served_p_adjusted: float = 1.0
    served_flagged: bool = False

    @property
    def window_flagged(self) -> bool:
        """The last window was flagged by any test (rows, agreement, served lists), before hysteresis."""
        return self.flagged or self.served_flagged


@dataclass(frozen=True, slots=True)
class PairedReport:
    now: float
    round: int
    results: tuple[PairedResult, ...]
    insufficient: int  # series whose window has fewer than min_pairs pairs or min_users users
    model_caused: tuple[PairKey, ...]  # series whose verdict is on now


class _Window:
    """A cohort's pairs since its last judged window: per layer histograms and sums, one user sketch."""

    __slots__ = ("js", "overlap", "above", "js_sum", "overlap_sum", "overlap_n", "pairs", "users", "unattributed")

    def __init__(self, bins: int, layers: int) -> None:
        self.js = [Histogram(bins) for _ in range(layers)]
        self.overlap = [Histogram(bins) for _ in range(layers)]
        self.above = np.zeros(layers, dtype=np.int64)  # [layers]
        self.js_sum = np.zeros(layers)  # [layers]
        self.overlap_sum = np.zeros(layers)  # [layers]
        self.overlap_n = np.zeros(layers, dtype=np.int64)  # [layers]
        self.pairs = 0
        self.users = UserSketch(USER_SKETCH_WIDTH)
        self.unattributed = 0  # pairs folded without user ids: each counted as its own user

    def effective_users(self) -> float:
        """Kish's n_eff of the window's pairs: pairs^2 / sum over users of pairs^2."""
        if self.pairs == 0:
            return 0.0
        return float(min(self.pairs, self.pairs**2 / (self.users.second_moment() + self.unattributed)))

    def merge(self, other: _Window) -> None:
        """Add ``other``'s pairs (same bins and layers): the window of both."""
        if len(other.js) != len(self.js):
            raise ValueError(f"cannot merge a window of {len(other.js)} layers into one of {len(self.js)}")
        for mine, theirs in zip(self.js + self.overlap, other.js + other.overlap, strict=True):
            mine.merge(theirs)
        self.above += other.above
        self.js_sum += other.js_sum
        self.overlap_sum += other.overlap_sum
        self.overlap_n += other.overlap_n
        self.pairs += other.pairs
        self.users.merge(other.users)
        self.unattributed += other.unattributed

    def to_state(self) -> dict[str, Any]:
        return {
            "js": [h.to_state() for h in self.js],
            "overlap": [h.to_state() for h in self.overlap],
            "above": self.above.tolist(),
            "js_sum": self.js_sum.tolist(),
            "overlap_sum": self.overlap_sum.tolist(),
            "overlap_n": self.overlap_n.tolist(),
            "pairs": self.pairs,
            "users": self.users.to_state(),
            "unattributed": self.unattributed,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Window:
        layers = len(state["js"])
        w = cls(int(state["js"][0]["bins"]), layers)
        w.js = [Histogram.from_state(h) for h in state["js"]]
        w.overlap = [Histogram.from_state(h) for h in state["overlap"]]
        w.above = np.asarray(state["above"], dtype=np.int64)
        w.js_sum = np.asarray(state["js_sum"], dtype=np.float64)
        w.overlap_sum = np.asarray(state["overlap_sum"], dtype=np.float64)
        w.overlap_n = np.asarray(state["overlap_n"], dtype=np.int64)
        w.pairs = int(state["pairs"])
        w.users = UserSketch.from_state(state["users"])
        w.unattributed = int(state["unattributed"])
        return w


class _Cohort:
    """A cohort's window and, per layer, its verdict and totals."""

    __slots__ = ("window", "verdicts", "total_pairs", "total_above", "agreement", "served")

    def __init__(self, config: PairedConfig, layers: int) -> None:
        self.window = _Window(config.bins, layers)
        self.verdicts = [Hysteresis(config.raise_after, config.clear_after) for _ in range(layers)]
        self.total_pairs = 0
        self.total_above = [0] * layers
        # paired per-event statistics [pairs, statistics x layers]: column statistic * layers + layer
        self.agreement: AgreementSample | None = None
        self.served: ServedPairs | None = None  # both versions' recomputed lists since the update

    @property
    def layers(self) -> int:
        return len(self.verdicts)


class PairedComparison:
    """Per (new_version, dimension, cohort) windows of paired divergences; verdicts per layer."""

    def __init__(self, config: PairedConfig | None = None) -> None:
        self.config = config or PairedConfig()
        self._cohorts: dict[PairCohort, _Cohort] = {}
        self._round = 0
        # refused_no_update: pairs a replica folded for a version the scale-out judge holds no such update of
        self.counts: dict[str, int] = {"pairs": 0, "nan_dropped": 0, "refused_key_cap": 0, "refused_no_update": 0}

    def observe(self, cohort: PairCohort, js: np.ndarray, overlap: np.ndarray,
                users: np.ndarray | None = None) -> str:
        """Fold a cohort's pairs in: per-event JS distances and top-k overlaps, ``[P, layers]``
        (or ``[P]`` for one layer), and the events' user hashes ``uint64 [P]`` (``hash_users``;
        None: every pair counts as its own user).

        Returns "window" or "refused" (cohort cap; counted). A pair with a NaN distance in any
        layer is dropped and counted; out-of-range values are clipped. A cohort keeps the
        layer count of its first pairs.
        """
        js = np.asarray(js, dtype=np.float64)
        overlap = np.asarray(overlap, dtype=np.float64)
        js = js[:, None] if js.ndim == 1 else js  # [P, layers]
        overlap = overlap[:, None] if overlap.ndim == 1 else overlap
        if js.ndim != 2 or js.shape != overlap.shape:
            raise ValueError(f"js and overlap must both be [pairs, layers]: {js.shape} vs {overlap.shape}")
        if users is not None and np.shape(users) != (js.shape[0],):
            raise ValueError(f"users must be one hash per pair: {np.shape(users)} for {js.shape[0]} pairs")
        state = self._cohorts.get(cohort)
        if state is None:
            if len(self._cohorts) >= self.config.max_keys:
                self.counts["refused_key_cap"] += int(js.shape[0])
                return "refused"
            state = self._cohorts[cohort] = _Cohort(self.config, js.shape[1])
        if js.shape[1] != state.layers:
            raise ValueError(f"{cohort} holds {state.layers} layers, got pairs of {js.shape[1]}")
        ok = ~np.isnan(js).any(axis=1)
        if not ok.all():
            self.counts["nan_dropped"] += int((~ok).sum())
            js, overlap = js[ok], overlap[ok]
            users = None if users is None else np.asarray(users)[ok]
        js = np.clip(js, 0.0, 1.0)
        w = state.window
        for layer in range(state.layers):
            w.js[layer].add(js[:, layer])
            w.overlap[layer].add(overlap[:, layer])
        w.above += np.count_nonzero(js > self.config.event_js_cutoff, axis=0)
        w.js_sum += js.sum(axis=0)
        known = ~np.isnan(overlap)
        w.overlap_sum += np.where(known, np.clip(overlap, 0.0, 1.0), 0.0).sum(axis=0)
        w.overlap_n += known.sum(axis=0)
        w.pairs += int(js.shape[0])
        if users is None:
            w.unattributed += int(js.shape[0])
        else:
            w.users.add(np.asarray(users, dtype=np.uint64))
        self.counts["pairs"] += int(js.shape[0])
        return "window"

    def observe_statistics(self, cohort: PairCohort, old: np.ndarray, new: np.ndarray, lengths: np.ndarray,
                           users: np.ndarray, priorities: np.ndarray | None = None) -> None:
        """Fold a cohort's paired per-event statistics in for the agreement test: ``old``, ``new``
        [P, statistics, layers] (each version on its own window), ``lengths`` [P] the events'
        history lengths, ``users`` uint64 [P], ``priorities`` uint64 [P] the events' hashes
        (``agreement.event_priorities``; None: order-dependent ones). Call after ``observe`` for
        the same pairs (a cohort refused at the cap is skipped); rows with a NaN on either side
        are left out."""
        state = self._cohorts.get(cohort)
        if state is None:
            return
        old, new = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
        if old.shape != new.shape or old.ndim != 3 or old.shape[2] != state.layers:
            raise ValueError(f"old and new must both be [pairs, statistics, {state.layers}], "
                             f"got {old.shape} and {new.shape}")
        flat_old, flat_new = old.reshape(len(old), -1), new.reshape(len(new), -1)
        ok = np.isfinite(flat_old).all(axis=1) & np.isfinite(flat_new).all(axis=1)
        if state.agreement is None:
            state.agreement = AgreementSample(self.config.agreement_capacity, flat_old.shape[1])
        state.agreement.add(flat_old[ok], flat_new[ok], np.asarray(lengths)[ok], np.asarray(users)[ok],
                            None if priorities is None else np.asarray(priorities)[ok])

    def observe_served(self, cohort: PairCohort, previous: np.ndarray, new: np.ndarray, users: np.ndarray) -> None:
        """Fold a cohort's pairs of recomputed top-k lists in (``served_pairs.ServedPairs.add``:
        raw item ids [P, k], -1 for an empty slot). Call after ``observe`` for the same pairs."""
        state = self._cohorts.get(cohort)
        if state is None:
            return
        if state.served is None:
            state.served = ServedPairs()
        state.served.add(previous, new, users)

    def merge(self, other: PairedComparison, versions: Collection[str] | None = None) -> None:
        """Fold ``other``'s open windows and agreement samples in (pairs of other events: a
        partition's share of a window), cohorts in key order; its verdicts are not merged (a
        part has none). ``versions``: the new versions whose pairs are taken (the updates the
        judge holds); the others' pairs are counted as ``refused_no_update``. The same
        parts merged in any order give the same comparison."""
        for cohort in sorted(other._cohorts):
            part = other._cohorts[cohort]
            if versions is not None and cohort.new_version not in versions:
                self.counts["refused_no_update"] += part.window.pairs
                continue
            state = self._cohorts.get(cohort)
            if state is None:
                if len(self._cohorts) >= self.config.max_keys:
                    self.counts["refused_key_cap"] += part.window.pairs
                    continue
                state = self._cohorts[cohort] = _Cohort(self.config, part.layers)
            if part.layers != state.layers:
                raise ValueError(f"{cohort} holds {state.layers} layers, a part holds {part.layers}")
            state.window.merge(part.window)
            if part.agreement is not None:
                if state.agreement is None:
                    state.agreement = AgreementSample(self.config.agreement_capacity, part.agreement.series)
                state.agreement.merge(part.agreement)
            if part.served is not None:
                if state.served is None:
                    state.served = ServedPairs()
                state.served.merge(part.served)
        for name, count in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + count

    def _agreement_of(self, state: _Cohort, layer: int) -> tuple[float | None, float | None, int, float]:
        """(agreement, standard error, sampled pairs, p-value of H0: agreement >= cutoff) of a layer."""
        c, sample = self.config, state.agreement
        if layer != c.agreement_layer % state.layers:
            return None, None, 0, 1.0
        if sample is None or len(sample) < c.agreement_min_pairs or effective_users(sample.users) < c.min_users:
            return None, None, 0 if sample is None else len(sample), 1.0
        columns = np.arange(layer, sample.series, state.layers)  # every statistic of this layer
        result = agreement(sample, c.agreement_strata_edges, columns=columns)
        if not (np.isfinite(result.value) and np.isfinite(result.standard_error)):
            return None, None, result.pairs, 1.0
        return result.value, result.standard_error, result.pairs, below_cutoff_p(
            result.value, result.standard_error, c.agreement_cutoff)

    def _served_ready(self, state: _Cohort, layer: int) -> bool:
        c, held = self.config, state.served
        return (layer == c.agreement_layer % state.layers and held is not None
                and held.lists >= c.served_min_lists and held.users.effective_users() >= c.min_users)

    def _ready(self, state: _Cohort) -> bool:
        w = state.window
        return w.pairs >= self.config.min_pairs and w.effective_users() >= self.config.min_users

    def judge(self, now: float) -> PairedReport:
        """Judge every (cohort, layer) whose cohort window is ready; BH across all; hysteresis; empty them."""
        c = self.config
        self._round += 1
        ready = [k for k, s in self._cohorts.items() if self._ready(s)]
        insufficient = sum(s.layers for s in self._cohorts.values() if s.window.pairs and not self._ready(s))
        series = [(k, layer) for k in ready for layer in range(self._cohorts[k].layers)]
        results: list[PairedResult] = []
        if series:
            windows = [self._cohorts[k].window for k, _ in series]
            n = np.array([w.pairs for w in windows], dtype=np.float64)
            above = np.array([w.above[layer] for w, (_, layer) in zip(windows, series)], dtype=np.float64)
            n_eff = np.array([w.effective_users() for w in windows])
            # The share above the cutoff comes from the events; the evidence for it from the users.
            p = binomial_tail(above / n * n_eff, n_eff, c.benign_fraction)
            agreements = [self._agreement_of(self._cohorts[k], layer) for k, layer in series]
            served_rows = [i for i, (k, layer) in enumerate(series) if self._served_ready(self._cohorts[k], layer)]
            # (each held: _served_ready)
            served = judge_lists([held for i in served_rows if (held := self._cohorts[series[i][0]].served)],
                                 top_k=c.served_top_k)
            # Every test of every series in one Benjamini-Hochberg family (only those judged).
            judged = [i for i, a in enumerate(agreements) if a[0] is not None]
            adjusted = bh_adjust(np.concatenate([p, [agreements[i][3] for i in judged], served.test.p_value]))
            p_adj = adjusted[:len(series)]
            agreement_adj = np.ones(len(series))
            agreement_adj[judged] = adjusted[len(series):len(series) + len(judged)]
            served_adj = adjusted[len(series) + len(judged):]
            served_at = {row: j for j, row in enumerate(served_rows)}
            for i, (cohort, layer) in enumerate(series):
                state, w = self._cohorts[cohort], windows[i]
                rows_flagged = bool(p_adj[i] <= c.alpha)
                agreement_flagged = bool(agreement_adj[i] <= c.alpha)
                j = served_at.get(i)
                served_flagged = j is not None and bool(
                    served_adj[j] <= c.alpha and served.ratio[j] >= c.served_min_ratio and served.test.narrowed[j])
                flagged = rows_flagged or agreement_flagged or served_flagged
                verdict = state.verdicts[layer]
                verdict.update(flagged)
                pairs, hits = w.pairs, int(w.above[layer])
                state.total_above[layer] += hits
                results.append(
                    PairedResult(
                        key=PairKey(*cohort, layer),
                        pairs=pairs,
                        effective_users=float(n_eff[i]),
                        above=hits,
                        fraction_above=hits / pairs,
                        cutoff=c.event_js_cutoff,
                        benign_fraction=c.benign_fraction,
                        mean_js=float(w.js_sum[layer]) / pairs,
                        p90_js=w.js[layer].quantile(0.9),
                        mean_overlap=(float(w.overlap_sum[layer]) / int(w.overlap_n[layer])
                                      if w.overlap_n[layer] else float("nan")),
                        p_value=float(p[i]),
                        p_adjusted=float(p_adj[i]),
                        flagged=flagged,
                        model_caused=verdict.drifting,
                        consecutive_flagged=verdict.consecutive_flagged,
                        consecutive_clear=verdict.consecutive_clear,
                        total_pairs=state.total_pairs + pairs,
                        total_above=state.total_above[layer],
                        agreement=agreements[i][0],
                        agreement_se=agreements[i][1],
                        agreement_pairs=agreements[i][2],
                        agreement_p_adjusted=float(agreement_adj[i]),
                        agreement_flagged=agreement_flagged,
                        rows_flagged=rows_flagged,
                        served_ratio=None if j is None else float(served.ratio[j]),
                        served_share=None if j is None else float(served.share[j]),
                        served_previous_share=None if j is None else float(served.reference_share[j]),
                        served_lists=0 if state.served is None else state.served.lists,
                        served_p_adjusted=1.0 if j is None else float(served_adj[j]),
                        served_flagged=served_flagged,
                    )
                )
            for cohort in ready:
                state = self._cohorts[cohort]
                state.total_pairs += state.window.pairs
                state.window = _Window(c.bins, state.layers)
        on = tuple(PairKey(*k, layer) for k, s in self._cohorts.items()
                   for layer, verdict in enumerate(s.verdicts) if verdict.drifting)
        return PairedReport(float(now), self._round, tuple(results), insufficient, on)

    def forget(self, new_version: str) -> None:
        """Drop a version's paired series (its update is over)."""
        for key in [k for k in self._cohorts if k.new_version == new_version]:
            del self._cohorts[key]

    def __len__(self) -> int:
        """Cohorts held (each judged per layer)."""
        return len(self._cohorts)

    def to_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "round": self._round,
            "counts": dict(self.counts),
            "cohorts": [
                [list(k), s.window.to_state(), [v.to_state() for v in s.verdicts], s.total_pairs, list(s.total_above),
                 None if s.agreement is None else s.agreement.to_state(),
                 None if s.served is None else s.served.to_state()]
                for k, s in self._cohorts.items()
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: PairedConfig | None = None) -> PairedComparison:
        """Resume from ``to_state()``; a given ``config`` wins over the saved one (bins must match).

        A format-1 state (layers averaged, no users) keeps its round and counts; its series
        cannot be split into layers, so they restart empty (pairing goes on). A format-2 state
        (before the agreement test) resumes with empty agreement samples; a format-3 state's
        samples (uniform reservoirs) are given priorities (``AgreementSample.from_state``); a
        format-4 state (before the served lists) resumes without lists.
        """
        fmt = state.get("format")
        if fmt not in (1, 2, 3, 4, STATE_FORMAT):
            raise ValueError(f"unknown paired state format {fmt!r}")
        saved = PairedConfig.from_mapping(state["config"])
        config = config or saved
        if config.bins != saved.bins:
            raise ValueError(f"saved state has {saved.bins} bins, config has {config.bins}")
        pc = cls(config)
        pc._round = int(state["round"])
        pc.counts.update({k: int(v) for k, v in state["counts"].items()})
        if fmt == 1:
            return pc
        for key, window, verdicts, total_pairs, total_above, *rest in state["cohorts"]:
            restored = _Cohort(config, len(verdicts))
            if rest and rest[0] is not None:
                restored.agreement = AgreementSample.from_state(rest[0], seed=len(pc._cohorts))
            if len(rest) > 1 and rest[1] is not None:
                restored.served = ServedPairs.from_state(rest[1])
            restored.window = _Window.from_state(window)
            restored.verdicts = [Hysteresis.from_state(v, config.raise_after, config.clear_after) for v in verdicts]
            restored.total_pairs = int(total_pairs)
            restored.total_above = [int(a) for a in total_above]
            pc._cohorts[PairCohort(*key)] = restored
        return pc
