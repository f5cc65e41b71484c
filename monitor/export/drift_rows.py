"""The drift verdicts as plain rows for ``metrics.DriftCollector``.

Each judgement round updates the latest row of every judged series and paired cohort
(a series keeps its last row between the rounds that judge it), adds the cohort verdicts,
the roll-up of explained cohorts (``monitor.drift.rollup``) and baseline readiness, and
replaces the exported rows at once: the scrape thread reads them without a lock. Rows of
versions no longer remembered are dropped, so label sets stay bounded.

No torch here: the rows are dicts keyed by the metric label names, plus values.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

from monitor.drift.rollup import explained

if TYPE_CHECKING:
    from monitor.drift.baseline import SeriesKey
    from monitor.drift.judge import JudgeReport
    from monitor.drift.paired import PairedReport, PairKey

Rows = dict[str, list[dict]]  # "keys", "cohorts", "paired", "explained", "baselines" -> rows


class DriftRows:
    """The exported drift rows, rebuilt after each judgement round."""

    def __init__(self) -> None:
        self._latest_keys: dict[tuple[str, SeriesKey], dict] = {}
        self._latest_pairs: dict[PairKey, dict] = {}
        self._rows: Rows = {}

    def update(self, report: JudgeReport, paired: PairedReport, *, previous: Mapping[str, str],
               alive: Collection[str], baselines: Mapping[tuple[str, str, str], bool]) -> None:
        """Fold a round's results in and rebuild the rows.

        ``previous``: version -> the version it replaced; ``alive``: the versions still
        remembered; ``baselines``: (version, dimension, cohort) -> whether its baseline is ready.
        """
        for result in report.results:
            self._latest_keys[(result.kind, result.key)] = {
                "kind": result.kind, "model_version": result.key.model_version,
                "reference_version": result.reference_version, "dimension": result.key.dimension,
                "cohort": result.key.cohort, "statistic": result.key.statistic, "layer": result.key.layer,
                "score": result.score, "p_adjusted": result.p_adjusted, "threshold": result.threshold,
                "samples": result.samples, "drifting": int(result.drifting),
            }
        for result in paired.results:
            self._latest_pairs[result.key] = {
                "model_version": result.key.new_version, "previous_version": previous.get(result.key.new_version, ""),
                "dimension": result.key.dimension, "cohort": result.key.cohort, "layer": result.key.layer,
                "mean_js": result.mean_js, "pairs": result.total_pairs, "effective_users": result.effective_users,
                "share_above": result.fraction_above, "changed": int(result.model_caused),
                "window_flagged": int(result.window_flagged),
                "agreement": result.agreement, "served_ratio": result.served_ratio,
            }
        self._prune(alive)
        rolled_up = explained(self._latest_keys.values(),
                              [(c.kind, c.model_version, c.dimension, c.cohort) for c in report.cohorts if c.drifting])
        self._rows = {
            "keys": list(self._latest_keys.values()),
            "cohorts": [
                {"kind": c.kind, "model_version": c.model_version, "reference_version": c.reference_version,
                 "dimension": c.dimension, "cohort": c.cohort, "drifting": int(c.drifting)}
                for c in report.cohorts
            ],
            "paired": list(self._latest_pairs.values()),
            "explained": [
                {"kind": kind, "model_version": version, "dimension": dimension, "cohort": cohort,
                 "by_dimension": by[0], "by_cohort": by[1]}
                for (kind, version, dimension, cohort), by in rolled_up.items()
            ],
            "baselines": [
                {"model_version": v, "dimension": d, "cohort": c, "ready": int(ready)}
                for (v, d, c), ready in baselines.items()
                if v in alive
            ],
        }

    def _prune(self, alive: Collection[str]) -> None:
        """Keep rows of versions still remembered, so label sets stay bounded."""
        remembered = set(alive)
        self._latest_keys = {k: v for k, v in self._latest_keys.items() if k[1].model_version in remembered}
        self._latest_pairs = {k: v for k, v in self._latest_pairs.items() if k.new_version in remembered}

    def rows(self) -> Rows:
        """The current rows (replaced by each round, never mutated)."""
        return self._rows

    def to_state(self) -> dict[str, list[dict]]:
        """The latest row of every series and paired series: what a scale-out judge that takes
        over exports on with (a series keeps its last row until a round judges it again)."""
        return {"keys": list(self._latest_keys.values()), "pairs": list(self._latest_pairs.values())}

    @classmethod
    def from_state(cls, state: Mapping[str, list[dict]]) -> DriftRows:
        """Resume from ``to_state()``; the exported rows are rebuilt by the next round."""
        from monitor.drift.baseline import SeriesKey
        from monitor.drift.paired import PairKey

        rows = cls()
        for row in state["keys"]:
            key = SeriesKey(row["model_version"], row["dimension"], row["cohort"], row["statistic"], int(row["layer"]))
            rows._latest_keys[(row["kind"], key)] = dict(row)
        for row in state["pairs"]:
            pair = PairKey(row["model_version"], row["dimension"], row["cohort"], int(row["layer"]))
            rows._latest_pairs[pair] = dict(row)
        return rows
