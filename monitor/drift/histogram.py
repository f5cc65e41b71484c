"""Fixed-bin histogram over [0, 1]: the bounded memory of windows and baselines.

Every per-event attention statistic lives in [0, 1] (entropy / log n, top-k
mass, Gini, ...), so one fixed set of equal-width bins serves them all. Windows
and baselines keep only bin counts, never raw samples: memory is ``bins``
integers per series however many events arrive, the state is a short JSON
list, and two histograms with the same bins merge by adding counts (replicas,
restarts). The price is that tests run on binned data (see docs/drift.md).

Values outside [0, 1] are clipped into the end bins and counted in
``clipped`` (a statistic out of range is a bug upstream, but one bad value
must not crash the agent); NaN carries no information about where the
distribution lies, so it is rejected and counted in ``nan`` instead.

>>> h = Histogram(bins=4)
>>> h.add(np.array([0.0, 0.3, 0.3, 1.0, 7.0, float("nan")]))
5
>>> h.counts.tolist(), h.total, h.nan, h.clipped
([1, 2, 0, 2], 5, 1, 1)
>>> Histogram.from_state(h.to_state()) == h
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_BINS = 1000


class Histogram:
    """Counts of values in ``bins`` equal-width bins of [0, 1]; 1.0 falls in the last bin."""

    __slots__ = ("bins", "counts", "total", "nan", "clipped")

    def __init__(self, bins: int = 20) -> None:
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)):
            raise TypeError(f"bins must be an int, got {type(bins).__name__}")
        if not 2 <= bins <= MAX_BINS:
            raise ValueError(f"bins must be in [2, {MAX_BINS}], got {bins}")
        self.bins = int(bins)
        self.counts = np.zeros(self.bins, dtype=np.int64)  # [bins]
        self.total = 0  # sum(counts), kept so readers need not re-sum
        self.nan = 0  # NaN values rejected
        self.clipped = 0  # values outside [0, 1] clipped into the end bins

    def add(self, values: np.ndarray) -> int:
        """Count a batch of values (any shape); return how many were counted (NaN excluded)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return 0
        bad = np.isnan(v)
        n_nan = int(bad.sum())
        if n_nan:
            v = v[~bad]
            self.nan += n_nan
        if v.size == 0:
            return 0
        self.clipped += int(np.count_nonzero((v < 0.0) | (v > 1.0)))
        idx = np.clip(np.floor(v * self.bins), 0, self.bins - 1).astype(np.intp)
        self.counts += np.bincount(idx, minlength=self.bins)
        self.total += int(v.size)
        return int(v.size)

    def add_counts(self, counts: np.ndarray) -> None:
        """Add already-binned counts (same bins), e.g. a replica's window."""
        c = np.asarray(counts)
        if c.shape != (self.bins,):
            raise ValueError(f"expected counts of shape ({self.bins},), got {c.shape}")
        if not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
            raise ValueError("counts must be non-negative integers")
        self.counts += c.astype(np.int64)
        self.total += int(c.sum())

    def merge(self, other: Histogram) -> None:
        """Add another histogram's counts into this one (bins must match).

        >>> a, b = Histogram(bins=4), Histogram(bins=4)
        >>> _ = a.add(np.array([0.1, 0.9])), b.add(np.array([0.1, 0.6]))
        >>> a.merge(b)
        >>> a.counts.tolist(), a
        ([2, 0, 1, 1], Histogram(bins=4, total=4, nan=0, clipped=0))
        """
        if other.bins != self.bins:
            raise ValueError(f"cannot merge {other.bins} bins into {self.bins} bins")
        self.counts += other.counts
        self.total += other.total
        self.nan += other.nan
        self.clipped += other.clipped

    def reset(self) -> None:
        """Empty the histogram (a tumbling window starts again)."""
        self.counts[:] = 0
        self.total = self.nan = self.clipped = 0

    def copy(self) -> Histogram:
        h = Histogram(self.bins)
        h.counts = self.counts.copy()
        h.total, h.nan, h.clipped = self.total, self.nan, self.clipped
        return h

    def probabilities(self) -> np.ndarray:
        """Bin probabilities [bins]; all zeros for an empty histogram."""
        if self.total == 0:
            return np.zeros(self.bins)
        return self.counts / self.total

    def mean(self) -> float:
        """Mean using bin centres (error at most half a bin width); NaN if empty."""
        if self.total == 0:
            return float("nan")
        centres = (np.arange(self.bins) + 0.5) / self.bins
        return float(centres @ self.counts / self.total)

    def quantile(self, q: float) -> float:
        """The q-quantile, interpolated linearly inside its bin; NaN if empty.

        >>> h = Histogram(bins=10)
        >>> _ = h.add(np.linspace(0.0, 0.999, 1000))  # uniform on [0, 1)
        >>> round(h.quantile(0.5), 3), round(h.quantile(0.9), 3), round(h.mean(), 3)
        (0.5, 0.9, 0.5)
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be in [0, 1], got {q}")
        if self.total == 0:
            return float("nan")
        cum = np.cumsum(self.counts)
        target = q * self.total
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, self.bins - 1)
        below = cum[i - 1] if i > 0 else 0
        inside = self.counts[i]
        frac = (target - below) / inside if inside else 0.0
        return float((i + frac) / self.bins)

    def to_state(self) -> dict[str, Any]:
        """JSON-able state."""
        return {
            "bins": self.bins,
            "counts": self.counts.tolist(),
            "nan": self.nan,
            "clipped": self.clipped,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Histogram:
        h = cls(int(state["bins"]))
        counts = np.asarray(state["counts"], dtype=np.int64)
        if counts.shape != (h.bins,) or (counts < 0).any():
            raise ValueError("histogram state: counts do not match bins or are negative")
        h.counts = counts
        h.total = int(counts.sum())
        h.nan = int(state.get("nan", 0))
        h.clipped = int(state.get("clipped", 0))
        return h

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return (
            self.bins == other.bins
            and self.nan == other.nan
            and self.clipped == other.clipped
            and bool(np.array_equal(self.counts, other.counts))
        )

    def __repr__(self) -> str:
        return f"Histogram(bins={self.bins}, total={self.total}, nan={self.nan}, clipped={self.clipped})"
