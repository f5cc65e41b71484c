"""How full the bounded drift state is, as rows for ``metrics.UsageCollector``.

The judge and the paired comparison each hold at most ``max_keys`` series (cohort labels
come from untrusted events). Beyond the cap a new series is refused and only counted in
their ``counts["refused_key_cap"]``: a new model version or cohort then goes unjudged, and
nothing else says so. These rows make it visible: series in use against the limit, and
the observations refused.

Read by the scrape thread while the worker folds: only lengths and integer counters are
read, never a container iterated.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from monitor.drift.judge import Judge
    from monitor.drift.paired import PairedComparison

REFUSED = "refused_key_cap"  # the components' count of refused observations


class SeriesUsage:
    """Series in use, the limit and refusals, per component (``judge``, ``paired``)."""

    def __init__(self, judge: Judge, paired: PairedComparison) -> None:
        self.adopt(judge, paired)

    def adopt(self, judge: Judge, paired: PairedComparison) -> None:
        """Watch these components (at start, and after a restore replaced them).

        Their refusal counts come back with a checkpoint; the exported counter counts from
        this process's start, as every attnmon counter does, so that a restart from an older
        checkpoint never reads as refusals (a counter that went down is a reset to Prometheus).
        """
        self._watched = (judge, paired, judge.counts[REFUSED], paired.counts[REFUSED])  # one assignment: atomic

    def rows(self) -> list[dict]:
        judge, paired, judge_before, paired_before = self._watched
        return [
            # A new judge series needs a window and a baseline; either store at the cap refuses it.
            {"component": "judge", "in_use": max(len(judge), len(judge.baselines)),
             "limit": judge.config.max_keys, "refused": judge.counts[REFUSED] - judge_before},
            {"component": "paired", "in_use": len(paired),
             "limit": paired.config.max_keys, "refused": paired.counts[REFUSED] - paired_before},
        ]
