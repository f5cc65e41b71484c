"""The drift judge: current windows against references, one round at a time.

Per cohort (model_version, dimension, cohort) the judge keeps a tumbling window, the
cohort's recent traffic and a verdict per series (statistic x layer), and owns the
baselines (a ``BaselineStore``). All of these are ``Sample`` s: bin counts per series,
per history-length stratum, per bin, and a sketch of the users behind the events.
``observe_batch`` folds one cohort dimension of a batch in with one vectorised pass:
while a cohort's own baseline collects, its events build the baseline; after it
freezes they fill the window. ``judge(now)``, called every ``judge_interval`` seconds by
the daemon, judges every window holding at least ``min_samples`` events from at least
``min_users`` effective users, then empties it; smaller windows are "insufficient" and
keep filling, with no change to any verdict.

Events are not independent: one user's events in a window share nearly the same
history, so their statistics nearly repeat. Every size the judgement uses is therefore
an *effective* size, Kish's n / design effect from the user sketch
(``monitor.drift.users``): the chi-square counts are divided by their sample's design
effect (first-order Rao-Scott), and the JS bias correction uses the effective sizes.

The window is compared with its reference *post-stratified* to the window's history-
length mix (``monitor.drift.strata``): a change in the mix of short and long histories
alone is not drift; a change of attention within strata is.

A judged window is *flagged* when both hold:

- its chi-square homogeneity p-value, Benjamini-Hochberg adjusted across
  every series judged in the round (cohorts x statistics x layers), is
  <= ``alpha``: the difference is real, with false flags controlled;
- its effect size, the (bias-corrected) Jensen-Shannon distance to the
  reference, is >= ``min_effect``: the difference is big enough to matter.

Hysteresis turns flags into the ``drifting`` verdict: ``raise_after`` flagged windows
in a row raise it, ``clear_after`` unflagged ones clear it. A cohort drifts if any of
its series does.

Attention mass per item. Each sample also holds, per layer, a sketch of the attention
mass per item (``monitor.drift.items``), fed by ``observe_batch(..., attended=...)``; a
window and its reference are compared on the window's top items, cross-fitted between two halves of
its users (``monitor.drift.concentration``)
in the same round, the same BH family and with the same hysteresis, as one more series
per (cohort, layer): ``JudgeReport.items``. Such a series is flagged when its adjusted
p-value is <= ``alpha``, its JS distance over the two cells >= ``item_min_effect``, and
its cross-fitted top-``item_top_k`` share is above the reference's (attention narrowed).
A judged window also leaves each half of its users' top items to the cohort, which the next
window's events of the *other* half watch as they are folded, summed per random group of
users: the second, more powerful test of ``concentration.watched``.

Served recommendations. ``observe_batch(..., served=...)`` folds the events' served lists
the same way, into each sample's served sketch; a window and its reference are compared on
how concentrated each side's lists are on its *own* top items (``concentration.compare_served``:
a retrain serves other items, so only the concentration counts), flagged when significant and
at least ``served_min_ratio`` times the reference's, as one more item row per cohort (layer
``SERVED_LAYER``) in the same BH family and hysteresis.

Model updates. ``start_update(new, previous, at)`` freezes the previous version's
*recent* traffic of every cohort (``monitor.drift.recent``: its last one to two
references' worth of judged windows, and its open window) as the update reference,
and makes the new version's windows count against it -- kind "model_update" -- while
the new version's own baseline collects (its events feed both). Once a cohort's own
baseline freezes its window restarts and it is judged against that (kind
"within_version"); the model_update verdict keeps its last value and is exported with
the update time. Comparing versions is sound because the statistics are head-averaged:
a retrain permutes heads, and a symmetric function over heads is invariant to that.

Defaults (reasoning and measurements in docs/drift.md): ``min_effect`` 0.1 JS,
``alpha`` 0.01 FDR, windows of >= 200 events from >= 20 effective users, references
of >= 2,000 events from >= 30 effective users collected over >= a day.

>>> rng = np.random.default_rng(0)
>>> judge = Judge(JudgeConfig(reference_seconds=0.0))
>>> def batch(a, b, n):   # n events of n distinct users, history length 30, one statistic
...     return dict(values=rng.beta(a, b, (n, 1, 1)), users=rng.integers(0, 2**63, n).astype(np.uint64),
...                 strata=np.full(n, 1), statistics=("entropy",))
>>> judge.observe_batch("v1", "platform", np.zeros(2000, int), ("ios",), **batch(2, 5, 2000), now=0.0)
{'ios': 'baseline'}
>>> for t in range(1, 4):
...     _ = judge.observe_batch("v1", "platform", np.zeros(200, int), ("ios",), **batch(5, 2, 200), now=float(t))
...     report = judge.judge(now=float(t))
...     print(t, report.results[0].flagged, report.results[0].drifting)
1 True False
2 True True
3 True True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np

from monitor.drift.baseline import BaselineStore, CohortKey, ReferenceRule, SeriesKey
from monitor.drift.concentration import (
    SERVED_LAYER,
    Comparison,
    ItemResult,
    Side,
    combine,
    compare,
    compare_served,
    watched,
)
from monitor.drift.divergence import chi2_homogeneity, js_distance, psi
from monitor.drift.histogram import Histogram
from monitor.drift.items import Attended, ItemMass, split_halves
from monitor.drift.recent import RecentTraffic
from monitor.drift.sample import SKETCH_DEPTH, SKETCH_WIDTH, USER_GROUPS, Sample, bin_batch
from monitor.drift.strata import Strata, poststratify
from monitor.drift.users import group_counters, sketch_cells, user_groups
from monitor.drift.verdict import Hysteresis, bh_adjust

WITHIN_VERSION = "within_version"
MODEL_UPDATE = "model_update"
STATE_FORMAT = 2


class StateFormatError(ValueError):
    """A saved judge state this code cannot read (e.g. from before user-clustered judging)."""


@dataclass(frozen=True)
class JudgeConfig:
    """Judge settings; every field has a default, unknown keys are rejected by ``from_mapping``."""

    bins: int = 20  # equal-width bins over [0, 1] for windows and references
    reference_events: int = 2000  # events before a baseline may freeze
    reference_users: float = 30.0  # and effective users (Kish) behind them
    # and seconds of collecting: a day, the traffic's slowest common cycle (docs/drift.md)
    reference_seconds: float = 86_400.0
    min_samples: int = 200  # a window is judged once it holds this many events
    min_users: float = 20.0  # ... from at least this many effective users
    strata_edges: tuple[int, ...] = (10, 50, 200)  # history-length strata (the event's own length)
    alpha: float = 0.01  # Benjamini-Hochberg FDR level per round
    min_effect: float = 0.1  # JS distance floor for a flag (sample-size independent)
    # Floor for model_update windows (None: min_effect). Real retrains of one recipe differ by up to
    # ~0.5 (docs/drift.md, "Calibration on real retrains"); 0.65 is the calibrated value.
    update_min_effect: float | None = 0.65
    raise_after: int = 2  # consecutive flagged windows that raise drift
    clear_after: int = 3  # consecutive unflagged windows that clear it
    max_keys: int = 20_000  # series cap (statistics x layers of every cohort); beyond it: refused, counted
    bias_correction: bool = True  # subtract JS sampling noise before the floor (see divergence.py)
    psi_epsilon: float = 1e-4  # floor for empty bins in PSI (reported only)
    min_expected: float = 5.0  # chi-square: merge bins until expected counts reach this
    item_top_k: int = 10  # attention mass per item: the top items compared and their share reported
    item_min_effect: float = 0.1  # JS distance floor of a narrowed verdict (both kinds)
    # Served recommendations: how many times as concentrated on their own top items the window's
    # lists must be as the reference's (docs/drift.md, "Served recommendations"; benign retrains
    # measured at most 1.3, the flooded retrain 3.0-3.8)
    served_min_ratio: float = 2.0

    def __post_init__(self) -> None:
        Histogram(self.bins)  # validates bins
        object.__setattr__(self, "strata_edges", tuple(int(e) for e in self.strata_edges))
        Strata(self.strata_edges)  # validates the edges
        checks = [
            (self.reference_events >= 1, "reference_events must be >= 1"),
            (self.reference_users >= 0, "reference_users must be >= 0"),
            (self.reference_seconds >= 0, "reference_seconds must be >= 0"),
            (self.min_samples >= 1, "min_samples must be >= 1"),
            (self.min_users >= 1, "min_users must be >= 1"),
            (0.0 < self.alpha < 1.0, "alpha must be in (0, 1)"),
            (0.0 <= self.min_effect <= 1.0, "min_effect must be in [0, 1]"),
            (self.update_min_effect is None or 0.0 <= self.update_min_effect <= 1.0,
             "update_min_effect must be None or in [0, 1]"),
            (self.raise_after >= 1, "raise_after must be >= 1"),
            (self.clear_after >= 1, "clear_after must be >= 1"),
            (self.max_keys >= 1, "max_keys must be >= 1"),
            (0.0 < self.psi_epsilon < 1.0, "psi_epsilon must be in (0, 1)"),
            (self.min_expected > 0, "min_expected must be > 0"),
            (1 <= self.item_top_k <= 100, "item_top_k must be in [1, 100]"),
            (0.0 <= self.item_min_effect <= 1.0, "item_min_effect must be in [0, 1]"),
            (self.served_min_ratio >= 1.0, "served_min_ratio must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"JudgeConfig: {message}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> JudgeConfig:
        """Defaults overlaid by ``values``; an unknown key is an error, not a silent typo."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"JudgeConfig: unknown settings {sorted(unknown)}")
        return cls(**dict(values))

    @property
    def reference_rule(self) -> ReferenceRule:
        """What a baseline, a recent-traffic block or an update reference must hold."""
        return ReferenceRule(self.reference_events, self.reference_users, self.reference_seconds)


@dataclass(frozen=True, slots=True)
class KeyResult:
    """One series judged in one round: what a drift gauge exports."""

    key: SeriesKey
    kind: str  # "within_version" or "model_update"
    reference_version: str  # whose traffic the reference is
    score: float  # JS distance (bias-corrected with effective sizes if configured): the effect size
    js_raw: float  # plug-in JS distance, for comparison
    psi: float
    p_value: float  # chi-square on effective counts (Rao-Scott), post-stratified reference
    p_adjusted: float  # Benjamini-Hochberg across the round
    threshold: float  # the effect floor applied: min_effect, or update_min_effect for model_update
    samples: int  # events in the window (this series' values)
    reference_samples: int  # reference events in the strata the window was compared on
    effective_samples: float  # the window's events over its design effect
    reference_effective: float  # the reference's, after clustering and reweighting to the window's mix
    unmatched: int  # window events in strata the reference lacks (left out of the comparison)
    flagged: bool
    drifting: bool  # hysteresis verdict after this window
    consecutive_flagged: int
    consecutive_clear: int
    update_at: float | None  # model_update only: when the update started


@dataclass(frozen=True, slots=True)
class CohortVerdict:
    """Roll-up per (model_version, dimension, cohort) and kind: drifting if any series is."""

    model_version: str
    dimension: str
    cohort: str
    kind: str
    drifting: bool
    drifting_series: tuple[tuple[str, int], ...]  # (statistic, layer) pairs drifting
    series: int  # series with at least one judged window of this kind
    reference_version: str
    update_at: float | None  # model_update only
    active: bool  # False once a model_update verdict is final (own baseline frozen)


@dataclass(frozen=True, slots=True)
class JudgeReport:
    """The outcome of one ``judge(now)`` round."""

    now: float
    round: int
    results: tuple[KeyResult, ...]  # series judged this round
    cohorts: tuple[CohortVerdict, ...]  # every cohort with a verdict so far
    judged: int
    flagged: int
    insufficient: int  # series whose window has a reference but too few events or users
    no_reference: int  # series of full windows with nothing to judge against (emptied)
    collecting: int  # baselines (cohorts) still collecting
    drifting: int  # series drifting now (any kind still active)
    unmatched: int  # window events judged this round that fell in strata their reference lacks
    items: tuple[ItemResult, ...] = ()  # (cohort, layer) attention mass per item judged this round


@dataclass(frozen=True)
class Reference:
    """What a window is judged against: a sample, the series it holds, and whose traffic it is."""

    sample: Sample
    series: tuple[tuple[str, int], ...]
    version: str

    def to_state(self) -> dict[str, Any]:
        return {"sample": self.sample.to_state(), "series": [list(s) for s in self.series], "version": self.version}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Reference:
        return cls(Sample.from_state(state["sample"]), tuple((str(s), int(layer)) for s, layer in state["series"]),
                   str(state["version"]))


@dataclass(frozen=True)
class Update:
    """A model update: the version replaced, when, and its recent traffic per (dimension, cohort)."""

    previous_version: str
    at: float
    references: Mapping[tuple[str, str], Reference] = dataclasses.field(default_factory=dict)


class _Cohort:
    """Per-cohort state: the series, the window, the recent traffic, one hysteresis per series and kind."""

    __slots__ = ("series", "window", "recent", "within", "update", "items_within", "items_update", "watch",
                 "watch_mass")

    def __init__(self, series: tuple[tuple[str, int], ...], shape: tuple[int, int, int]) -> None:
        self.series = series
        self.window = Sample(*shape)
        self.recent = RecentTraffic(shape)
        self.within: list[Hysteresis | None] = [None] * len(series)
        self.update: list[Hysteresis | None] = [None] * len(series)
        self.items_within: dict[int, Hysteresis] = {}  # layer -> verdict on the attention mass per item
        self.items_update: dict[int, Hysteresis] = {}
        # layer -> (ids half 0's events watch, half 1's): the other half's top items of the last
        # judged window; and the window's mass on them per user group [groups, layers + 1 (events)]
        self.watch: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.watch_mass: np.ndarray | None = None

    def reset_window(self) -> None:
        self.window.reset()
        self.watch_mass = None


class _Part(NamedTuple):
    """One cohort's share of a batch, binned: what ``Sample.add`` takes."""

    counts: np.ndarray  # [series, strata, bins]
    by_group: np.ndarray  # [series, user groups, bins]
    user_counters: np.ndarray  # [depth, width] sketch counters
    events: int
    nan: int
    clipped: int
    items: ItemMass | None = None  # mass per item: (ids [d], mass [d, layers])
    watch: np.ndarray | None = None  # [user groups, layers + 1]: mass on the watched items, then events
    served: ItemMass | None = None  # served slots per item: (ids [d], mass [d, 1])

    def add_to(self, sample: Sample) -> None:
        sample.add(*self[:7], served=self.served)


@dataclass
class _Pending:
    """A full window with a reference, waiting for the round's vectorised judgement."""

    key: CohortKey
    cohort: _Cohort
    rows: np.ndarray  # indices of the cohort's series the reference holds
    window: np.ndarray  # [series, strata, bins]
    reference: np.ndarray  # [series, strata, bins], rows matching ``window``
    window_design: np.ndarray  # [rows] design effects of the window's series
    reference_design: np.ndarray  # [rows] and of the reference's
    kind: str
    reference_version: str
    window_sample: Sample | None = None  # for the attention mass per item
    reference_sample: Sample | None = None


def _group_sums(x: np.ndarray, groups: np.ndarray, cohorts: np.ndarray, n: int) -> np.ndarray:
    """Per cohort and user group, the events' watched mass and their count ``[n, groups, layers + 1]``."""
    key = np.asarray(cohorts, dtype=np.intp) * USER_GROUPS + groups
    columns = [np.bincount(key, weights=x[:, layer], minlength=n * USER_GROUPS) for layer in range(x.shape[1])]
    columns.append(np.bincount(key, minlength=n * USER_GROUPS).astype(np.float64))
    return np.stack(columns, axis=1).reshape(n, USER_GROUPS, -1)


def _half_events(sample: Sample) -> tuple[float, float]:
    """Events of the sample's two halves of users (even and odd random groups)."""
    per_group = sample.by_group[0].sum(axis=1) if len(sample.by_group) else np.zeros(USER_GROUPS)
    return float(per_group[0::2].sum()), float(per_group[1::2].sum())


class Judge:
    """Windows, references and verdicts for many cohorts; ``observe_batch`` then ``judge(now)``."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        self.config = config or JudgeConfig()
        self.strata = Strata(self.config.strata_edges)
        self._store = BaselineStore(self.config.reference_rule)
        self._cohorts: dict[CohortKey, _Cohort] = {}
        self._series_count = 0
        self._updates: dict[str, Update] = {}
        self._clock: float | None = None
        self._round = 0
        self._last_users: tuple[np.ndarray, ...] | None = None  # (users, cells, signs, groups) of the last batch
        self._last_halves: tuple[np.ndarray, np.ndarray] | None = None  # (groups, their parity) of the last batch
        self.counts: dict[str, int] = {
            "baseline_events": 0,  # events into baselines (per cohort)
            "window_events": 0,  # events into windows (per cohort)
            "refused_key_cap": 0,  # values refused at the series cap (events x series)
            "unmatched_events": 0,  # judged window events in strata their reference lacked
            "update_references_recent": 0,  # cohorts whose update reference is the recent traffic
            "update_references_baseline": 0,  # ... the previous version's baseline (too little recent traffic)
            "update_references_missing": 0,  # ... nothing (the previous version had too little traffic)
        }

    @property
    def baselines(self) -> BaselineStore:
        return self._store

    # -- intake -------------------------------------------------------------------

    def stratum_of(self, lengths: np.ndarray) -> np.ndarray:
        """Stratum of each event's own history length ``[B]`` (computed once per batch by the caller)."""
        return self.strata.index(lengths)

    def observe_batch(self, version: str, dimension: str, codes: np.ndarray, labels: Sequence[str],
                      values: np.ndarray, users: np.ndarray, strata: np.ndarray, now: float | None = None, *,
                      statistics: Sequence[str], attended: Attended | None = None,
                      served: Attended | None = None) -> dict[str, str]:
        """Fold one cohort dimension of a batch into every cohort it touches.

        ``codes`` [B]: each event's cohort, named by ``labels[code]``; ``values`` [B, S, L]
        in [0, 1], axis 1 named by ``statistics``, axis 2 the layers; ``users`` [B] 64-bit
        user hashes (``users.hash_users``); ``strata`` [B] from ``stratum_of``. ``now``
        (seconds) advances the judge's clock; it matters when ``reference_seconds`` > 0.
        ``attended``: the attention each event put on each item, summed per cohort and
        item into the samples' item sketches; ``served``: the same for the events' served
        recommendations (one column, each event's list one unit), into their served sketches.

        Returns where each cohort's events went: "baseline", "window",
        "baseline+window" (a new version under update, or a batch that completed the
        baseline), or "refused" (series cap reached; counted).
        """
        values = np.asarray(values)
        if values.ndim != 3 or values.shape[1] != len(statistics):
            raise ValueError(f"values must be [B, {len(statistics)}, layers], got shape {values.shape}")
        batch, _, layers = values.shape
        codes = np.asarray(codes)
        if codes.shape != (batch,):
            raise ValueError(f"codes must have shape ({batch},), got {codes.shape}")
        self._tick(now)
        if batch == 0:
            return {}
        c = self.config
        present, cohorts = np.unique(codes, return_inverse=True)
        flat = values.reshape(batch, len(statistics) * layers)  # series = statistic * layers + layer
        cells, signs, groups = self._users(users)
        binned = bin_batch(flat, strata, cohorts, len(present), len(self.strata), c.bins, groups)
        counters = group_counters(cells, signs, cohorts, len(present), SKETCH_WIDTH)
        series = tuple((s, layer) for s in statistics for layer in range(layers))
        shape = (len(series), len(self.strata), c.bins)
        halves = self._halves(groups)  # two random halves of the users (the test cross-fits them)
        items = attended.by_cohort(cohorts, len(present), halves) if attended is not None else [None] * len(present)
        slots = served.by_cohort(cohorts, len(present), halves) if served is not None else [None] * len(present)
        keys = [CohortKey(version, dimension, labels[code]) for code in present.tolist()]
        watch_x, watch = self._watched(keys, cohorts, groups, halves, attended, batch)
        outcomes = {}
        for i, key in enumerate(keys):
            part = _Part(binned.counts[i], binned.by_group[i], counters[i], int(binned.events[i]),
                         int(binned.nan[i]), int(binned.clipped[i]), items[i], watch[i], slots[i])
            outcomes[key.cohort] = self._observe_cohort(key, series, shape, part, cohorts == i, flat, strata, users,
                                                        attended, watch_x, groups, served)
        return outcomes

    def _watched(self, keys: list[CohortKey], cohorts: np.ndarray, groups: np.ndarray, halves: np.ndarray,
                 attended: Attended | None, batch: int) -> tuple[np.ndarray | None, list[np.ndarray | None]]:
        """Each event's mass on the items its cohort's other half put on top in the last judged
        window ``[B, layers]`` (None when no cohort of the batch watches any), and each cohort's
        sums per user group ``[groups, layers + 1]`` (the last column: events)."""
        rows = np.full((len(keys), 2), -1, dtype=np.intp)
        sets: list[list[np.ndarray]] = []
        for i, key in enumerate(keys):
            cohort = self._cohorts.get(key)
            if attended is None or cohort is None or not cohort.watch:
                continue
            layers = range(attended.mass.shape[1])
            empty = np.zeros(0, dtype=np.int64)
            for half in (0, 1):
                rows[i, half] = len(sets)
                sets.append([cohort.watch[layer][half] if layer in cohort.watch else empty for layer in layers])
        if not sets or attended is None:
            return None, [None] * len(keys)
        x = attended.on_watched(rows[cohorts, halves], sets, batch)
        sums = _group_sums(x, groups, cohorts, len(keys))
        return x, [sums[i] if rows[i, 0] >= 0 else None for i in range(len(keys))]

    def _halves(self, groups: np.ndarray) -> np.ndarray:
        """The parity of each event's user group, one array per batch (every dimension reuses it)."""
        cached = self._last_halves
        if cached is None or cached[0] is not groups:
            cached = self._last_halves = (groups, groups & 1)
        return cached[1]

    def _users(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sketch cells and random groups of a batch's users, reused while the caller passes the
        same (unchanged) array: the fold passes one array to every dimension of a batch."""
        cached = self._last_users
        if cached is not None and cached[0] is users:
            return cached[1], cached[2], cached[3]
        cells, signs = sketch_cells(users, SKETCH_WIDTH, SKETCH_DEPTH)
        groups = user_groups(users, USER_GROUPS)
        self._last_users = (users, cells, signs, groups)
        return cells, signs, groups

    def _cohort_for(self, key: CohortKey, series: tuple[tuple[str, int], ...], shape: tuple[int, int, int],
                    events: int) -> _Cohort | None:
        """The cohort's state, created on first sight; None (counted) when its series would pass the cap."""
        cohort = self._cohorts.get(key)
        if cohort is None:
            if self._series_count + len(series) > self.config.max_keys:
                self.counts["refused_key_cap"] += events * len(series)
                return None
            cohort = self._cohorts[key] = _Cohort(series, shape)
            self._series_count += len(series)
        if cohort.series != series:
            raise ValueError(f"{key}: series {series} differ from the cohort's {cohort.series}")
        return cohort

    def _observe_cohort(self, key: CohortKey, series: tuple[tuple[str, int], ...], shape: tuple[int, int, int],
                        part: _Part, members: np.ndarray, flat: np.ndarray, strata: np.ndarray,
                        users: np.ndarray, attended: Attended | None = None, watch_x: np.ndarray | None = None,
                        groups: np.ndarray | None = None, served: Attended | None = None) -> str:
        """One cohort's share of a batch: to its window, its baseline, or split between them."""
        events = part.events
        cohort = self._cohort_for(key, series, shape, events)
        if cohort is None:
            return "refused"
        status = self._store.status(key)
        if status == "absent":
            self._store.start(key, shape, self._clock)
        elif status in ("frozen", "pinned"):
            return self._to_window(cohort, part)
        baseline = self._store.get(key)
        assert baseline is not None
        taken = self._store.take(key, events, self._clock)
        if taken < events:
            # The batch completes the reference part way: its first `taken` events end it.
            rows = np.flatnonzero(members)
            first, rest = rows[:taken], rows[taken:]
            halves = user_groups(users, USER_GROUPS) & 1
            rest_part = self._part(shape, flat[rest], strata[rest], users[rest], attended, rest, halves, served)
            if part.watch is not None and watch_x is not None and groups is not None:
                rest_part = rest_part._replace(watch=_group_sums(watch_x[rest], groups[rest],
                                                                 np.zeros(rest.size, dtype=np.intp), 1)[0])
            self._part(shape, flat[first], strata[first], users[first], attended, first, halves,
                       served).add_to(baseline.sample)
            if self._store.settle(key, self._clock):
                self.counts["baseline_events"] += taken
                cohort.reset_window()  # the window restarts with the first events after the reference
                return self._to_window(cohort, rest_part, "baseline+window")
            # Heavy users among the first events left the effective users short: keep collecting.
            rest_part.add_to(baseline.sample)
        else:
            part.add_to(baseline.sample)
        self.counts["baseline_events"] += events
        if self._store.settle(key, self._clock):
            cohort.reset_window()
            return "baseline"
        if key.model_version in self._updates:  # judged against the previous version meanwhile
            return self._to_window(cohort, part, "baseline+window")
        return "baseline"

    def observe_sample(self, key: CohortKey, series: tuple[tuple[str, int], ...], sample: Sample,
                       now: float | None = None) -> str:
        """Fold one cohort's already binned events (a merged partial window of the scale-out
        judge, ``monitor.drift.partial``) as one unit: to its window, or to its collecting
        baseline. Unlike ``observe_batch`` a sample is never split where it completes a
        baseline: the baseline takes it whole and the window restarts after it, so the
        outcome depends only on the sequence of samples. Returns where it went, as
        ``observe_batch`` does ("refused" at the series cap, counted)."""
        self._tick(now)
        events = sample.events
        if events == 0:
            return "empty"
        shape = (len(series), len(self.strata), self.config.bins)
        if sample.shape != shape:
            raise ValueError(f"{key}: a sample of shape {sample.shape}, the judge needs {shape}")
        cohort = self._cohort_for(key, series, shape, events)
        if cohort is None:
            return "refused"
        status = self._store.status(key)
        if status in ("frozen", "pinned"):
            cohort.window.merge(sample)
            self.counts["window_events"] += events
            return "window"
        if status == "absent":
            self._store.start(key, shape, self._clock)
        baseline = self._store.get(key)
        assert baseline is not None
        self._store.take(key, events, self._clock)  # starts the baseline's clock; the sample goes in whole
        baseline.sample.merge(sample)
        self.counts["baseline_events"] += events
        if self._store.settle(key, self._clock):
            cohort.window.reset()
            return "baseline"
        if key.model_version in self._updates:  # judged against the previous version meanwhile
            cohort.window.merge(sample)
            self.counts["window_events"] += events
            return "baseline+window"
        return "baseline"

    @staticmethod
    def _part(shape: tuple[int, int, int], flat: np.ndarray, strata: np.ndarray, users: np.ndarray,
              attended: Attended | None = None, rows: np.ndarray | None = None,
              halves: np.ndarray | None = None, served: Attended | None = None) -> _Part:
        """A few events of one cohort, binned (a batch split where it completes a baseline):
        ``rows``, their places in the batch, select their ``attended`` items; ``halves`` [B]
        the batch's users' halves."""
        one = np.zeros(len(flat), dtype=np.intp)
        binned = bin_batch(flat, strata, one, 1, shape[1], shape[2], user_groups(users, USER_GROUPS))
        cells, signs = sketch_cells(users, SKETCH_WIDTH, SKETCH_DEPTH)
        counters = group_counters(cells, signs, one, 1, SKETCH_WIDTH)
        items = slots = None
        if rows is not None and halves is not None:
            members = np.zeros(len(halves), dtype=bool)
            members[rows] = True
            items = attended.of_events(members, halves) if attended is not None else None
            slots = served.of_events(members, halves) if served is not None else None
        return _Part(binned.counts[0], binned.by_group[0], counters[0], int(binned.events[0]), int(binned.nan[0]),
                     int(binned.clipped[0]), items, served=slots)

    def _to_window(self, cohort: _Cohort, part: _Part, outcome: str = "window") -> str:
        part.add_to(cohort.window)
        if part.watch is not None:
            cohort.watch_mass = part.watch.copy() if cohort.watch_mass is None else cohort.watch_mass + part.watch
        self.counts["window_events"] += part.events
        return outcome

    def _tick(self, now: float | None) -> None:
        if now is not None:
            self._clock = float(now) if self._clock is None else max(self._clock, float(now))

    # -- versions -----------------------------------------------------------------

    def pin(self, version: str, to_version: str) -> None:
        """Judge ``version`` against ``to_version``'s baselines (kind within_version)."""
        self._store.pin(version, to_version)

    def unpin(self, version: str) -> None:
        self._store.unpin(version)

    def start_update(self, new_version: str, previous_version: str, at: float) -> bool:
        """Judge ``new_version`` against ``previous_version``'s recent traffic until its own freeze.

        The reference of each (dimension, cohort) is frozen now: the previous version's
        recent judged windows and its open window, if they hold a reference's worth;
        else its baseline (collecting or frozen), if that does; else none (the new
        version's windows there count as no_reference). Idempotent for the same pair (a
        restarted daemon may call it again without resetting the verdicts); a different
        previous version starts a fresh update. Returns True when a new update started.
        Cohorts whose own baseline is already frozen, or whose version is pinned, are not
        affected: they keep their within_version reference.
        """
        if new_version == previous_version:
            raise ValueError("an update needs two different versions")
        current = self._updates.get(new_version)
        if current is not None and current.previous_version == previous_version:
            return False
        references = {}
        for key, cohort in self._cohorts.items():
            if key.model_version == previous_version:
                reference = self._recent_reference(key, cohort)
                if reference is not None:
                    references[(key.dimension, key.cohort)] = reference
        self._updates[new_version] = Update(previous_version, float(at), references)
        for key, cohort in self._cohorts.items():
            if key.model_version == new_version:
                cohort.update = [None] * len(cohort.series)
        return True

    def _recent_reference(self, key: CohortKey, cohort: _Cohort) -> Reference | None:
        """The previous version's latest reference's worth of traffic in one cohort (see start_update)."""
        rule = self.config.reference_rule
        recent = cohort.recent.snapshot()
        recent.merge(cohort.window)
        if rule.holds_enough(recent):
            self.counts["update_references_recent"] += 1
            return Reference(recent, cohort.series, key.model_version)
        own = self._store.get(key)
        if own is not None and rule.holds_enough(own.sample):
            self.counts["update_references_baseline"] += 1
            return Reference(own.sample.copy(), cohort.series, key.model_version)
        pinned = self._store.reference(key)
        resolved = self._store.resolve(key)
        if pinned is not None and resolved in self._cohorts:
            self.counts["update_references_baseline"] += 1
            return Reference(pinned.copy(), self._cohorts[resolved].series, resolved.model_version)
        self.counts["update_references_missing"] += 1
        return None

    @property
    def updates(self) -> dict[str, Update]:
        """new_version -> Update(previous_version, at, references)."""
        return dict(self._updates)

    def forget(self, version: str) -> None:
        """Drop everything about a retired version (windows, verdicts, baselines, update)."""
        for key in [k for k in self._cohorts if k.model_version == version]:
            self._series_count -= len(self._cohorts.pop(key).series)
        self._store.forget(version)
        self._updates.pop(version, None)

    def reference_of(self, version: str, dimension: str, cohort: str) -> tuple[Reference | None, str]:
        """(the reference the cohort's window is judged against now, or None; its kind)."""
        return self._reference(CohortKey(version, dimension, cohort))

    def _reference(self, key: CohortKey) -> tuple[Reference | None, str]:
        """(the reference a cohort's window is judged against now, or None; its kind)."""
        if self._store.status(key) in ("frozen", "pinned"):
            resolved = self._store.resolve(key)
            sample = self._store.reference(key)
            owner = self._cohorts.get(resolved)
            if sample is None or owner is None:
                return None, WITHIN_VERSION
            return Reference(sample, owner.series, resolved.model_version), WITHIN_VERSION
        update = self._updates.get(key.model_version)
        if update is not None:
            return update.references.get((key.dimension, key.cohort)), MODEL_UPDATE
        return None, WITHIN_VERSION

    # -- judging ------------------------------------------------------------------

    def judge(self, now: float) -> JudgeReport:
        """Judge every full window against its reference, update verdicts, empty those windows."""
        c = self.config
        rule = c.reference_rule
        self._tick(now)
        clock = self._clock if self._clock is not None else now
        self._round += 1
        for key in self._store.freeze_due(clock):
            if key in self._cohorts:
                self._cohorts[key].reset_window()

        pending: list[_Pending] = []
        insufficient = no_reference = 0
        for key, cohort in self._cohorts.items():
            window = cohort.window
            full = window.events >= c.min_samples and window.effective_users() >= c.min_users
            reference, kind = self._reference(key)
            if reference is None:
                if full:
                    no_reference += len(cohort.series)
                    cohort.recent.add(window, clock, rule)
                    cohort.reset_window()
                continue
            if not full:
                insufficient += len(cohort.series)
                continue
            rows, ref_rows = self._matching_rows(cohort.series, reference.series)
            no_reference += len(cohort.series) - len(rows)
            pending.append(_Pending(key, cohort, rows, window.counts[rows], reference.sample.counts[ref_rows],
                                    window.design_effects()[rows], reference.sample.design_effects()[ref_rows],
                                    kind, reference.version, window, reference.sample))

        results, items, unmatched = self._judge_pending(pending)
        for p in pending:
            p.cohort.recent.add(p.cohort.window, clock, rule)
            p.cohort.reset_window()
        self.counts["unmatched_events"] += unmatched
        cohorts = self._roll_up()
        drifting = sum(1 for key, cohort in self._cohorts.items() for h in self._active_trackers(key, cohort)
                       if h.drifting)
        return JudgeReport(
            now=float(now),
            round=self._round,
            results=results,
            cohorts=cohorts,
            judged=len(results),
            flagged=sum(r.flagged for r in results),
            insufficient=insufficient,
            no_reference=no_reference,
            collecting=self._store.collecting(),
            drifting=drifting,
            unmatched=unmatched,
            items=items,
        )

    @staticmethod
    def _matching_rows(series: tuple[tuple[str, int], ...],
                       reference: tuple[tuple[str, int], ...]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``series`` the reference holds, and the reference's rows for them."""
        if series == reference:
            rows = np.arange(len(series))
            return rows, rows
        where = {s: i for i, s in enumerate(reference)}
        pairs = [(i, where[s]) for i, s in enumerate(series) if s in where]
        return np.array([i for i, _ in pairs], dtype=np.intp), np.array([j for _, j in pairs], dtype=np.intp)

    def _judge_pending(self, pending: list[_Pending]) -> tuple[tuple[KeyResult, ...], tuple[ItemResult, ...], int]:
        """Every full window of the round at once: post-stratify, test, correct, flag, update verdicts."""
        c = self.config
        pending = [p for p in pending if len(p.rows)]
        if not pending:
            return (), (), 0
        window = np.concatenate([p.window for p in pending])  # [K, strata, bins]
        reference = np.concatenate([p.reference for p in pending])
        sizes = [len(p.rows) for p in pending]
        window_design = np.concatenate([p.window_design for p in pending])  # [K]
        reference_design = np.concatenate([p.reference_design for p in pending])
        post = poststratify(window, reference)
        n = post.window.sum(axis=1)  # [K] window events in matched strata
        judged = (n > 0) & (post.reference_size > 0)
        n_eff = n / window_design
        m_eff = post.reference_size / reference_design
        a = np.where(judged[:, None], post.window, 1)  # placeholder rows are dropped below
        b = np.where(judged[:, None], post.reference, 1.0)
        raw = js_distance(a, b)
        score = js_distance(a, b, bias_corrected=True, n=n_eff, m=m_eff) if c.bias_correction else raw
        psis = psi(a, b, c.psi_epsilon)
        # First-order Rao-Scott: each side's counts over its design effect, the reference at the window's mix.
        _, _, p = chi2_homogeneity(a / window_design[:, None], b * np.where(judged, m_eff, 1.0)[:, None],
                                   c.min_expected)
        p = np.where(judged, p, 1.0)
        item_rows, comparison = self._compare_items(pending)
        served_rows, served, ratios = self._compare_served(pending)
        p_adj = np.ones_like(p)
        # One BH family: the statistics' series, the item-mass series and the served series of the round.
        adjusted = bh_adjust(np.concatenate([p[judged], comparison.p_value, served.p_value]))
        n_judged, n_items = int(judged.sum()), len(item_rows)
        p_adj[judged] = adjusted[:n_judged]
        item_p_adj = adjusted[n_judged:n_judged + n_items]
        served_p_adj = adjusted[n_judged + n_items:]
        kinds = np.repeat([p_.kind for p_ in pending], sizes)
        floors = np.array([self._floor(kind) for kind in kinds])
        flags = judged & (p_adj <= c.alpha) & (score >= floors)
        totals = window.sum(axis=(1, 2))  # [K] the window's values of each series

        results = []
        unmatched_events = 0
        k = 0
        for p_ in pending:
            cohort = p_.cohort
            update_at = self._updates[p_.key.model_version].at if p_.kind == MODEL_UPDATE else None
            cohort_unmatched = 0
            for row in p_.rows.tolist():
                if not judged[k]:
                    cohort_unmatched = max(cohort_unmatched, int(post.unmatched[k]))
                    k += 1
                    continue
                trackers = cohort.update if p_.kind == MODEL_UPDATE else cohort.within
                if trackers[row] is None:
                    trackers[row] = Hysteresis(c.raise_after, c.clear_after)
                tracker = trackers[row]
                assert tracker is not None
                tracker.update(bool(flags[k]))
                statistic, layer = cohort.series[row]
                cohort_unmatched = max(cohort_unmatched, int(post.unmatched[k]))
                results.append(KeyResult(
                    key=p_.key.series(statistic, layer),
                    kind=p_.kind,
                    reference_version=p_.reference_version,
                    score=float(score[k]),
                    js_raw=float(raw[k]),
                    psi=float(psis[k]),
                    p_value=float(p[k]),
                    p_adjusted=float(p_adj[k]),
                    threshold=float(floors[k]),
                    samples=int(totals[k]),
                    reference_samples=int(post.reference_events[k]),
                    effective_samples=float(n_eff[k]),
                    reference_effective=float(m_eff[k]),
                    unmatched=int(post.unmatched[k]),
                    flagged=bool(flags[k]),
                    drifting=tracker.drifting,
                    consecutive_flagged=tracker.consecutive_flagged,
                    consecutive_clear=tracker.consecutive_clear,
                    update_at=update_at,
                ))
                k += 1
            unmatched_events += cohort_unmatched
        items = self._item_results(item_rows, comparison, item_p_adj)
        return tuple(results), items + self._served_results(served_rows, served, served_p_adj, ratios), unmatched_events

    def _compare_items(self, pending: list[_Pending]) -> tuple[list[tuple[_Pending, int]], Comparison]:
        """The attention mass per item of every pending window whose reference has it, per layer."""
        rows: list[tuple[_Pending, int]] = []
        windows: list[Side] = []
        references: list[Side] = []
        design: list[float] = []
        reference_design: list[float] = []
        watch_rows: list[int] = []  # rows the watched-items test judges too, and its inputs
        watch_in: list[tuple[np.ndarray, np.ndarray, np.ndarray, float, float]] = []
        for p_ in pending:
            window, reference = p_.window_sample, p_.reference_sample
            if window is None or reference is None or window.items is None or reference.items is None:
                continue
            w_whole, *w_halves = split_halves(window.items, _half_events(window))
            r_whole, *r_halves = split_halves(reference.items, _half_events(reference))
            cohort = p_.cohort
            mass = cohort.watch_mass
            # Watched only if every event of the window was (sets of the last judged window).
            complete = mass is not None and int(round(mass[:, -1].sum())) == window.events
            for layer in range(min(window.items.layers, reference.items.layers)):
                if complete and layer in cohort.watch and mass is not None:
                    r_total = max(r_whole.mass_total(layer), 1e-12)
                    shares = np.array([r_whole.estimate(ids, layer).sum() / r_total for ids in cohort.watch[layer]])
                    watch_rows.append(len(rows))
                    watch_in.append((mass[:, layer], mass[:, -1], shares, r_whole.mass_total(layer),
                                     float(p_.reference_design.max())))
                rows.append((p_, layer))
                windows.append(Side(w_whole, (w_halves[0], w_halves[1]), layer))
                references.append(Side(r_whole, (r_halves[0], r_halves[1]), layer))
                design.append(float(p_.window_design.max()))  # computed for the statistics already
                reference_design.append(float(p_.reference_design.max()))
        comparison = compare(windows, references, np.array(design), np.array(reference_design),
                             top_k=self.config.item_top_k, min_expected=self.config.min_expected)
        if watch_in:
            test = watched(np.stack([w[0] for w in watch_in]), np.stack([w[1] for w in watch_in]),
                           np.stack([w[2] for w in watch_in]), np.array([w[3] for w in watch_in]),
                           np.array([w[4] for w in watch_in]))
            comparison = combine(comparison, test, np.array(watch_rows, dtype=np.intp))
        for k, (p_, layer) in enumerate(rows):  # what the cohort's next window watches
            p_.cohort.watch[layer] = comparison.watch_next[k]
        return rows, comparison

    def _compare_served(self, pending: list[_Pending]) -> tuple[list[_Pending], Comparison, np.ndarray]:
        """The served recommendations of every pending window whose reference has them."""
        rows: list[_Pending] = []
        windows: list[Side] = []
        references: list[Side] = []
        design: list[float] = []
        reference_design: list[float] = []
        for p_ in pending:
            window, reference = p_.window_sample, p_.reference_sample
            if window is None or reference is None or window.served is None or reference.served is None:
                continue
            w_whole, *w_halves = split_halves(window.served, _half_events(window))
            r_whole, *r_halves = split_halves(reference.served, _half_events(reference))
            rows.append(p_)
            windows.append(Side(w_whole, (w_halves[0], w_halves[1]), 0))
            references.append(Side(r_whole, (r_halves[0], r_halves[1]), 0))
            design.append(float(p_.window_design.max()))
            reference_design.append(float(p_.reference_design.max()))
        served = compare_served(windows, references, np.array(design), np.array(reference_design),
                                top_k=self.config.item_top_k)
        return rows, served.test, served.ratio

    def _served_results(self, rows: list[_Pending], comparison: Comparison, p_adj: np.ndarray,
                        ratios: np.ndarray) -> tuple[ItemResult, ...]:
        """Flags and verdicts of the round's served-recommendation series: significant, and the
        window's lists at least ``served_min_ratio`` times as concentrated as the reference's."""
        c = self.config
        flags = (p_adj <= c.alpha) & (ratios >= c.served_min_ratio) & comparison.narrowed
        return self._verdicts([(p_, SERVED_LAYER) for p_ in rows], comparison, p_adj, flags, c.served_min_ratio,
                              ratios)

    def _item_results(self, rows: list[tuple[_Pending, int]], comparison: Comparison,
                      p_adj: np.ndarray) -> tuple[ItemResult, ...]:
        """Flags and verdicts of the round's item-mass series (module docstring)."""
        c = self.config
        flags = (p_adj <= c.alpha) & (comparison.score >= c.item_min_effect) & comparison.narrowed
        return self._verdicts(rows, comparison, p_adj, flags, c.item_min_effect)

    def _verdicts(self, rows: list[tuple[_Pending, int]], comparison: Comparison, p_adj: np.ndarray,
                  flags: np.ndarray, threshold: float, ratios: np.ndarray | None = None) -> tuple[ItemResult, ...]:
        """Each (window, layer) row's flag through its hysteresis, as an ``ItemResult``."""
        c = self.config
        out = []
        for k, (p_, layer) in enumerate(rows):
            trackers = p_.cohort.items_update if p_.kind == MODEL_UPDATE else p_.cohort.items_within
            tracker = trackers.setdefault(layer, Hysteresis(c.raise_after, c.clear_after))
            tracker.update(bool(flags[k]))
            out.append(ItemResult(
                key=p_.key, layer=layer, kind=p_.kind, reference_version=p_.reference_version,
                score=float(comparison.score[k]), js_raw=float(comparison.js_raw[k]),
                p_value=float(comparison.p_value[k]), p_adjusted=float(p_adj[k]), threshold=threshold,
                flagged=bool(flags[k]), drifting=tracker.drifting, top_share=float(comparison.top_share[k]),
                reference_top_share=float(comparison.reference_top_share[k]),
                effective_items=float(comparison.effective_items[k]),
                reference_effective_items=float(comparison.reference_effective_items[k]),
                overlap=float(comparison.overlap[k]), samples=int(round(comparison.window_events[k])),
                top=tuple(comparison.top[k]),
                update_at=self._updates[p_.key.model_version].at if p_.kind == MODEL_UPDATE else None,
                ratio=float(ratios[k]) if ratios is not None else float("nan"),
            ))
        return tuple(out)

    def _floor(self, kind: str) -> float:
        """The effect floor of a window of this kind."""
        c = self.config
        return c.update_min_effect if kind == MODEL_UPDATE and c.update_min_effect is not None else c.min_effect

    def _update_active(self, key: CohortKey) -> bool:
        return key.model_version in self._updates and self._store.status(key) == "collecting"

    def _active_trackers(self, key: CohortKey, cohort: _Cohort) -> list[Hysteresis]:
        trackers = [h for h in cohort.within if h is not None]
        if self._update_active(key):
            trackers += [h for h in cohort.update if h is not None]
        return trackers

    def _roll_up(self) -> tuple[CohortVerdict, ...]:
        out = []
        for key, cohort in self._cohorts.items():
            for kind, trackers in ((WITHIN_VERSION, cohort.within), (MODEL_UPDATE, cohort.update)):
                members = [(s, h) for s, h in zip(cohort.series, trackers) if h is not None]
                if not members:
                    continue
                drifting_series = tuple(sorted(s for s, h in members if h.drifting))
                if kind == MODEL_UPDATE:
                    update = self._updates.get(key.model_version)
                    reference = update.previous_version if update else ""
                    update_at = update.at if update else None
                    active = self._update_active(key)
                else:
                    reference = self._store.resolve(key).model_version
                    update_at = None
                    active = True
                out.append(CohortVerdict(
                    model_version=key.model_version, dimension=key.dimension, cohort=key.cohort, kind=kind,
                    drifting=bool(drifting_series), drifting_series=drifting_series, series=len(members),
                    reference_version=reference, update_at=update_at, active=active,
                ))
        return tuple(out)

    # -- persistence --------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: config, clock, windows, recent traffic, verdicts, baselines, updates."""
        def trackers(hs: list[Hysteresis | None]) -> list[dict | None]:
            return [h.to_state() if h else None for h in hs]

        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "clock": self._clock,
            "round": self._round,
            "counts": dict(self.counts),
            "baselines": self._store.to_state(),
            "cohorts": [
                [key.to_state(), {"series": [list(s) for s in cohort.series], "window": cohort.window.to_state(),
                                  "recent": cohort.recent.to_state(), "within": trackers(cohort.within),
                                  "update": trackers(cohort.update),
                                  "items_within": {str(k): h.to_state() for k, h in cohort.items_within.items()},
                                  "items_update": {str(k): h.to_state() for k, h in cohort.items_update.items()},
                                  "watch": {str(k): [a.tolist(), b.tolist()] for k, (a, b) in cohort.watch.items()},
                                  "watch_mass": None if cohort.watch_mass is None else cohort.watch_mass.tolist()}]
                for key, cohort in self._cohorts.items()
            ],
            "updates": {
                v: {"previous": u.previous_version, "at": u.at,
                    "references": [[d, c, r.to_state()] for (d, c), r in u.references.items()]}
                for v, u in self._updates.items()
            },
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: JudgeConfig | None = None) -> Judge:
        """Resume from ``to_state()``; a given ``config`` wins over the saved one (bins and
        strata must match). A state of another format raises ``StateFormatError``."""
        if state.get("format") != STATE_FORMAT:
            raise StateFormatError(f"unknown judge state format {state.get('format')!r} (this code reads "
                                   f"{STATE_FORMAT})")
        saved = JudgeConfig.from_mapping(state["config"])
        config = config or saved
        if config.bins != saved.bins:
            raise ValueError(f"saved state has {saved.bins} bins, config has {config.bins}")
        if config.strata_edges != saved.strata_edges:
            raise ValueError(f"saved state has strata edges {saved.strata_edges}, config has {config.strata_edges}")
        judge = cls(config)
        judge._store = BaselineStore.from_state(state["baselines"], config.reference_rule)
        for key in judge._store:
            baseline = judge._store.get(key)
            if baseline is not None and baseline.sample.counts.shape[1:] != (len(judge.strata), config.bins):
                raise ValueError(f"the saved baseline of {key} has shape {baseline.sample.counts.shape}, "
                                 f"the judge needs [series, {len(judge.strata)}, {config.bins}]")
        judge._clock = state["clock"]
        judge._round = int(state["round"])
        judge.counts.update({k: int(v) for k, v in state["counts"].items()})
        for key_state, s in state["cohorts"]:
            series = tuple((str(name), int(layer)) for name, layer in s["series"])
            cohort = _Cohort(series, (len(series), len(judge.strata), config.bins))
            cohort.window = Sample.from_state(s["window"])
            cohort.recent = RecentTraffic.from_state(s["recent"])
            shape = (len(series), len(judge.strata), config.bins)
            if cohort.window.counts.shape != shape:  # would fail at the first judgement, on every restart
                raise ValueError(f"a saved window of {key_state} has shape {cohort.window.counts.shape}, "
                                 f"the judge needs {shape}")
            cohort.within = [None if h is None else Hysteresis.from_state(h, config.raise_after, config.clear_after)
                             for h in s["within"]]
            cohort.update = [None if h is None else Hysteresis.from_state(h, config.raise_after, config.clear_after)
                             for h in s["update"]]
            for name in ("items_within", "items_update"):  # absent in states from before item mass
                setattr(cohort, name, {int(k): Hysteresis.from_state(h, config.raise_after, config.clear_after)
                                       for k, h in s.get(name, {}).items()})
            # Absent in states from before the watched-items test: the next judged window sets them.
            cohort.watch = {int(k): (np.array(a, dtype=np.int64), np.array(b, dtype=np.int64))
                            for k, (a, b) in s.get("watch", {}).items()}
            cohort.watch_mass = None if s.get("watch_mass") is None else np.array(s["watch_mass"], dtype=np.float64)
            judge._cohorts[CohortKey.from_state(key_state)] = cohort
            judge._series_count += len(series)
        judge._updates = {
            v: Update(str(u["previous"]), float(u["at"]),
                      {(str(d), str(c)): Reference.from_state(r) for d, c, r in u["references"]})
            for v, u in state["updates"].items()
        }
        return judge

    def __len__(self) -> int:
        """Series (statistics x layers of every cohort): what ``max_keys`` caps."""
        return self._series_count
