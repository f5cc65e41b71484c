"""History-length strata: compare a window with a reference as if both had the window's mix.

Several attention statistics depend on how long the history is (a row over 3 items puts
at least a third of its mass on one of them; over 200 it need not), and which lengths a
window holds depends on who happens to be active. If the share of short histories moves,
the pooled distribution of such a statistic moves with it although no event is attended
differently. So windows and references keep their bins per **stratum** of the event's
own history length (``Strata``), and a window is judged against its reference
**post-stratified** to the window's mix (``poststratify``): with ``q_s`` the window's share
of stratum s and ``ref_s`` the reference's histogram in s,

    reference(window mix) = sum_s q_s * ref_s / |ref_s|

A change in the length mix alone then leaves the comparison unchanged; a change of
attention within strata still moves it. Reweighting costs precision: a reference with
``m`` events whose stratum shares ``p_s`` are reweighted to ``q_s`` is worth Kish's

    m_eff = m / sum_s (q_s^2 / p_s)       (= m when q = p, less otherwise)

events. A stratum the reference lacks (fewer than ``MIN_REFERENCE_EVENTS`` events) has no
conditional distribution to reweight: the window's events in it are left out of the
comparison and returned as ``unmatched`` (the judge counts and exports them).

>>> strata = Strata((10, 50))
>>> strata.index(np.array([3, 10, 49, 50, 400])).tolist(), strata.labels
([0, 1, 1, 2, 2], ('1-9', '10-49', '50+'))
>>> window = np.array([[[0, 10], [0, 0], [10, 0]]])        # [K=1, strata=3, bins=2]
>>> reference = np.array([[[0, 90], [5, 5], [10, 0]]])     # same conditionals, other mix
>>> post = poststratify(window, reference)
>>> post.window.tolist(), post.reference.round(3).tolist(), post.unmatched.tolist()
([[10, 10]], [[0.5, 0.5]], [0])
>>> round(float(post.reference_size[0]), 1)  # 110 events reweighted from 90/10 to 50/50
36.0
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

MIN_REFERENCE_EVENTS = 5  # a reference stratum with fewer events has no usable distribution


class Strata:
    """History-length buckets: ``edges`` (10, 50, 200) give 1-9, 10-49, 50-199, 200+."""

    __slots__ = ("edges", "labels")

    def __init__(self, edges: tuple[int, ...]) -> None:
        edges = tuple(int(e) for e in edges)
        if any(e < 2 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"strata edges must be strictly increasing ints >= 2, got {edges!r}")
        self.edges = edges  # () is one stratum: no stratification
        lows, highs = (1, *edges), tuple(e - 1 for e in edges)
        self.labels = tuple(f"{lo}-{hi}" for lo, hi in zip(lows, highs)) + (f"{(1, *edges)[-1]}+",)

    def __len__(self) -> int:
        return len(self.edges) + 1

    def index(self, lengths: np.ndarray) -> np.ndarray:
        """Stratum of each history length: ``[B]`` intp in ``[0, len(self))``."""
        return np.searchsorted(np.asarray(self.edges, dtype=np.int64), np.asarray(lengths), side="right").astype(np.intp)


class PostStratified(NamedTuple):
    """A window and its reference, reweighted to the window's stratum mix (one row per series)."""

    window: np.ndarray  # [K, bins] window counts in the strata the reference has
    reference: np.ndarray  # [K, bins] reference probabilities at the window's mix (rows sum to 1)
    reference_events: np.ndarray  # [K] reference events in the strata compared
    reference_size: np.ndarray  # [K] the same after reweighting (Kish), before any clustering
    unmatched: np.ndarray  # [K] window events in strata the reference lacks (left out)


def poststratify(window: np.ndarray, reference: np.ndarray) -> PostStratified:
    """Reweight each reference row to its window's stratum mix.

    ``window``, ``reference``: counts ``[K, strata, bins]``. A row whose window has no
    event in a stratum the reference holds comes back with an all-zero window row and
    reference row: nothing to compare.
    """
    window = np.asarray(window)
    reference = np.asarray(reference)
    if window.shape != reference.shape or window.ndim != 3:
        raise ValueError(f"window and reference must both be [K, strata, bins], got {window.shape}, {reference.shape}")
    per_window = window.sum(axis=2)  # [K, S]
    per_reference = reference.sum(axis=2)  # [K, S]
    usable = per_reference >= MIN_REFERENCE_EVENTS  # [K, S]
    unmatched = np.where(usable, 0, per_window).sum(axis=1)
    matched = np.where(usable, per_window, 0)  # [K, S]
    n = matched.sum(axis=1)  # [K]
    q = matched / np.where(n > 0, n, 1)[:, None]  # [K, S] window shares
    conditional = reference / np.where(usable, per_reference, 1)[..., None]  # [K, S, bins]
    reweighted = np.einsum("ks,ksb->kb", q, conditional)
    kept = np.where(usable, per_reference, 0)
    m = kept.sum(axis=1)  # [K]
    p = kept / np.where(m > 0, m, 1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(usable, q * q / np.where(usable, p, 1.0), 0.0).sum(axis=1)  # sum q^2 / p >= 1
    size = np.where(spread > 0, m / np.where(spread > 0, spread, 1.0), 0.0)
    window_counts = np.where(usable[..., None], window, 0).sum(axis=1)  # [K, bins]
    return PostStratified(window_counts, reweighted, m, size, unmatched)
