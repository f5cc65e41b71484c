"""Paired old-vs-new comparison: did the *model* change how it attends?

After an update the daemon samples events and recomputes the previous
model's attention on the *same* histories, so each sampled event yields a
pair of head-averaged attention rows and, per event, their Jensen-Shannon
distance (base 2, in [0, 1]) and the overlap of their top-k attended items
(in [0, 1]). Traffic drift moves both models alike and largely cancels in a
pair; what remains is the model's doing. Head-averaged rows are invariant to
the head permutation a retrain introduces, so pairs compare like with like.

A benign retrain moves rows too (attention is not identifiable: two fits of
the same data attend differently), so "any change" is the wrong null. The
verdict instead tests a tolerance, which is a quantile statement: a cohort
shows a *model-caused change* when the share of its events whose row moved
by more than ``event_js_cutoff`` is credibly above ``benign_fraction`` --
equivalently, the (1 - benign_fraction) quantile of per-event JS exceeds the
cutoff. The test is an exact one-sided binomial test of
H0: share <= benign_fraction, per window of >= ``min_pairs`` pairs, with
Benjamini-Hochberg across the cohorts judged in a round and the same
hysteresis as the drift judge. Because the tolerance sits in H0, a huge
sample does not turn a benign-sized change into a verdict.

Defaults (``cutoff_from_benign`` does the calibration arithmetic):

- ``event_js_cutoff`` = 0.65, calibrated on real benign retrains
  (docs/drift.md): a benign re-seed moves per-event rows by JS .51 median,
  .65 at its p95, so the reasoned 0.5 (a row concentrated on one item
  against the same mass split half-and-half with another item is 0.56 apart)
  flagged every benign retrain.
- ``benign_fraction`` = 0.1: one event in ten may move that much (the
  p90 of per-event JS may reach the cutoff) before the change counts.
- ``min_pairs`` = 100: one window then tells 10 % from about 30 % (power
  about 0.95 at a per-test level of 0.01 / 20, i.e. BH over 20 cohorts).

>>> rng = np.random.default_rng(0)
>>> pc = PairedComparison(PairedConfig(min_pairs=100))
>>> key = PairKey("v2", "platform", "ios")
>>> for t in range(3):
...     js = rng.beta(8, 4, 150)  # rows moved a lot: mean JS 0.67
...     _ = pc.observe(key, js, 1.0 - js)
...     print(pc.judge(now=float(t)).results[0].model_caused)
False
True
True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple

import numpy as np
from scipy import stats

from monitor.drift.histogram import Histogram
from monitor.drift.verdict import Hysteresis, bh_adjust

STATE_FORMAT = 1


class PairKey(NamedTuple):
    """One paired series: the new version and a cohort (head-averaged rows, all layers pooled upstream)."""

    new_version: str
    dimension: str
    cohort: str


@dataclass(frozen=True)
class PairedConfig:
    """Paired-comparison settings; ``from_mapping`` rejects unknown keys."""

    # Per-event JS distance counted as "row moved a lot": 0.65, calibrated on real benign
    # retrains (cutoff_from_benign; docs/drift.md) -- two fits of one recipe already move rows ~0.5.
    event_js_cutoff: float = 0.65
    benign_fraction: float = 0.1  # share of such events a benign retrain may show
    min_pairs: int = 100  # a window is judged once it holds this many pairs
    alpha: float = 0.01  # Benjamini-Hochberg FDR across cohorts per round
    raise_after: int = 2  # consecutive flagged windows to raise "model-caused change"
    clear_after: int = 3  # consecutive unflagged windows to clear it
    bins: int = 20  # histogram bins for per-event JS and top-k overlap
    max_keys: int = 5_000  # paired series cap; beyond it: refused, counted

    def __post_init__(self) -> None:
        Histogram(self.bins)
        checks = [
            (0.0 < self.event_js_cutoff < 1.0, "event_js_cutoff must be in (0, 1)"),
            (0.0 < self.benign_fraction < 1.0, "benign_fraction must be in (0, 1)"),
            (self.min_pairs >= 1, "min_pairs must be >= 1"),
            (0.0 < self.alpha < 1.0, "alpha must be in (0, 1)"),
            (self.raise_after >= 1, "raise_after must be >= 1"),
            (self.clear_after >= 1, "clear_after must be >= 1"),
            (self.max_keys >= 1, "max_keys must be >= 1"),
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
    at the edge of H0.
    """
    js = np.asarray(benign_js, dtype=np.float64)
    js = js[~np.isnan(js)]
    if js.size == 0:
        raise ValueError("no benign distances given")
    return float(np.quantile(js, 1.0 - benign_fraction / 2.0))


@dataclass(frozen=True, slots=True)
class PairedResult:
    """One paired series judged in one round."""

    key: PairKey
    pairs: int  # pairs in the window
    above: int  # of which with JS > cutoff
    fraction_above: float
    cutoff: float  # event_js_cutoff
    benign_fraction: float
    mean_js: float
    p90_js: float  # from the window histogram
    mean_overlap: float
    p_value: float  # one-sided binomial, H0: share <= benign_fraction
    p_adjusted: float
    flagged: bool
    model_caused: bool  # hysteresis verdict after this window
    consecutive_flagged: int
    consecutive_clear: int
    total_pairs: int  # since the series started
    total_above: int


@dataclass(frozen=True, slots=True)
class PairedReport:
    now: float
    round: int
    results: tuple[PairedResult, ...]
    insufficient: int  # windows with fewer than min_pairs pairs
    model_caused: tuple[PairKey, ...]  # series whose verdict is on now


class _Window:
    __slots__ = ("js", "overlap", "above", "js_sum", "overlap_sum", "overlap_n")

    def __init__(self, bins: int) -> None:
        self.js = Histogram(bins)
        self.overlap = Histogram(bins)
        self.above = 0
        self.js_sum = 0.0
        self.overlap_sum = 0.0
        self.overlap_n = 0

    def to_state(self) -> dict[str, Any]:
        return {
            "js": self.js.to_state(),
            "overlap": self.overlap.to_state(),
            "above": self.above,
            "js_sum": self.js_sum,
            "overlap_sum": self.overlap_sum,
            "overlap_n": self.overlap_n,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Window:
        w = cls(int(state["js"]["bins"]))
        w.js = Histogram.from_state(state["js"])
        w.overlap = Histogram.from_state(state["overlap"])
        w.above = int(state["above"])
        w.js_sum = float(state["js_sum"])
        w.overlap_sum = float(state["overlap_sum"])
        w.overlap_n = int(state["overlap_n"])
        return w


class _Pair:
    __slots__ = ("window", "verdict", "total_pairs", "total_above")

    def __init__(self, config: PairedConfig) -> None:
        self.window = _Window(config.bins)
        self.verdict = Hysteresis(config.raise_after, config.clear_after)
        self.total_pairs = 0
        self.total_above = 0


class PairedComparison:
    """Per (new_version, dimension, cohort) windows of paired divergences, and their verdicts."""

    def __init__(self, config: PairedConfig | None = None) -> None:
        self.config = config or PairedConfig()
        self._pairs: dict[PairKey, _Pair] = {}
        self._round = 0
        self.counts: dict[str, int] = {"pairs": 0, "nan_dropped": 0, "refused_key_cap": 0}

    def observe(self, key: PairKey, js: np.ndarray, overlap: np.ndarray) -> str:
        """Fold per-event paired JS distances and top-k overlaps (same events, same order) in.

        Returns "window" or "refused" (series cap; counted). Pairs whose JS is
        NaN are dropped and counted; out-of-range values are clipped.
        """
        js = np.asarray(js, dtype=np.float64).ravel()
        overlap = np.asarray(overlap, dtype=np.float64).ravel()
        if js.shape != overlap.shape:
            raise ValueError(f"js and overlap must pair up: {js.shape} vs {overlap.shape}")
        pair = self._pairs.get(key)
        if pair is None:
            if len(self._pairs) >= self.config.max_keys:
                self.counts["refused_key_cap"] += int(js.size)
                return "refused"
            pair = self._pairs[key] = _Pair(self.config)
        ok = ~np.isnan(js)
        if not ok.all():
            self.counts["nan_dropped"] += int((~ok).sum())
            js, overlap = js[ok], overlap[ok]
        js = np.clip(js, 0.0, 1.0)
        w = pair.window
        w.js.add(js)
        w.overlap.add(overlap)
        w.above += int(np.count_nonzero(js > self.config.event_js_cutoff))
        w.js_sum += float(js.sum())
        good = overlap[~np.isnan(overlap)]
        w.overlap_sum += float(np.clip(good, 0.0, 1.0).sum())
        w.overlap_n += int(good.size)
        self.counts["pairs"] += int(js.size)
        return "window"

    def judge(self, now: float) -> PairedReport:
        """Judge every window with >= min_pairs pairs; BH across them; hysteresis; empty them."""
        c = self.config
        self._round += 1
        ready = [k for k, p in self._pairs.items() if p.window.js.total >= c.min_pairs]
        insufficient = sum(1 for p in self._pairs.values() if 0 < p.window.js.total < c.min_pairs)
        results: list[PairedResult] = []
        if ready:
            n = np.array([self._pairs[k].window.js.total for k in ready])
            above = np.array([self._pairs[k].window.above for k in ready])
            # P(X >= above) for X ~ Binomial(n, benign_fraction): sf(above - 1).
            p = stats.binom.sf(above - 1, n, c.benign_fraction)
            p_adj = bh_adjust(p)
            flags = (p_adj <= c.alpha).tolist()
            for key, ni, ai, pv, pa, flagged in zip(ready, n.tolist(), above.tolist(), p.tolist(), p_adj.tolist(), flags):
                pair = self._pairs[key]
                w = pair.window
                pair.verdict.update(flagged)
                pair.total_pairs += ni
                pair.total_above += ai
                results.append(
                    PairedResult(
                        key=key,
                        pairs=ni,
                        above=ai,
                        fraction_above=ai / ni,
                        cutoff=c.event_js_cutoff,
                        benign_fraction=c.benign_fraction,
                        mean_js=w.js_sum / ni,
                        p90_js=w.js.quantile(0.9),
                        mean_overlap=w.overlap_sum / w.overlap_n if w.overlap_n else float("nan"),
                        p_value=pv,
                        p_adjusted=pa,
                        flagged=flagged,
                        model_caused=pair.verdict.drifting,
                        consecutive_flagged=pair.verdict.consecutive_flagged,
                        consecutive_clear=pair.verdict.consecutive_clear,
                        total_pairs=pair.total_pairs,
                        total_above=pair.total_above,
                    )
                )
                pair.window = _Window(c.bins)
        on = tuple(k for k, p in self._pairs.items() if p.verdict.drifting)
        return PairedReport(float(now), self._round, tuple(results), insufficient, on)

    def forget(self, new_version: str) -> None:
        """Drop a version's paired series (its update is over)."""
        for key in [k for k in self._pairs if k.new_version == new_version]:
            del self._pairs[key]

    def __len__(self) -> int:
        return len(self._pairs)

    def to_state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "config": dataclasses.asdict(self.config),
            "round": self._round,
            "counts": dict(self.counts),
            "pairs": [
                [list(k), p.window.to_state(), p.verdict.to_state(), p.total_pairs, p.total_above]
                for k, p in self._pairs.items()
            ],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], config: PairedConfig | None = None) -> PairedComparison:
        """Resume from ``to_state()``; a given ``config`` wins over the saved one (bins must match)."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown paired state format {state.get('format')!r}")
        saved = PairedConfig.from_mapping(state["config"])
        config = config or saved
        if config.bins != saved.bins:
            raise ValueError(f"saved state has {saved.bins} bins, config has {config.bins}")
        pc = cls(config)
        pc._round = int(state["round"])
        pc.counts.update({k: int(v) for k, v in state["counts"].items()})
        for key, window, verdict, total_pairs, total_above in state["pairs"]:
            pair = _Pair(config)
            pair.window = _Window.from_state(window)
            pair.verdict = Hysteresis.from_state(verdict, config.raise_after, config.clear_after)
            pair.total_pairs = int(total_pairs)
            pair.total_above = int(total_above)
            pc._pairs[PairKey(*key)] = pair
        return pc
