"""Fold: one version's per-event statistics into the Prometheus histograms and the judge,
once per cohort dimension.

Cohorts by history length use each event's own history length (what the user brought),
not the window the model read: a model with a shorter context must not move every event
into the shortest bucket. The same lengths give the judge's strata, and the users' hashes
are computed once per batch; each dimension is then one ``Judge.observe_batch`` call.

The events' served recommendations (``recommended``) go to the judge too, as mass per
item (``items.served_slots``): what a flooded model serves, attention may not show.

The judge sees head-averaged values only; per-head statistics (when configured) go to
their own histograms as within-version detail.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from monitor.attention.stats import STATISTICS
from monitor.drift.cohorts import CohortAssigner
from monitor.drift.items import Attended, served_slots
from monitor.drift.judge import Judge
from monitor.drift.users import hash_users
from monitor.export.metrics import AgentMetrics
from monitor.stream.windows import Prepared

Labels = dict[str, tuple[str, ...]]  # dimension -> cohort label of each code


class Fold:
    """Folds a prepared batch's statistics into the metrics and the judge."""

    def __init__(self, metrics: AgentMetrics, clock: Callable[[], float]) -> None:
        self._metrics = metrics
        self._clock = clock
        self._processed = metrics.events.labels("processed", "ok")

    def __call__(self, batch: Prepared, statistics: np.ndarray, per_head: np.ndarray | None,
                 attended: Attended | None, assigner: CohortAssigner, judge: Judge) -> tuple[np.ndarray, Labels]:
        """Fold ``statistics`` [B, stats, layers] (and ``per_head`` [B, stats, layers, heads],
        and the attention per item, ``attended``) of ``batch``'s events; returns their cohort
        codes [B, dimensions] and the labels."""
        kept, now = batch.events, batch.now
        version = batch.served.version
        started = time.perf_counter()
        lengths = np.fromiter((len(e.history) for e in kept), dtype=np.int64, count=len(kept))  # [B] own lengths
        codes = assigner.assign([e.context for e in kept], lengths)
        labels = assigner.labels()
        users = hash_users(e.user_id for e in kept)  # [B]
        strata = judge.stratum_of(lengths)  # [B]
        slots = served_slots([[r.item for r in e.recommended] for e in kept])  # the lists the events served
        for column, dimension in enumerate(assigner.dimensions):
            column_codes = codes[:, column]
            dim_labels = labels[dimension]
            self._metrics.attention.fold(version, dimension, column_codes, dim_labels, statistics)
            if per_head is not None:  # within-version detail only: the judge sees head-averaged rows
                self._metrics.attention_per_head.fold(version, dimension, column_codes, dim_labels, per_head)
            judge.observe_batch(version, dimension, column_codes, dim_labels, statistics, users, strata, now,
                                statistics=STATISTICS, attended=attended, served=slots)
        event_seconds = np.fromiter((e.ts for e in kept), dtype=np.float64, count=len(kept)) / 1000.0
        self._metrics.latency.observe_many(np.maximum(0.0, self._clock() - event_seconds))
        self._processed.inc(len(kept))
        self._metrics.observe_stage("fold", time.perf_counter() - started)
        return codes, labels
