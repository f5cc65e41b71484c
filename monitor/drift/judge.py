"""The drift judge: current windows against baselines, one round at a time.

Per series (model_version, dimension, cohort, statistic, layer) the judge
keeps a tumbling window (a ``Histogram``) and owns the baselines (a
``BaselineStore``). ``observe`` folds a batch of per-event values in: while
the series' own baseline collects, the values build the baseline; after it
freezes they fill the window. ``judge(now)``, called every
``judge_interval`` seconds by the daemon, judges every window holding at
least ``min_samples`` events and then empties it; smaller windows are
"insufficient" and keep filling, with no change to any verdict.

A judged window is *flagged* when both hold:

- its chi-square homogeneity p-value, Benjamini-Hochberg adjusted across
  every series judged in the round (cohorts x statistics x layers), is
  <= ``alpha``: the difference is real, with false flags controlled;
- its effect size, the (bias-corrected) Jensen-Shannon distance to the
  baseline, is >= ``min_effect``: the difference is big enough to matter.
  A p-value alone depends on sample size: with big windows every harmless
  wiggle becomes significant. The floor makes the verdict mean "moved by at
  least this much", whatever the traffic.

Hysteresis turns flags into the ``drifting`` verdict: ``raise_after``
flagged windows in a row raise it, ``clear_after`` unflagged ones clear it.
A cohort (model_version, dimension, cohort) drifts if any of its series does.

Model updates. ``start_update(new, previous, at)`` makes the new version's
windows count against the *previous* version's frozen baseline for the same
(dimension, cohort, statistic, layer) -- kind "model_update" -- while the new
version's own baseline collects (its events feed both). Once a series' own
baseline freezes its window restarts and it is judged against that
(kind "within_version"); the model_update verdict keeps its last value and
is exported with the update time. Comparing versions is sound only because
the statistics are head-averaged: a retrain permutes heads, and any
symmetric function over heads is invariant to that permutation, so the judge
never needs to know about heads. Feed it per-head series only for
within-version monitoring.

Default thresholds (reasoning in docs/drift.md):

- ``min_effect`` = 0.1 JS distance. For a smooth statistic this is a mean
  shift of about a quarter of a standard deviation (Beta(2,5) -> Beta(2.4,5)
  is 0.108), PSI about 0.06 (PSI ~ 5.5 * JS^2 for small shifts): under the
  usual "moderate change" PSI of 0.1, i.e. an early warning, far above noise.
- ``alpha`` = 0.01 FDR: with 2,000 series and no drift, any flag at all in a
  round has chance <= 1 %; two in a row on the same series (raise_after=2)
  is far rarer still.
- ``min_samples`` = 200: with 20 bins and a 2,000-event baseline, chi-square
  expected counts reach 5 in bins holding >= 2.5 % of the mass, and a large
  shift (JS >= 0.3) is found in one window; small shifts need larger windows,
  which a longer ``judge_interval`` gives.

>>> rng = np.random.default_rng(0)
>>> judge = Judge(JudgeConfig(reference_events=2000, min_samples=200))
>>> key = SeriesKey("v1", "platform", "ios", "entropy", 0)
>>> judge.observe(key, rng.beta(2, 5, 2000), now=0.0)
'baseline'
>>> for t in range(1, 4):
...     _ = judge.observe(key, rng.beta(5, 2, 200), now=float(t))
...     report = judge.judge(now=float(t))
...     print(t, report.results[0].flagged, report.results[0].drifting)
1 True False
2 True True
3 True True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from monitor.drift.baseline import BaselineStore, SeriesKey
from monitor.drift.divergence import chi2_homogeneity, js_distance, psi
from monitor.drift.histogram import Histogram
from monitor.drift.verdict import Hysteresis, bh_adjust

WITHIN_VERSION = "within_version"
MODEL_UPDATE = "model_update"
STATE_FORMAT = 1


@dataclass(frozen=True)
class JudgeConfig:
    """Judge settings; every field has a default, unknown keys are rejected by ``from_mapping``."""

    bins: int = 20  # equal-width bins over [0, 1] for windows and baselines
    reference_events: int = 2000  # events before a baseline may freeze
    reference_seconds: float = 0.0  # and seconds of collecting (0: count only)
    min_samples: int = 200  # a window is judged once it holds this many events
    alpha: float = 0.01  # Benjamini-Hochberg FDR level per round
    min_effect: float = 0.1  # JS distance floor for a flag (sample-size independent)
    # Floor for model_update windows (None: min_effect). Real retrains of one recipe differ by up to
    # ~0.5 (docs/drift.md, "Calibration on real retrains"); 0.65 is the calibrated value.
    update_min_effect: float | None = 0.65
    raise_after: int = 2  # consecutive flagged windows that raise drift
    clear_after: int = 3  # consecutive unflagged windows that clear it
    max_keys: int = 20_000  # series cap (windows and baselines); beyond it: refused, counted
    bias_correction: bool = True  # subtract JS sampling noise before the floor (see divergence.py)
    psi_epsilon: float = 1e-4  # floor for empty bins in PSI (reported only)
    min_expected: float = 5.0  # chi-square: merge bins until expected counts reach this

    def __post_init__(self) -> None:
        Histogram(self.bins)  # validates bins
        checks = [
            (self.reference_events >= 1, "reference_events must be >= 1"),
            (self.reference_seconds >= 0, "reference_seconds must be >= 0"),
            (self.min_samples >= 1, "min_samples must be >= 1"),
            (0.0 < self.alpha < 1.0, "alpha must be in (0, 1)"),
            (0.0 <= self.min_effect <= 1.0, "min_effect must be in [0, 1]"),
            (self.update_min_effect is None or 0.0 <= self.update_min_effect <= 1.0,
             "update_min_effect must be None or in [0, 1]"),
            (self.raise_after >= 1, "raise_after must be >= 1"),
            (self.clear_after >= 1, "clear_after must be >= 1"),
            (self.max_keys >= 1, "max_keys must be >= 1"),
            (0.0 < self.psi_epsilon < 1.0, "psi_epsilon must be in (0, 1)"),
            (self.min_expected > 0, "min_expected must be > 0"),
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


@dataclass(frozen=True, slots=True)
class KeyResult:
    """One series judged in one round: what a drift gauge exports."""

    key: SeriesKey
    kind: str  # "within_version" or "model_update"
    reference_version: str  # whose baseline it was judged against
    score: float  # JS distance (bias-corrected if configured): the effect size
    js_raw: float  # plug-in JS distance, for comparison
    psi: float
    p_value: float
    p_adjusted: float  # Benjamini-Hochberg across the round
    threshold: float  # the effect floor applied: min_effect, or update_min_effect for model_update
    samples: int  # events in the window
    reference_samples: int
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
    insufficient: int  # windows with a reference but fewer than min_samples events
    no_reference: int  # full windows with no frozen baseline to judge against (emptied)
    collecting: int  # baselines still collecting
    drifting: int  # series drifting now (any kind still active)


@dataclass(frozen=True, slots=True)
class Update:
    previous_version: str
    at: float


class _Series:
    """Per-series state: the window and one hysteresis per kind."""

    __slots__ = ("window", "within", "update")

    def __init__(self, bins: int) -> None:
        self.window = Histogram(bins)
        self.within: Hysteresis | None = None
        self.update: Hysteresis | None = None


@dataclass
class _Pending:
    keys: list[SeriesKey] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    refs: list[Histogram] = field(default_factory=list)
    ref_versions: list[str] = field(default_factory=list)


class Judge:
    """Windows, baselines and verdicts for many series; ``observe`` then ``judge(now)``."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        self.config = config or JudgeConfig()
        c = self.config
        self._store = BaselineStore(c.reference_events, c.reference_seconds, c.bins, c.max_keys)
        self._series: dict[SeriesKey, _Series] = {}
        self._updates: dict[str, Update] = {}
        self._clock: float | None = None
        self._round = 0
        self.counts: dict[str, int] = {"baseline_events": 0, "window_events": 0, "refused_key_cap": 0}

    @property
    def baselines(self) -> BaselineStore:
        return self._store

    # -- intake -------------------------------------------------------------------

    def observe(self, key: SeriesKey, values: np.ndarray, now: float | None = None) -> str:
        """Fold one batch of per-event values (in [0, 1]) into the series.

        Returns where they went: "baseline", "window", "baseline+window"
        (a new version under update, or a batch that completed the
        baseline), or "refused" (series cap reached; counted). ``now``
        (seconds) advances the judge's clock; it matters only when
        ``reference_seconds`` > 0.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        self._tick(now)
        series = self._series.get(key)
        if series is None:
            if len(self._series) >= self.config.max_keys:
                self.counts["refused_key_cap"] += int(values.size)
                return "refused"
            series = self._series[key] = _Series(self.config.bins)
        intake = self._store.observe(key, values, self._clock)
        if intake.outcome == "refused":
            if series.window.total == 0 and series.within is None and series.update is None:
                del self._series[key]
            self.counts["refused_key_cap"] += int(values.size)
            return "refused"
        if intake.outcome in ("frozen", "pinned"):
            return self._to_window(series, values, "window")
        self.counts["baseline_events"] += intake.taken
        if intake.froze:
            # The window restarts with the first events after the reference.
            series.window.reset()
            rest = values[intake.taken :]
            return self._to_window(series, rest, "baseline+window") if rest.size else "baseline"
        if key.model_version in self._updates:
            # Judged against the previous version while its own baseline collects.
            return self._to_window(series, values, "baseline+window")
        return "baseline"

    def _to_window(self, series: _Series, values: np.ndarray, outcome: str) -> str:
        self.counts["window_events"] += series.window.add(values)
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
        """Judge ``new_version`` against ``previous_version``'s baselines until its own freeze.

        Idempotent for the same pair (a restarted daemon may call it again
        without resetting the verdicts); a different previous version starts
        a fresh update. Returns True when a new update started. Series whose
        own baseline is already frozen, or whose version is pinned, are not
        affected: they keep their within_version reference.
        """
        if new_version == previous_version:
            raise ValueError("an update needs two different versions")
        current = self._updates.get(new_version)
        if current is not None and current.previous_version == previous_version:
            return False
        self._updates[new_version] = Update(previous_version, float(at))
        for key, series in self._series.items():
            if key.model_version == new_version:
                series.update = None
        return True

    @property
    def updates(self) -> dict[str, Update]:
        """new_version -> Update(previous_version, at)."""
        return dict(self._updates)

    def forget(self, version: str) -> None:
        """Drop everything about a retired version (windows, verdicts, baselines, update)."""
        for key in [k for k in self._series if k.model_version == version]:
            del self._series[key]
        self._store.forget(version)
        self._updates.pop(version, None)

    def _reference(self, key: SeriesKey) -> tuple[Histogram | None, str, str]:
        """(reference histogram or None, kind, reference version) for a series now."""
        if self._store.status(key) in ("frozen", "pinned"):
            return self._store.reference(key), WITHIN_VERSION, self._store.resolve(key).model_version
        update = self._updates.get(key.model_version)
        if update is not None:
            previous = key.with_version(update.previous_version)
            return self._store.reference(previous), MODEL_UPDATE, self._store.resolve(previous).model_version
        return None, WITHIN_VERSION, key.model_version

    # -- judging ------------------------------------------------------------------

    def judge(self, now: float) -> JudgeReport:
        """Judge every full window against its reference, update verdicts, empty those windows."""
        c = self.config
        self._tick(now)
        self._round += 1
        for key in self._store.freeze_due(self._clock if self._clock is not None else now):
            if key in self._series:
                self._series[key].window.reset()

        pending = _Pending()
        insufficient = no_reference = 0
        for key, series in self._series.items():
            n = series.window.total
            ref, kind, ref_version = self._reference(key)
            if ref is None:
                if n >= c.min_samples:
                    no_reference += 1
                    series.window.reset()
                continue
            if n < c.min_samples:
                insufficient += 1
                continue
            pending.keys.append(key)
            pending.kinds.append(kind)
            pending.refs.append(ref)
            pending.ref_versions.append(ref_version)

        results = self._judge_pending(pending)
        cohorts = self._roll_up()
        drifting = sum(
            1
            for key, s in self._series.items()
            for h in self._active_trackers(key, s)
            if h.drifting
        )
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
        )

    def _judge_pending(self, pending: _Pending) -> tuple[KeyResult, ...]:
        c = self.config
        if not pending.keys:
            return ()
        a = np.stack([self._series[k].window.counts for k in pending.keys])  # [K, bins]
        b = np.stack([r.counts for r in pending.refs])  # [K, bins]
        raw = js_distance(a, b)
        score = js_distance(a, b, bias_corrected=True) if c.bias_correction else raw
        psis = psi(a, b, c.psi_epsilon)
        _, _, p = chi2_homogeneity(a, b, c.min_expected)
        p_adj = bh_adjust(p)
        floors = np.array([self._floor(kind) for kind in pending.kinds])
        flags = (p_adj <= c.alpha) & (score >= floors)

        # Plain Python scalars once, not a numpy scalar conversion per field per series.
        cols = zip(
            pending.keys,
            pending.kinds,
            pending.ref_versions,
            floors.tolist(),
            score.tolist(),
            raw.tolist(),
            psis.tolist(),
            p.tolist(),
            p_adj.tolist(),
            flags.tolist(),
            a.sum(axis=1).tolist(),
            b.sum(axis=1).tolist(),
        )
        results = []
        for key, kind, ref_version, floor, s, r, ps, pv, pa, flagged, n, m in cols:
            series = self._series[key]
            if kind == MODEL_UPDATE:
                if series.update is None:
                    series.update = Hysteresis(c.raise_after, c.clear_after)
                tracker = series.update
                update_at: float | None = self._updates[key.model_version].at
            else:
                if series.within is None:
                    series.within = Hysteresis(c.raise_after, c.clear_after)
                tracker = series.within
                update_at = None
            tracker.update(flagged)
            results.append(
                KeyResult(
                    key=key,
                    kind=kind,
                    reference_version=ref_version,
                    score=s,
                    js_raw=r,
                    psi=ps,
                    p_value=pv,
                    p_adjusted=pa,
                    threshold=floor,
                    samples=int(n),
                    reference_samples=int(m),
                    flagged=flagged,
                    drifting=tracker.drifting,
                    consecutive_flagged=tracker.consecutive_flagged,
                    consecutive_clear=tracker.consecutive_clear,
                    update_at=update_at,
                )
            )
            series.window.reset()
        return tuple(results)

    def _floor(self, kind: str) -> float:
        """The effect floor of a window of this kind."""
        c = self.config
        return c.update_min_effect if kind == MODEL_UPDATE and c.update_min_effect is not None else c.min_effect

    def _update_active(self, key: SeriesKey) -> bool:
        return key.model_version in self._updates and self._store.status(key) == "collecting"

    def _active_trackers(self, key: SeriesKey, series: _Series) -> list[Hysteresis]:
        trackers = [series.within] if series.within is not None else []
        if series.update is not None and self._update_active(key):
            trackers.append(series.update)
        return trackers

    def _roll_up(self) -> tuple[CohortVerdict, ...]:
        groups: dict[tuple[str, str, str, str], list[tuple[SeriesKey, Hysteresis]]] = {}
        for key, series in self._series.items():
            if series.within is not None:
                groups.setdefault((*key.cohort_key, WITHIN_VERSION), []).append((key, series.within))
            if series.update is not None:
                groups.setdefault((*key.cohort_key, MODEL_UPDATE), []).append((key, series.update))
        out = []
        for (version, dimension, cohort, kind), members in groups.items():
            first = members[0][0]
            drifting_series = tuple(sorted((k.statistic, k.layer) for k, h in members if h.drifting))
            if kind == MODEL_UPDATE:
                update = self._updates.get(version)
                reference = update.previous_version if update else ""
                update_at = update.at if update else None
                active = any(self._update_active(k) for k, _ in members)
            else:
                reference = self._store.resolve(first).model_version
                update_at = None
                active = True
            out.append(
                CohortVerdict(
                    model_version=version,
                    dimension=dimension,
                    cohort=cohort,
                    kind=kind,
                    drifting=bool(drifting_series),
                    drifting_series=drifting_series,
                    series=len(members),
                    reference_version=reference,
                    update_at=update_at,
                    active=active,
                )
            )
        return tuple(out)

    # -- persistence --------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: config, clock, windows, verdict counters, baselines, updates."""
        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "clock": self._clock,
            "round": self._round,
            "counts": dict(self.counts),
            "baselines": self._store.to_state(),
            "series": [
                [
                    key.to_state(),
                    {
                        "window": s.window.to_state(),
                        "within": s.within.to_state() if s.within else None,
                        "update": s.update.to_state() if s.update else None,
                    },
                ]
                for key, s in self._series.items()
            ],
            "updates": {v: [u.previous_version, u.at] for v, u in self._updates.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: JudgeConfig | None = None) -> Judge:
        """Resume from ``to_state()``; a given ``config`` wins over the saved one (bins must match)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown judge state format {state.get('format')!r}")
        saved = JudgeConfig.from_mapping(state["config"])
        config = config or saved
        if config.bins != saved.bins:
            raise ValueError(f"saved state has {saved.bins} bins, config has {config.bins}")
        judge = cls(config)
        judge._store = BaselineStore.from_state(
            state["baselines"],
            reference_events=config.reference_events,
            reference_seconds=config.reference_seconds,
            max_keys=config.max_keys,
        )
        for key in judge._store:
            baseline = judge._store.get(key)
            if baseline is not None and baseline.histogram.bins != config.bins:
                raise ValueError(f"the saved baseline of {key} has {baseline.histogram.bins} bins, "
                                 f"the judge {config.bins}")
        judge._clock = state["clock"]
        judge._round = int(state["round"])
        judge.counts.update({k: int(v) for k, v in state["counts"].items()})
        for key_state, s in state["series"]:
            series = _Series(config.bins)
            series.window = Histogram.from_state(s["window"])
            if series.window.bins != config.bins:  # would fail at the first judgement, on every restart
                raise ValueError(f"a saved window has {series.window.bins} bins, the judge {config.bins}")
            if s["within"] is not None:
                series.within = Hysteresis.from_state(s["within"], config.raise_after, config.clear_after)
            if s["update"] is not None:
                series.update = Hysteresis.from_state(s["update"], config.raise_after, config.clear_after)
            judge._series[SeriesKey.from_state(key_state)] = series
        judge._updates = {v: Update(str(p), float(at)) for v, (p, at) in state["updates"].items()}
        return judge

    def __len__(self) -> int:
        return len(self._series)
