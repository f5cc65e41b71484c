"""What the live page shows, as one JSON-able snapshot rebuilt after each judgement round.

The pipeline feeds :class:`LiveState` on its worker thread: every folded batch's
statistics (``observe``) and every judgement round's reports (``record``). The HTTP
thread reads :meth:`LiveState.snapshot`, a dict replaced whole by each round and never
mutated, so it needs no lock (as ``DriftRows``).

The snapshot holds:

- ``series``: per (dimension, cohort), one point per round: the mean of each attention
  statistic (last layer) over the round's events of the version serving most of them,
  and the mean of the reference the judge compares that version with (its own frozen
  baseline, or the previous version's recent traffic during an update). Both means are
  over the judge's bins (bin centres), so a stable cohort sits on its reference;
- ``verdicts``: every cohort verdict of a remembered version, drifting ones first, with the
  judged series' score, effect floor (threshold), p-value and BH-adjusted p-value (a
  model_update verdict is ``final`` once the new version's own baseline froze: its alert
  stays while the version serves);
- ``update``: the latest model update and its paired comparison, per cohort and layer;
- ``heatmap``: a recent event's attention, as ``attnmon explain`` computes it;
- ``log``: verdict changes (raised or cleared), newest last, each with a sequence
  number (``changes(after)`` gives the ones a reader has not seen).

Everything is bounded: ``rounds`` points per cohort, ``log_size`` changes.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from monitor.attention.stats import STATISTICS

if TYPE_CHECKING:
    from monitor.attention.registry import ModelRegistry
    from monitor.drift.judge import Judge, JudgeReport
    from monitor.drift.paired import PairedReport
    from monitor.stream.events import Event

log = logging.getLogger(__name__)

HEATMAP_POSITIONS = 50  # most recent history positions drawn (as `attnmon explain --max-positions`)
TOP_COHORTS = 12  # cohorts shown with their top attended items (narrowed ones first)
TOP_ITEMS = 5  # items per cohort


class LiveState:
    """Bounded live view of the agent's statistics and verdicts (see the module docstring)."""

    def __init__(self, *, bins: int = 20, rounds: int = 120, log_size: int = 200,
                 clock: Callable[[], float] = time.time) -> None:
        self._bins = bins
        self._rounds = rounds
        self._clock = clock
        # (version, dimension, cohort) -> [sums per statistic [S], events] of the open round
        self._open: dict[tuple[str, str, str], list] = {}
        self._series: dict[tuple[str, str], deque[dict]] = {}
        self._latest: dict[tuple, dict] = {}  # (kind, series key) -> latest judged result
        self._latest_pairs: dict[tuple, dict] = {}  # pair key -> latest paired result
        self._latest_items: dict[tuple, dict] = {}  # (kind, cohort key) -> latest top items, layer 0
        self._drifting: dict[tuple[str, str, str, str], bool] = {}
        self._changed: dict[tuple[str, str, str], bool] = {}  # paired verdict per cohort
        self._log: deque[dict] = deque(maxlen=log_size)
        self._seq = 0
        self._events = 0
        self._last_event: Event | None = None
        self._heatmap: dict | None = None
        self._snapshot: dict[str, Any] = {"round": 0, "events": 0, "series": [], "verdicts": [], "update": None,
                                          "heatmap": None, "log": []}

    # -- intake (worker thread) ------------------------------------------------------------
    def observe(self, version: str, dimensions: Sequence[str], codes: np.ndarray,
                labels: Mapping[str, Sequence[str]], statistics: np.ndarray, last: Event | None) -> None:
        """Fold one version's batch: ``codes`` [B, dimensions], ``statistics`` [B, stats, layers]."""
        if len(statistics) == 0:
            return
        values = statistics[:, :, -1]  # [B, S] last layer
        binned = (np.clip(np.floor(np.nan_to_num(values, nan=0.0) * self._bins), 0, self._bins - 1) + 0.5) / self._bins
        for column, dimension in enumerate(dimensions):
            column_codes = codes[:, column]
            names = labels[dimension]
            counts = np.bincount(column_codes, minlength=len(names))
            for code in np.flatnonzero(counts).tolist():
                sums = binned[column_codes == code].sum(axis=0)
                entry = self._open.setdefault((version, dimension, names[code]), [np.zeros(values.shape[1]), 0])
                entry[0] += sums
                entry[1] += int(counts[code])
        self._events += len(statistics)
        if last is not None:
            self._last_event = last

    def record(self, report: JudgeReport, paired: PairedReport, judge: Judge,
               previous: Mapping[str, str], registry: ModelRegistry | None = None,
               titles: Callable[[str, int], str | None] | None = None) -> None:
        """Close the round: points, verdicts, paired results, top items, a heatmap; rebuild the snapshot."""
        now = self._clock()
        self._close_round(report.round, now, judge)
        for result in report.results:
            key = result.key
            self._latest[(result.kind, key)] = {
                "statistic": key.statistic, "layer": key.layer, "score": result.score, "threshold": result.threshold,
                "p_value": result.p_value, "p_adjusted": result.p_adjusted, "flagged": result.flagged,
                "drifting": result.drifting, "samples": result.samples,
            }
        for result in paired.results:
            self._latest_pairs[result.key] = {
                "new_version": result.key.new_version, "dimension": result.key.dimension,
                "cohort": result.key.cohort, "layer": result.key.layer, "pairs": result.total_pairs,
                "window_pairs": result.pairs, "effective_users": result.effective_users,
                "share_above": result.fraction_above, "cutoff": result.cutoff,
                "benign_fraction": result.benign_fraction, "mean_js": result.mean_js,
                "p_value": result.p_value, "p_adjusted": result.p_adjusted, "model_caused": result.model_caused,
                "flagged": result.window_flagged, "agreement": result.agreement, "agreement_se": result.agreement_se,
                "agreement_pairs": result.agreement_pairs, "agreement_p_adjusted": result.agreement_p_adjusted,
                "served_ratio": result.served_ratio, "served_share": result.served_share,
                "served_previous_share": result.served_previous_share, "served_lists": result.served_lists,
                "served_p_adjusted": result.served_p_adjusted,
            }
        versions = {v.model_version for v in report.cohorts}
        self._latest = {k: r for k, r in self._latest.items() if k[1].model_version in versions}
        self._latest_pairs = {k: r for k, r in self._latest_pairs.items() if k.new_version in judge.updates}
        verdicts = self._verdicts(report)
        update = self._update(judge, previous)
        self._note_changes(report.round, now, verdicts, update)
        if registry is not None and self._last_event is not None:
            self._heatmap = heatmap_of(self._last_event, registry)
        self._snapshot = {
            "round": report.round, "time": now, "events": self._events,
            "statistics": list(STATISTICS),
            "series": [{"dimension": d, "cohort": c, "points": list(points)}
                       for (d, c), points in sorted(self._series.items())],
            "verdicts": verdicts, "update": update, "heatmap": self._heatmap, "log": list(self._log),
            "top_items": self._top_items(report, titles),
        }

    def _top_items(self, report: JudgeReport, titles: Callable[[str, int], str | None] | None) -> list[dict]:
        """The items judged this round that collect the most attention, per (kind, version,
        cohort), layer 0 (the most recent results kept; bounded: ``TOP_COHORTS`` cohorts,
        ``TOP_ITEMS`` items each)."""
        for result in report.items:
            if result.layer != 0:
                continue
            self._latest_items[(result.kind, result.key)] = {
                "kind": result.kind, "model_version": result.key.model_version,
                "reference_version": result.reference_version, "dimension": result.key.dimension,
                "cohort": result.key.cohort, "narrowed": result.drifting, "score": result.score,
                "top_share": result.top_share, "reference_top_share": result.reference_top_share,
                "items": [{"item": item, "title": (titles(result.key.model_version, item) if titles else None),
                           "share": share, "reference_share": reference}
                          for item, share, reference in result.top[:TOP_ITEMS]],
            }
        versions = {r.key.model_version for r in report.items} or {k.model_version for _, k in self._latest_items}
        self._latest_items = {k: v for k, v in self._latest_items.items() if k[1].model_version in versions}
        rows = sorted(self._latest_items.values(), key=lambda r: (not r["narrowed"], -r["top_share"]))
        return rows[:TOP_COHORTS]

    def _close_round(self, round_: int, now: float, judge: Judge) -> None:
        by_cohort: dict[tuple[str, str], tuple[str, list]] = {}
        for (version, dimension, cohort), entry in self._open.items():
            best = by_cohort.get((dimension, cohort))
            if best is None or entry[1] > best[1][1]:
                by_cohort[(dimension, cohort)] = (version, entry)
        self._open = {}
        for (dimension, cohort), (version, (sums, events)) in by_cohort.items():
            reference, kind, reference_version = self._reference_means(judge, version, dimension, cohort)
            points = self._series.setdefault((dimension, cohort), deque(maxlen=self._rounds))
            points.append({"round": round_, "time": now, "version": version, "events": events,
                           "values": dict(zip(STATISTICS, (sums / events).round(4).tolist())),
                           "reference": reference, "reference_kind": kind, "reference_version": reference_version})

    def _reference_means(self, judge: Judge, version: str, dimension: str,
                         cohort: str) -> tuple[dict[str, float] | None, str, str]:
        """Mean of each statistic (last layer) in the reference the judge holds for the cohort now."""
        reference, kind = judge.reference_of(version, dimension, cohort)
        if reference is None:
            return None, kind, ""
        counts = reference.sample.counts.sum(axis=1)  # [series, bins]
        centres = (np.arange(counts.shape[1]) + 0.5) / counts.shape[1]
        last = max(layer for _, layer in reference.series)
        means = {}
        for row, (statistic, layer) in enumerate(reference.series):
            total = counts[row].sum()
            if layer == last and total > 0:
                means[statistic] = round(float((counts[row] * centres).sum() / total), 4)
        return means, kind, reference.version

    def _verdicts(self, report: JudgeReport) -> list[dict]:
        out = []
        for verdict in report.cohorts:  # a final model_update verdict stays: its alert does while the version serves
            series = [dict(r) for (kind, key), r in self._latest.items()
                      if kind == verdict.kind and key.model_version == verdict.model_version
                      and key.dimension == verdict.dimension and key.cohort == verdict.cohort]
            series.sort(key=lambda r: (not r["drifting"], -r["score"] / max(r["threshold"], 1e-9)))
            out.append({"kind": verdict.kind, "model_version": verdict.model_version,
                        "reference_version": verdict.reference_version, "dimension": verdict.dimension,
                        "cohort": verdict.cohort, "drifting": verdict.drifting, "final": not verdict.active,
                        "drifting_series": [list(s) for s in verdict.drifting_series], "series": series,
                        "paired": (self._paired_status(verdict.model_version, verdict.dimension, verdict.cohort)
                                   if verdict.kind == "model_update" else None)})
        out.sort(key=lambda v: (not v["drifting"], v["kind"] != "model_update", v["dimension"], v["cohort"]))
        return out

    def _paired_status(self, version: str, dimension: str, cohort: str) -> dict | None:
        """The paired comparison of a cohort of a new version: its layers' latest results."""
        layers = [r for k, r in self._latest_pairs.items()
                  if k.new_version == version and k.dimension == dimension and k.cohort == cohort]
        if not layers:
            return None
        layers.sort(key=lambda r: r["layer"])
        confirms = any(r["model_caused"] for r in layers)
        return {"status": "confirms" if confirms else "does not confirm", "layers": layers}

    def _update(self, judge: Judge, previous: Mapping[str, str]) -> dict | None:
        updates = judge.updates
        if not updates:
            return None
        version, update = max(updates.items(), key=lambda item: item[1].at)
        cohorts = sorted((r for k, r in self._latest_pairs.items() if k.new_version == version),
                         key=lambda r: (r["dimension"], r["cohort"], r["layer"]))
        return {"new_version": version, "previous_version": previous.get(version, update.previous_version),
                "at": update.at, "results": cohorts}

    def _note_changes(self, round_: int, now: float, verdicts: list[dict], update: dict | None) -> None:
        """Log each cohort verdict that was raised or cleared, and each paired verdict likewise."""
        seen = set()
        for v in verdicts:
            key = (v["kind"], v["model_version"], v["dimension"], v["cohort"])
            seen.add(key)
            if self._drifting.get(key, False) != v["drifting"]:
                self._append({"round": round_, "time": now, "what": "drift", **v})
            self._drifting[key] = v["drifting"]
        for key in [k for k in self._drifting if k not in seen]:  # no longer in force: forget it
            del self._drifting[key]
        if update is None:
            return
        by_cohort: dict[tuple[str, str, str], list[dict]] = {}
        for r in update["results"]:
            by_cohort.setdefault((r["new_version"], r["dimension"], r["cohort"]), []).append(r)
        for key, layers in by_cohort.items():
            changed = any(r["model_caused"] for r in layers)
            if self._changed.get(key, False) != changed:
                self._append({"round": round_, "time": now, "what": "paired", "model_version": key[0],
                              "previous_version": update["previous_version"], "dimension": key[1],
                              "cohort": key[2], "model_caused": changed, "layers": layers})
            self._changed[key] = changed

    def _append(self, entry: dict) -> None:
        self._seq += 1
        self._log.append({"seq": self._seq, **entry})

    # -- readers (any thread) ----------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The latest snapshot (replaced by each round, never mutated)."""
        return self._snapshot

    def changes(self, after: int = 0) -> list[dict]:
        """Logged verdict changes with a sequence number above ``after``, oldest first."""
        return [entry for entry in list(self._log) if entry["seq"] > after]


def heatmap_of(event: Event, registry: ModelRegistry, max_positions: int = HEATMAP_POSITIONS) -> dict | None:
    """One event's attention as ``attnmon explain`` computes it: rows (layer, head and the
    head average per layer) over the most recent ``max_positions`` history positions."""
    from monitor.tools.explain import explain, heatmap_rows

    try:
        explanation = explain(event, registry, max_positions=max_positions)
    except Exception as error:  # noqa: BLE001 -- a picture must never stop the agent
        log.debug("no heatmap for event %r: %s", event.event_id, error)
        return None
    served = registry.get(explanation.model_version)
    n = explanation.weights.shape[-1]
    shown = min(n, max_positions)
    matrix, rows = heatmap_rows(explanation.weights[..., n - shown:])
    catalog = served.checkpoint.catalog if served is not None else None
    columns = []
    for item in explanation.items[n - shown:].tolist():
        index = int(served.to_indices(np.asarray([item]))[0]) if served is not None else -1
        title = catalog.titles[index] if catalog is not None and index >= 0 else str(item)
        genres = "|".join(catalog.item_genres[index]) if catalog is not None and index >= 0 else ""
        columns.append({"item": item, "title": title, "genres": genres})
    return {"event_id": explanation.event_id, "user_id": explanation.user_id,
            "model_version": explanation.model_version, "rows": rows, "columns": columns,
            "matrix": np.round(matrix, 4).tolist(), "hidden": n - shown, "text": explanation.text}
