"""From p-values to verdicts that neither flood nor flap.

Two pieces shared by the drift judge and the paired old-vs-new comparison:

- ``bh_adjust``: Benjamini-Hochberg adjusted p-values (scipy's
  ``false_discovery_control``). A round judges many series at once (cohorts
  x statistics x layers); testing each at ``alpha`` would raise about
  ``alpha * K`` false flags per round. BH keeps the
  expected share of false flags among all flags (the FDR) at ``alpha``, and
  when nothing has drifted it keeps the chance of any flag at ``alpha``.
- ``Hysteresis``: a flag must repeat ``raise_after`` windows in a row to
  raise drift, and be absent ``clear_after`` windows in a row to clear it,
  so one unlucky window neither pages anyone nor ends an incident.

>>> bh_adjust(np.array([0.01, 0.04, 0.03, 0.5])).round(3).tolist()
[0.04, 0.053, 0.053, 0.5]
>>> h = Hysteresis(raise_after=2, clear_after=2)
>>> [h.update(f) for f in [True, False, True, True, False, True, False, False]]
[False, False, False, True, True, True, True, False]
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up, monotone, capped at 1); same shape as ``p``.

    A thin wrapper over ``scipy.stats.false_discovery_control(p, method="bh")``
    that treats every element as one family (scipy adjusts along one axis),
    accepts an empty array, and keeps this module's NaN contract: one NaN
    p-value makes the whole family NaN (nothing is flagged) instead of raising.

    >>> bh_adjust(np.array([0.001, 0.02, 0.03, 0.8])).round(3).tolist()
    [0.004, 0.04, 0.04, 0.8]
    >>> bh_adjust(np.array([])).size
    0
    """
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    if np.isnan(p).any():
        return np.full(p.shape, np.nan)
    return np.asarray(stats.false_discovery_control(p.ravel(), method="bh"), dtype=np.float64).reshape(p.shape)


class Hysteresis:
    """Consecutive-window hysteresis on a boolean flag; ``drifting`` is the verdict."""

    __slots__ = ("raise_after", "clear_after", "consecutive_flagged", "consecutive_clear", "drifting", "windows")

    def __init__(self, raise_after: int = 2, clear_after: int = 3) -> None:
        if raise_after < 1 or clear_after < 1:
            raise ValueError(f"raise_after and clear_after must be >= 1, got {raise_after}, {clear_after}")
        self.raise_after = int(raise_after)
        self.clear_after = int(clear_after)
        self.consecutive_flagged = 0
        self.consecutive_clear = 0
        self.drifting = False
        self.windows = 0  # windows judged so far

    def update(self, flagged: bool) -> bool:
        """Fold in one judged window; return the verdict after it."""
        self.windows += 1
        if flagged:
            self.consecutive_flagged += 1
            self.consecutive_clear = 0
            if self.consecutive_flagged >= self.raise_after:
                self.drifting = True
        else:
            self.consecutive_clear += 1
            self.consecutive_flagged = 0
            if self.consecutive_clear >= self.clear_after:
                self.drifting = False
        return self.drifting

    def to_state(self) -> dict[str, Any]:
        return {
            "consecutive_flagged": self.consecutive_flagged,
            "consecutive_clear": self.consecutive_clear,
            "drifting": self.drifting,
            "windows": self.windows,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], raise_after: int, clear_after: int) -> Hysteresis:
        """Restore counters; the thresholds come from the (possibly new) config.

        >>> h = Hysteresis(raise_after=2, clear_after=3)
        >>> h.update(True)
        False
        >>> restored = Hysteresis.from_state(h.to_state(), raise_after=2, clear_after=3)
        >>> restored.update(True), restored.windows  # the restart did not lose the first flag
        (True, 2)
        """
        h = cls(raise_after, clear_after)
        h.consecutive_flagged = int(state["consecutive_flagged"])
        h.consecutive_clear = int(state["consecutive_clear"])
        h.drifting = bool(state["drifting"])
        h.windows = int(state["windows"])
        return h
