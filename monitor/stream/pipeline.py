"""The agent's core, without Kafka: records in; attention statistics folded into
metrics, per-cohort drift windows and baselines; offsets tracked for commit.

    record bytes -> decode (bad: dead-letter + count)                  intake
      -> group by model_version (unknown: held for a grace period,
         then dead-lettered)                                           intake
      -> raw item ids -> model indices (unknown items dropped and
         counted)                                                      windows
      -> recompute attention rows (fast path, length-sorted chunks; in
         a child process by default, see monitor.attention.forward)    windows
      -> statistics [B, stats, layers]                                 windows
      -> fold into Prometheus histograms and the judge, per cohort
         dimension                                                     fold
      -> after a model update: recompute the previous version on a
         sample of the same events and fold the paired divergence      updates

The right-hand column names the module of ``monitor.stream`` that does each step;
:class:`Pipeline` only orchestrates them. A judgement round (:meth:`Pipeline.run_judgement`)
first retires the versions absent from the stream for ``retire_after_s`` (the judge, the
paired comparison, the update bookkeeping and the version's exported series forget it),
then shapes the verdicts into the rows the drift metrics export (``monitor.export.drift_rows``,
with the roll-up of explained cohorts in ``monitor.drift.rollup``). How full the bounded
drift state is, is exported from ``monitor.export.usage``.

The daemon (``monitor.stream.agent``) drives this with a Kafka source; ``attnmon demo``
drives it with an in-process source. Either way the same code runs.

A batch can be *deferred* (``process(defer=...)``): its passes are started, and its
statistics are folded by the next call, after that call has started its own passes.
The forward process then never waits for the worker's serial fold. A deferred batch's
offsets are seen but must not be committed before :meth:`Pipeline.flush`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from monitor.attention.recompute import StartedChunk
from monitor.attention.registry import ModelRegistry, ServedModel
from monitor.drift.cohorts import CohortAssigner
from monitor.drift.items import Attended
from monitor.drift.judge import Judge, JudgeReport
from monitor.drift.paired import PairedComparison, PairedReport
from monitor.export.drift_rows import DriftRows
from monitor.export.item_rows import ItemRows
from monitor.export.live import LiveState
from monitor.export.metrics import AgentMetrics
from monitor.export.usage import SeriesUsage
from monitor.stream.config import PipelineConfig
from monitor.stream.events import Event, InvalidEvent
from monitor.stream.fold import Fold
from monitor.stream.intake import DeadLetter, HoldBuffer, Item, RecordLike, Rejects, decode_records, group_by_version
from monitor.stream.offsets import OffsetTracker
from monitor.stream.updates import ModelUpdates, Pairing
from monitor.stream.windows import Prepared, Recompute, window_histories

__all__ = ["DeadLetter", "Pipeline", "PipelineConfig", "RecordLike"]

log = logging.getLogger(__name__)


class Pipeline:
    """Runs a polled batch through intake, windows, recompute, fold and pairing, and a
    judgement round into the exported drift rows."""

    def __init__(
        self,
        registry: ModelRegistry,
        assigner: CohortAssigner,
        judge: Judge,
        paired: PairedComparison,
        metrics: AgentMetrics,
        dead_letter: DeadLetter,
        config: PipelineConfig = PipelineConfig(),
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.assigner = assigner
        self.judge = judge
        self.paired = paired
        self.metrics = metrics
        self.config = config
        self.offsets = OffsetTracker()
        self._clock = clock
        self._reject = Rejects(dead_letter, metrics)
        self._held = HoldBuffer(metrics, self._reject, max_held=config.max_held, max_bytes=config.max_held_bytes,
                                grace_s=config.unknown_version_grace_s, limits=config.limits, clock=clock)
        self._recompute = Recompute(registry, config, metrics)
        self._fold = Fold(metrics, clock)
        self._updates = ModelUpdates(metrics, config.max_versions_remembered)
        self.pairing = Pairing(registry, self._recompute, config, metrics, served_slots=paired.config.served_slots)
        # Pairs a folded batch: (batch, cohort codes [B, dimensions], labels). A scale-out replica
        # replaces it (monitor.stream.replica): it pairs by each partition's versions, into partials.
        self.pair: Callable[[Prepared, np.ndarray, dict[str, tuple[str, ...]]], None] = self._pair
        self._drift_rows = DriftRows()
        self._item_rows = ItemRows(config.items_exported)
        self._usage = SeriesUsage(judge, paired)
        self.live = LiveState(bins=judge.config.bins, clock=clock)  # what the page at / shows
        self._pending: list[Prepared] = []  # a deferred batch, folded by the next call or flush()
        self.last_report: JudgeReport | None = None
        self.last_paired: PairedReport | None = None

    # -- intake --------------------------------------------------------------------------
    def decode(self, records: Sequence[RecordLike]) -> list[Event | InvalidEvent]:
        """Decode a polled batch, one outcome per record. Pure: the agent runs it on its
        poll thread, so the worker that owns the state spends its time on folding."""
        return decode_records(records, self.config.limits, self.metrics)

    def process(self, records: Sequence[RecordLike], decoded: Sequence[Event | InvalidEvent] | None = None,
                *, defer: Callable[[], bool] | None = None) -> int:
        """Fold a polled batch in (``decoded``: its :meth:`decode`, if already done);
        returns how many events this call folded.

        A batch deferred by the previous call is folded here, once this batch's passes
        are started. Then, if ``defer`` says so (the agent: another batch is waiting),
        this batch is left for the next call or :meth:`flush`.
        """
        if decoded is None:
            decoded = self.decode(records)
        started = time.perf_counter()
        prepared = []
        for version, items in group_by_version(records, decoded, self.offsets, self._reject).items():
            served = self.registry.get(version)
            if served is None:
                self._held.hold(items)
            elif (batch := self._prepare(served, items)) is not None:
                prepared.append(batch)
        folded = self.flush()  # the previous batch, while this one's passes run
        folded += self.retry_held()
        if defer is not None and prepared and defer():
            self._pending = prepared
        else:
            folded += sum(self._finish(batch) for batch in prepared)
        self.metrics.batch_events.observe(len(records))
        self.metrics.observe_stage("batch", time.perf_counter() - started)
        return folded

    def flush(self) -> int:
        """Fold a deferred batch, if any; returns how many events that folded."""
        pending, self._pending = self._pending, []
        return sum(self._finish(batch) for batch in pending)

    def has_pending(self) -> bool:
        return bool(self._pending)

    def warm(self, version: str) -> None:
        """Start forward-pass processes and load ``version`` there ahead of traffic."""
        served = self.registry.get(version)
        if served is not None:
            self._recompute.warm(served)

    def close(self) -> None:
        """Stop the forward passes' threads or processes (after the last batch)."""
        self._recompute.close()

    def has_held(self) -> bool:
        return bool(self._held)

    def forget_held(self, partitions: Sequence[tuple[str, int]]) -> int:
        """Partitions are moving to another member: dead-letter the events held for them (the
        new owner reads on after the committed offset, past them). Returns how many."""
        return self._held.forget(partitions)

    def retry_held(self) -> int:
        """Fold held events whose version has appeared; dead-letter those out of time."""
        folded = 0
        for version, items in self._held.take_ready(self.registry.get).items():
            served = self.registry.get(version)
            if served is not None:
                batch = self._prepare(served, items)
                folded += 0 if batch is None else self._finish(batch)
        return folded

    # -- folding -------------------------------------------------------------------------
    def _prepare(self, served: ServedModel, items: list[Item]) -> Prepared | None:
        """Look the windows up and start their forward passes; None if no event is usable."""
        version = served.version
        now = self._clock()
        self._updates.note(version, now, self.judge)
        previous = self._updates.previous.get(version)
        pairing = previous is not None and version in self.judge.updates
        kept, histories, _, skipped, truncated = window_histories(served, items, reject=self._reject)
        if skipped:
            self.metrics.unknown_items.labels(version).inc(skipped)
        if truncated:
            self.metrics.truncated.labels(version).inc(truncated)
        if not kept:
            return None
        passes = self._recompute.start(served, histories, served.max_len)
        return Prepared(served, kept, histories, passes, previous if pairing else None, now)

    def _finish(self, batch: Prepared) -> int:
        """Statistics of a prepared batch, folded into metrics, the judge and pairs."""
        statistics, per_head, attended = self._statistics(batch.served, batch.passes)
        codes, labels = self._fold(batch, statistics, per_head, attended, self.assigner, self.judge)
        self.live.observe(batch.served.version, self.assigner.dimensions, codes, labels, statistics,
                          batch.events[-1] if batch.events else None)
        self.pair(batch, codes, labels)
        return len(batch.events)

    def _pair(self, batch: Prepared, codes: np.ndarray, labels: dict[str, tuple[str, ...]]) -> None:
        """One process: the batch's version is paired with the one it replaced while the judge updates it."""
        if batch.previous is not None:
            self.pairing(batch.served, batch.previous, batch.events, codes, labels, self.assigner.dimensions,
                         self.paired)

    def _statistics(self, served: ServedModel,
                    passes: list[StartedChunk]) -> tuple[np.ndarray, np.ndarray | None, Attended]:
        """The passes' statistics: [B, stats, layers], per head [B, stats, layers, heads] or
        None, and the attention per item (see :meth:`Recompute.statistics`; a seam that
        bench.detection records)."""
        return self._recompute.statistics(served, passes)

    # -- judgement -----------------------------------------------------------------------
    def run_judgement(self) -> tuple[JudgeReport, PairedReport]:
        """Retire absent versions, judge the windows and the paired comparison now, and
        rebuild the drift rows."""
        started = time.perf_counter()
        now = self._clock()
        self.retire_absent()
        report = self.judge.judge(now)
        paired = self.paired.judge(now)
        self.last_report, self.last_paired = report, paired
        self._drift_rows.update(report, paired, previous=self._updates.previous, alive=self._updates.versions_seen,
                                baselines=self.judge.baselines.cohort_status())
        self._item_rows.update(report.items, alive=self._updates.versions_seen, titles=self.title)
        self.live.record(report, paired, self.judge, self._updates.previous, self.registry, titles=self.title)
        self.metrics.judge_runs.inc()
        self.metrics.observe_stage("judge", time.perf_counter() - started)
        for verdict in report.cohorts:
            if verdict.drifting:
                log.info("drift %s: version %s vs %s, %s=%s, series %s", verdict.kind, verdict.model_version,
                         verdict.reference_version, verdict.dimension, verdict.cohort, verdict.drifting_series)
        return report, paired

    def drift_rows(self) -> dict[str, list[dict]]:
        """Rows for ``metrics.DriftCollector`` (read by the scrape thread; replaced, never mutated)."""
        return {**self._drift_rows.rows(), **self._item_rows.rows()}

    def title(self, version: str, item: int) -> str | None:
        """An item's catalogue title in a loaded version's catalogue (None if it is not loaded or lacks it)."""
        if version not in self.registry.loaded_versions():
            return None
        served = self.registry.get(version)
        if served is None:
            return None
        index = int(served.to_indices(np.array([item]))[0])
        return served.checkpoint.catalog.titles[index] if index > 0 else None

    def watch_usage(self, judge: Judge, paired: PairedComparison) -> None:
        """Report these components' series in the usage rows (a replica: its judge role's while
        it is elected, its own fold's otherwise)."""
        self._usage.adopt(judge, paired)

    def usage_rows(self) -> dict[str, list[dict]]:
        """Rows for ``metrics.UsageCollector``: series against their limits, and when each
        tracked version was last seen (read by the scrape thread: copies, nothing iterated live)."""
        last_seen = dict(self._updates.last_seen)
        return {"series": self._usage.rows(),
                "versions": [{"model_version": v, "last_seen": t} for v, t in last_seen.items()]}

    # -- retirement ----------------------------------------------------------------------
    def retire_absent(self, count: bool = True) -> list[str]:
        """Forget every version absent from the stream for ``retire_after_s``; returns them.
        ``count``: into ``attnmon_model_versions_retired_total`` (a replica counts its judge's
        retirements there instead, not its own series').

        A version the registry still holds in memory is in use (scored, or the previous
        version of a paired comparison) and stays. Forgotten: the judge's windows, baselines,
        verdicts and update, the paired comparison's series, the update bookkeeping, and
        every exported series labelled with the version (the drift rows at this round).
        """
        in_use = set(self.registry.loaded_versions())
        absent = self._updates.absent(self.config.retire_after_s, in_use)
        for version, absent_s in absent.items():
            series, pairs = len(self.judge), len(self.paired)
            self.judge.forget(version)
            self.paired.forget(version)
            previous = self._updates.forget(version)
            self.metrics.forget_version(version, previous)
            if count:
                self.metrics.versions_retired.inc()
            log.info("retired model version %s: absent from the stream for %.0f s (retire_after_s %.0f); "
                     "freed %d judge and %d paired series", version, absent_s, self.config.retire_after_s,
                     series - len(self.judge), pairs - len(self.paired))
        return list(absent)

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        if self._pending:  # its offsets are seen: a checkpoint now would skip its events after a crash
            raise RuntimeError("state() while a batch is deferred: flush() first")
        return {
            "judge": self.judge.to_state(),
            "paired": self.paired.to_state(),
            "cohorts": self.assigner.state(),
            "held": self._held.to_state(),
            **self._updates.state(),  # versions_seen, previous, last_seen
        }

    def restore(self, state: dict[str, Any], judge: Judge, paired: PairedComparison, assigner: CohortAssigner) -> None:
        """Adopt restored components and the version history (with last-seen times) from a checkpoint."""
        self.judge, self.paired, self.assigner = judge, paired, assigner
        self._usage.adopt(judge, paired)
        self._updates.restore(state, judge, self._clock())
        self._held.restore(state.get("held", []))
