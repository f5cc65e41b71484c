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

The test (``compare``) asks whether the window's mass is spread over the items as the
reference's is, on the cells that matter: the union of both sides' ``top_k`` items, and
everything else as one cell. A chi-square test of homogeneity on those cells
(``divergence.chi2_homogeneity``) on *effective* counts: one event brings one unit of mass
(its row sums to 1); a row spreads it over many items, so counting each event as one draw of
a single item is conservative (the multinomial covariance bounds the covariance of any
vector on the simplex); and a user's events repeat their history's items, so each side's
mass is divided by Kish's design effect (events over effective users, the bound reached when
a user's events repeat exactly). The effect size is the bias-corrected Jensen-Shannon
distance over the same cells, at the same effective sizes. A window *narrowed* when its own
top-k share is above the reference's. ``docs/drift.md`` ("Attention concentrated on few
items") says why.

>>> from monitor.drift.items import ItemSketch
>>> before, after = ItemSketch(), ItemSketch()
>>> before.add(np.arange(100), np.full(100, 20.0))          # 2,000 events over 100 items
>>> after.add(np.arange(100), np.r_[np.full(3, 150.0), np.full(97, 50.0 / 97)])  # 500, 90 % on 3
>>> out = compare([(after, 0)], [(before, 0)], np.array([1.0]), np.array([1.0]), top_k=3)
>>> bool(out.p_value[0] < 1e-12), round(float(out.top_share[0]), 2), round(float(out.reference_top_share[0]), 2)
(True, 0.9, 0.03)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from monitor.drift.baseline import CohortKey
from monitor.drift.divergence import chi2_homogeneity, js_distance
from monitor.drift.items import ItemSketch


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

    score: np.ndarray  # [K] bias-corrected JS distance over the cells
    js_raw: np.ndarray  # [K]
    p_value: np.ndarray  # [K] chi-square on effective counts
    narrowed: np.ndarray  # [K] bool: the window's top-k share above the reference's
    top_share: np.ndarray  # [K] the window's
    reference_top_share: np.ndarray  # [K]
    effective_items: np.ndarray  # [K] the window's
    reference_effective_items: np.ndarray  # [K]
    overlap: np.ndarray  # [K] share of the window's top-k items among the reference's top-k
    window_events: np.ndarray  # [K] mass (events) of the window
    top: list[list[tuple[int, float, float]]]  # the window's top items: (item id, share, reference share)


Layered = tuple[ItemSketch, int]  # a sketch and one of its layers


def compare(windows: Sequence[Layered], references: Sequence[Layered], window_design: np.ndarray,
            reference_design: np.ndarray, *, top_k: int, min_expected: float = 5.0) -> Comparison:
    """Test each window's item mass against its reference's (module docstring), vectorised
    over the rows (each a sketch and a layer); ``*_design`` [K] are the sides' design effects (Kish)."""
    if len(windows) != len(references):
        raise ValueError(f"{len(windows)} windows against {len(references)} references")
    k = len(windows)
    cells = 2 * top_k + 1
    a = np.zeros((k, cells))
    b = np.zeros((k, cells))
    top, w_fig, r_fig, overlap = [], [], [], np.zeros(k)
    for row, ((window, w_layer), (reference, r_layer)) in enumerate(zip(windows, references, strict=True)):
        wf, rf = figures(window, top_k, w_layer), figures(reference, top_k, r_layer)
        w_fig.append(wf)
        r_fig.append(rf)
        w_ids = [i for i, _ in wf.top]
        r_ids = [i for i, _ in rf.top]
        union = np.array(list(dict.fromkeys(r_ids + w_ids)), dtype=np.int64)
        wa, rb = window.estimate(union, w_layer), reference.estimate(union, r_layer)
        w_total, r_total = window.mass_total(w_layer), reference.mass_total(r_layer)
        # Cells by pooled share, largest first ("other" last): the chi-square merges neighbours.
        order = np.argsort(-(wa / max(w_total, 1e-12) + rb / max(r_total, 1e-12)), kind="stable")
        a[row, : union.size], b[row, : union.size] = wa[order], rb[order]
        a[row, -1] = max(0.0, w_total - wa.sum())
        b[row, -1] = max(0.0, r_total - rb.sum())
        overlap[row] = len(set(w_ids) & set(r_ids)) / max(len(w_ids), 1)
        reference_share = dict(zip(union.tolist(), (rb / max(r_total, 1e-12)).tolist(), strict=True))
        top.append([(item, share, reference_share[item]) for item, share in wf.top])
    n = a.sum(axis=1)
    m = b.sum(axis=1)
    n_eff = n / np.maximum(window_design, 1.0)
    m_eff = m / np.maximum(reference_design, 1.0)
    judged = (n > 0) & (m > 0)
    a_ = np.where(judged[:, None], a, 1.0)
    b_ = np.where(judged[:, None], b, 1.0)
    raw = js_distance(a_, b_)
    score = js_distance(a_, b_, bias_corrected=True, n=np.where(judged, n_eff, 1.0), m=np.where(judged, m_eff, 1.0))
    _, _, p = chi2_homogeneity(a_ / np.where(judged, n, 1.0)[:, None] * np.where(judged, n_eff, 1.0)[:, None],
                               b_ / np.where(judged, m, 1.0)[:, None] * np.where(judged, m_eff, 1.0)[:, None],
                               min_expected)
    top_share = np.array([f.top_share for f in w_fig])
    reference_top_share = np.array([f.top_share for f in r_fig])
    return Comparison(
        score=np.where(judged, score, 0.0), js_raw=np.where(judged, raw, 0.0), p_value=np.where(judged, p, 1.0),
        narrowed=judged & (top_share > reference_top_share), top_share=top_share,
        reference_top_share=reference_top_share,
        effective_items=np.array([f.effective_items for f in w_fig]),
        reference_effective_items=np.array([f.effective_items for f in r_fig]),
        overlap=overlap, window_events=n, top=top,
    )


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One (cohort, layer)'s attention mass per item judged in one round: what the item gauges export."""

    key: CohortKey
    layer: int
    kind: str  # "within_version" or "model_update"
    reference_version: str
    score: float  # bias-corrected JS distance over the top items' cells
    js_raw: float
    p_value: float  # chi-square on effective counts
    p_adjusted: float  # Benjamini-Hochberg, in the round's one family
    threshold: float  # item_min_effect
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
