"""Concentration of attention on items: the figures of an item-mass sketch, and the test of a
window's against its reference's.

Figures of one (version, cohort, layer) stretch of events (``figures``):

- ``top_share``: the share of all attention mass held by its ``top_k`` items;
- ``effective_items``: exp of the entropy of the item-mass distribution. The sketch keeps the
  heavy items; the mass it removed (``ItemSketch.removed``) sits on items each holding at most
  the sketch's error bound, so it is counted as pieces of exactly that size: the smallest
  entropy those items can have. Exact while the sketch holds every item; else a lower bound
  (up to the counters' own shortfall). Like any plug-in count of kinds, it grows with the
  number of events, so it is shown, not tested;
- the top items and their shares.

The test (``compare``) asks whether the window's attention piles onto a few items more than
its reference's does, without being fooled by its own noise. A window's own top items are
partly chosen by chance, and by its heavy users: a session's events attend to the same few
history items, so a window of few users has a high top-k share with nothing changed. So the
window is *cross-fitted*: the sample keeps its counters per half of the users (keys
``item * 2 + half``, the random user groups' parity), each half's top ``top_k`` items are
measured in the other half, and the window's share on them (``cross_share``) is compared with
the reference's share on the same items, weighted like the window's halves. A promotion
every user's attention follows is on top in both halves; one heavy user's items are on top
in one half only. Two cells (on those items, elsewhere), a 2 x 2 chi-square test with Yates'
correction on *effective* counts: one event brings one unit of mass (its row sums to 1), a
row spreads it over many items, so counting each event as one draw is conservative (the
multinomial covariance bounds that of any vector on the simplex); a user's events repeat, so
each side is divided by its design effect (the judge passes the largest of the sample's
statistics' random-groups design effects, within [1, Kish]). The effect size
is the bias-corrected Jensen-Shannon distance over the two cells at the same effective sizes.
A window *narrowed* when its cross-fitted share is above the reference's. ``docs/drift.md``
("Attention concentrated on few items") says why.

That test is valid but weak: it counts each event as one all-or-nothing draw, while an event
spreads its unit of mass, so its share on the top items varies far less than a draw (a
viral title each event attends with ~4 % is 0.04 +- 0.02 per event, not 0 or 1), and the
statistics' design effects are not the items'. So a second test (``watched``) measures the
variance itself, by random groups of users: the items each half of the users put on top in
the cohort's *previous* window are watched in the next one by the other half's events (chosen
before the window's events, from other users: no selection bias, no heavy-user leakage), each
event's mass on them is summed per random group of users as it is folded, and the window's
share on them is compared with the reference's share on the same items with a one-sided
t-test whose variance is the groups' spread (random-groups variance of a ratio, Satterthwaite
degrees of freedom) plus the reference's (Bernoulli bound with its design effect). A row's
p-value is the smaller of the two, doubled (Bonferroni: still valid, one series in BH).

>>> from monitor.drift.items import ItemSketch
>>> def side(masses):  # the same masses per item 0..99 in both halves of the users
...     halves = [ItemSketch(), ItemSketch()]
...     for half in halves:
...         half.add(np.arange(100), masses)
...     whole = ItemSketch()
...     whole.add(np.arange(100), 2 * masses)
...     return Side(whole, (halves[0], halves[1]), 0)
>>> before = side(np.full(100, 10.0))                              # 2,000 events over 100 items
>>> after = side(np.r_[np.full(3, 75.0), np.full(97, 25.0 / 97)])  # 500 events, 90 % on 3 items
>>> out = compare([after], [before], np.array([1.0]), np.array([1.0]), top_k=3)
>>> bool(out.p_value[0] < 1e-12), bool(out.narrowed[0]), round(float(out.top_share[0]), 2)
(True, True, 0.9)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from monitor.drift.baseline import CohortKey
from scipy import special, stats

from monitor.drift.divergence import js_distance
from monitor.drift.items import ItemSketch


SERVED_LAYER = -1  # the "layer" of a cohort's served-recommendation row (ItemResult, hysteresis keys)


class Figures(NamedTuple):
    top_share: float  # share of all mass held by the top_k items
    effective_items: float  # exp(entropy) of the item-mass distribution (module docstring)
    top: list[tuple[int, float]]  # (item id, share), largest first


def figures(sketch: ItemSketch, top_k: int, layer: int = 0) -> Figures:
    """The concentration figures of one layer of a sketch (module docstring); zeros when it is empty."""
    total = sketch.mass_total(layer)
    if total <= 0:
        return Figures(0.0, 0.0, [])
    shares = sketch.mass[:, layer] / total
    entropy = float(-(shares * np.log(np.maximum(shares, 1e-300))).sum())
    removed = sketch.removed(layer) / total
    if removed > 0:
        bound = sketch.error_bound(layer) / total  # the largest share an item without a counter can hold
        entropy -= removed * np.log(min(bound, removed))
    top = [(item, mass / total) for item, mass in sketch.top(top_k, layer)]
    return Figures(float(sum(s for _, s in top)), float(np.exp(entropy)), top)


class Comparison(NamedTuple):
    """One row per compared (cohort, layer): the test and the figures of both sides."""

    score: np.ndarray  # [K] bias-corrected JS distance over the two cells
    js_raw: np.ndarray  # [K]
    p_value: np.ndarray  # [K] 2 x 2 chi-square (Yates) on effective counts
    narrowed: np.ndarray  # [K] bool: the cross-fitted share above the reference's
    top_share: np.ndarray  # [K] the window's
    reference_top_share: np.ndarray  # [K]
    effective_items: np.ndarray  # [K] the window's
    reference_effective_items: np.ndarray  # [K]
    overlap: np.ndarray  # [K] share of the window's top-k items among the reference's top-k
    window_events: np.ndarray  # [K] mass (events) of the window
    top: list[list[tuple[int, float, float]]]  # the window's top items: (item id, share, reference share)
    # The items each half's events watch in the next window: (half 0's, half 1's), each the
    # other half's top items of this window; per row.
    watch_next: list[tuple[np.ndarray, np.ndarray]]


class Watched(NamedTuple):
    """The watched-items test of each row (``watched``)."""

    p_value: np.ndarray  # [K] one-sided: the window's share above the reference's
    window_share: np.ndarray  # [K] the window's share on the items its events watched
    reference_share: np.ndarray  # [K] the reference's on the same items, weighted like the window's groups
    score: np.ndarray  # [K] bias-corrected JS distance over the two cells at the test's effective sizes
    js_raw: np.ndarray  # [K]


def watched(mass: np.ndarray, events: np.ndarray, reference_share: np.ndarray, reference_events: np.ndarray,
            reference_design: np.ndarray) -> Watched:
    """The watched-items test (module docstring), vectorised over rows.

    ``mass`` [K, G]: per random group of users, the window's mass on the items its events
    watched (groups of half ``g & 1`` watch that half's set); ``events`` [K, G] the events per
    group; ``reference_share`` [K, 2] the reference's share on each half's set;
    ``reference_events`` and ``reference_design`` [K].

    >>> rng = np.random.default_rng(0)
    >>> events = np.full((1, 16), 25.0)
    >>> narrowed = (0.12 + 0.02 * rng.standard_normal((1, 16))) * events   # 12 % of each event
    >>> out = watched(narrowed, events, np.array([[0.01, 0.01]]), np.array([2000.0]), np.array([20.0]))
    >>> bool(out.p_value[0] < 1e-6), round(float(out.window_share[0]), 2)
    (True, 0.11)
    >>> same = (0.01 + 0.005 * rng.standard_normal((1, 16))) * events
    >>> bool(watched(same, events, np.array([[0.01, 0.01]]), np.array([2000.0]), np.array([20.0])).p_value[0] > 0.05)
    True
    """
    mass, events = np.asarray(mass, dtype=np.float64), np.asarray(events, dtype=np.float64)
    groups = mass.shape[1]
    expected = events * np.asarray(reference_share, dtype=np.float64)[:, np.arange(groups) & 1]  # [K, G]
    n = events.sum(axis=1)
    safe_n = np.where(n > 0, n, 1.0)
    difference = (mass - expected).sum(axis=1) / safe_n  # window share - reference share
    window_share, reference = mass.sum(axis=1) / safe_n, expected.sum(axis=1) / safe_n
    # Random groups, linearised ratio: each group's residual around the common difference.
    spread = np.square(mass - expected - difference[:, None] * events)  # [K, G]
    total = spread.sum(axis=1)
    var_window = groups / (groups - 1) * total / safe_n**2
    m = np.maximum(np.asarray(reference_events, dtype=np.float64), 1.0)
    var_reference = reference * (1.0 - reference) * np.maximum(reference_design, 1.0) / m
    var = var_window + var_reference
    with np.errstate(divide="ignore", invalid="ignore"):
        df_window = np.clip(np.where(total > 0, total**2 / np.square(spread).sum(axis=1), 1.0), 1.0, groups - 1)
        df = np.where(var_window > 0, var**2 / (var_window**2 / df_window), np.inf)
        t = np.where(var > 0, difference / np.sqrt(var), 0.0)
    p = np.where((n > 0) & (var > 0), stats.t.sf(t, np.maximum(df, 1.0)), 1.0)
    # The effect at the test's own effective sizes: the window's events as many independent
    # Bernoulli draws as its measured variance is worth (at most its events).
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.clip(np.where(var_window > 0, window_share * (1 - window_share) / var_window, n), 1.0,
                        np.maximum(n, 1.0))
    m_eff = m / np.maximum(reference_design, 1.0)
    a = np.stack([window_share * n_eff, (1.0 - window_share) * n_eff], axis=1)
    b = np.stack([reference * m_eff, (1.0 - reference) * m_eff], axis=1)
    judged = n > 0
    a, b = np.where(judged[:, None], a, 1.0), np.where(judged[:, None], b, 1.0)
    score = js_distance(a, b, bias_corrected=True, n=n_eff, m=m_eff)
    return Watched(p_value=p, window_share=window_share, reference_share=reference,
                   score=np.where(judged, score, 0.0), js_raw=np.where(judged, js_distance(a, b), 0.0))


def combine(cross: Comparison, watch: Watched, rows: np.ndarray) -> Comparison:
    """``cross`` with the watched test's ``rows`` (indices into it) folded in: each such row's
    p-value is the smaller of the two doubled (Bonferroni), its score and direction the
    smaller one's."""
    p, score, raw, narrowed = (cross.p_value.copy(), cross.score.copy(), cross.js_raw.copy(), cross.narrowed.copy())
    if len(rows):
        better = watch.p_value < p[rows]
        chosen = rows[better]
        p[rows] = np.minimum(1.0, 2.0 * np.minimum(p[rows], watch.p_value))
        score[chosen], raw[chosen] = watch.score[better], watch.js_raw[better]
        narrowed[chosen] = (watch.window_share > watch.reference_share)[better]
    return cross._replace(p_value=p, score=score, js_raw=raw, narrowed=narrowed)


def _yates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """p-values of the 2 x 2 chi-square test with Yates' continuity correction, per row of the
    (effective, real-valued) counts ``a`` [K, 2] and ``b`` [K, 2]. Not the binned statistics'
    merging rule: two cells cannot be merged, and with few effective users the narrow cell's
    expected count is small; the correction keeps the test conservative there.

    >>> bool(_yates(np.array([[12.0, 28.0]]), np.array([[3.0, 117.0]]))[0] < 1e-5)  # 30 % vs 2.5 %
    True
    >>> _yates(np.array([[1.0, 39.0]]), np.array([[3.0, 117.0]])).round(2).tolist()  # 2.5 % vs 2.5 %
    [1.0]
    """
    n, m = a.sum(axis=1), b.sum(axis=1)
    total = n + m
    hit = a[:, 0] + b[:, 0]
    miss = a[:, 1] + b[:, 1]
    cross = np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = total * np.maximum(cross - total / 2.0, 0.0) ** 2 / (n * m * hit * miss)
    return np.where(np.isfinite(stat) & (hit > 0) & (miss > 0), special.chdtrc(1, np.nan_to_num(stat)), 1.0)


class Side(NamedTuple):
    """One side of a comparison: a sketch keyed ``item * 2 + half`` read back by ``split_halves``."""

    whole: ItemSketch
    halves: tuple[ItemSketch, ItemSketch]
    layer: int


def cross_share(side: Side, top_k: int) -> tuple[float, list[np.ndarray]]:
    """The share of the side's mass on the top items of the *other* half of its users: each
    half's top ``top_k`` items, measured in the other half (module docstring); and those sets."""
    a, b = side.halves
    layer = side.layer
    sets = [np.array([i for i, _ in h.top(top_k, layer)], dtype=np.int64) for h in (a, b)]
    held = float(b.estimate(sets[0], layer).sum() + a.estimate(sets[1], layer).sum())
    total = a.mass_total(layer) + b.mass_total(layer)
    return (held / total if total > 0 else 0.0), sets


def compare(windows: Sequence[Side], references: Sequence[Side], window_design: np.ndarray,
            reference_design: np.ndarray, *, top_k: int, min_expected: float = 5.0) -> Comparison:
    """Test each window's item mass against its reference's (module docstring), vectorised
    over the rows; ``*_design`` [K] are the sides' design effects."""
    if len(windows) != len(references):
        raise ValueError(f"{len(windows)} windows against {len(references)} references")
    k = len(windows)
    a = np.zeros((k, 2))
    b = np.zeros((k, 2))
    p_window, p_reference = np.zeros(k), np.zeros(k)
    top, w_fig, r_fig, overlap, watch_next = [], [], [], np.zeros(k), []
    for row, (window, reference) in enumerate(zip(windows, references, strict=True)):
        wf, rf = figures(window.whole, top_k, window.layer), figures(reference.whole, top_k, reference.layer)
        w_fig.append(wf)
        r_fig.append(rf)
        w_ids = [i for i, _ in wf.top]
        r_ids = [i for i, _ in rf.top]
        overlap[row] = len(set(w_ids) & set(r_ids)) / max(len(w_ids), 1)
        r_total = max(reference.whole.mass_total(reference.layer), 1e-12)
        before = reference.whole.estimate(np.array(w_ids, dtype=np.int64), reference.layer) / r_total
        top.append([(item, share, float(b_)) for (item, share), b_ in zip(wf.top, before, strict=True)])
        # The window's cross-fitted share, and the reference's share on the same item sets,
        # weighted like the window's halves.
        p_window[row], sets = cross_share(window, top_k)
        watch_next.append((sets[1], sets[0]))  # each half watches the other's top items next
        halves_mass = [h.mass_total(window.layer) for h in window.halves]
        w_total = sum(halves_mass)
        if w_total > 0:
            p_reference[row] = sum(reference.whole.estimate(ids, reference.layer).sum() / r_total * halves_mass[1 - h]
                                   for h, ids in enumerate(sets)) / w_total
    n = np.array([w.whole.mass_total(w.layer) for w in windows]) if k else np.zeros(0)
    m = np.array([r.whole.mass_total(r.layer) for r in references]) if k else np.zeros(0)
    n_eff = n / np.maximum(window_design, 1.0)
    m_eff = m / np.maximum(reference_design, 1.0)
    judged = (n > 0) & (m > 0)
    a[:, 0], a[:, 1] = p_window * n_eff, (1.0 - p_window) * n_eff
    b[:, 0], b[:, 1] = p_reference * m_eff, (1.0 - p_reference) * m_eff
    a_ = np.where(judged[:, None], a, 1.0)
    b_ = np.where(judged[:, None], b, 1.0)
    raw = js_distance(a_, b_)
    score = js_distance(a_, b_, bias_corrected=True, n=np.where(judged, n_eff, 1.0), m=np.where(judged, m_eff, 1.0))
    p = _yates(a_, b_)
    return Comparison(
        score=np.where(judged, score, 0.0), js_raw=np.where(judged, raw, 0.0), p_value=np.where(judged, p, 1.0),
        narrowed=judged & (p_window > p_reference), top_share=np.array([f.top_share for f in w_fig]),
        reference_top_share=np.array([f.top_share for f in r_fig]),
        effective_items=np.array([f.effective_items for f in w_fig]),
        reference_effective_items=np.array([f.effective_items for f in r_fig]),
        overlap=overlap, window_events=n, top=top, watch_next=watch_next,
    )


class ServedComparison(NamedTuple):
    """``compare_served``'s answer per row: the test, and the concentrations it compared."""

    test: Comparison
    ratio: np.ndarray  # [K] share over reference_share (1 where a row is not judged)
    share: np.ndarray  # [K] the window's share on its own cross-fitted top items
    reference_share: np.ndarray  # [K] the reference's, on its own


def compare_served(windows: Sequence[Side], references: Sequence[Side], window_design: np.ndarray,
                   reference_design: np.ndarray, *, top_k: int) -> ServedComparison:
    """The served-recommendation test of each row, and each row's concentration ratio.

    Served slots are not attention: a retrain serves other items than its predecessor (the
    top-10 overlap of two re-seeds is ~0), so "more of the window's own top items than the
    reference served" holds for any update. What a flooded or broken model changes is how
    *concentrated* its lists are, whichever items they favour. So each side is measured on
    its *own* cross-fitted top items (``cross_share``), and the two shares are compared: the
    same 2 x 2 chi-square (Yates) on effective counts and bias-corrected JS distance as
    ``compare``; ``narrowed`` when the window's share is the larger; the ratio (window over
    reference) is what the served floor applies to (docs/drift.md, "Served recommendations").
    """
    base = compare(windows, references, window_design, reference_design, top_k=top_k)
    k = len(windows)
    own = np.array([cross_share(w, top_k)[0] for w in windows]) if k else np.zeros(0)
    own_reference = np.array([cross_share(r, top_k)[0] for r in references]) if k else np.zeros(0)
    n_eff = base.window_events / np.maximum(window_design, 1.0)
    m = np.array([r.whole.mass_total(r.layer) for r in references]) if k else np.zeros(0)
    m_eff = m / np.maximum(reference_design, 1.0)
    judged = (n_eff > 0) & (m_eff > 0)
    a = np.where(judged[:, None], np.stack([own * n_eff, (1.0 - own) * n_eff], axis=1) if k else np.zeros((0, 2)), 1.0)
    b = np.where(judged[:, None], np.stack([own_reference * m_eff, (1.0 - own_reference) * m_eff], axis=1)
                 if k else np.zeros((0, 2)), 1.0)
    score = js_distance(a, b, bias_corrected=True, n=np.where(judged, n_eff, 1.0), m=np.where(judged, m_eff, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(own_reference > 0, own / own_reference, np.where(own > 0, np.inf, 1.0))
    out = base._replace(score=np.where(judged, score, 0.0), js_raw=np.where(judged, js_distance(a, b), 0.0),
                        p_value=np.where(judged, _yates(a, b), 1.0), narrowed=judged & (own > own_reference),
                        watch_next=[(np.zeros(0, dtype=np.int64),) * 2 for _ in range(k)])
    return ServedComparison(out, np.where(judged, ratio, 1.0), own, own_reference)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One (cohort, layer)'s attention mass per item judged in one round: what the item gauges export.

    ``layer`` is ``SERVED_LAYER`` for the cohort's served recommendations (``compare_served``):
    then ``score`` is the JS distance of the two sides' own concentrations, ``threshold`` the
    served floor on ``ratio``.
    """

    key: CohortKey
    layer: int
    kind: str  # "within_version" or "model_update"
    reference_version: str
    score: float  # bias-corrected JS distance over the two cells (cross-fitted top items, elsewhere)
    js_raw: float
    p_value: float  # chi-square on effective counts
    p_adjusted: float  # Benjamini-Hochberg, in the round's one family
    threshold: float  # item_min_effect (served rows: served_min_ratio)
    flagged: bool  # significant, large enough, and narrowed
    drifting: bool  # hysteresis verdict after this window: "narrowed"
    top_share: float  # the window's top-k share
    reference_top_share: float
    effective_items: float  # exp(entropy), the window's
    reference_effective_items: float
    overlap: float  # share of the window's top-k items among the reference's top-k
    samples: int  # events (mass) in the window
    top: tuple[tuple[int, float, float], ...]  # the window's top items: (item id, share, reference share)
    update_at: float | None
    ratio: float = float("nan")  # served rows: the window's own cross-fitted top share over the reference's

    @property
    def source(self) -> str:
        """"served" for the served recommendations' row, else "attention"."""
        return "served" if self.layer == SERVED_LAYER else "attention"
