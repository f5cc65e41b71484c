"""The daemon as one replica of many (``scale.mode: replica``; docs/architecture.md, "Scale-out").

A ``Replica`` is the ``Agent`` with three things changed:

- **fold into partials.** Each polled batch is cut per partition into runs of one event-time
  window (``Partitions.split``), which give each event its partial; the batch then goes
  through the same pipeline (decode, windows, recompute, fold) at once, with a
  ``PartialSink`` in the judge's place that adds each event's binned statistics to its own
  partial (``PartialSink.rows``). The partials sealed in the batch are published after it,
  with the partition's progress record (``scale.publish``); a partition at its log end for
  ``scale.idle_s`` seals its open window and says it is idle.
- **state lives in Kafka, not on disk.** A newly assigned partition resumes at the offset of
  its last progress record, with that watermark; there is no local checkpoint and no
  commit (the progress records are the offsets). The partial that was open when a replica
  died is folded again by the next owner and replaces nothing, since it was never published.
- **pairing into partials.** After a model update a replica recomputes the previous version
  on the sampled events of its partitions, as one process does (``Pairing.pair``: the sample
  is a function of each event), and folds each pair into its event's partial
  (``Partial.pairs``). The previous version is the partition's own log's
  (``Partitions.previous``), so it does not depend on who holds the partition; the judge
  merges the paired parts of every partition and judges them each round.
- **one judge.** Every replica is a member of the judge election (``JudgeElection``); the
  elected one runs ``JudgeRole`` between polls and exports the drift and paired verdict
  metrics. The others export none: an empty ``DriftCollector`` yields no samples.

What a replica does not do (docs/architecture.md, "Scale-out"): hold events of a version
not published yet (they are dead-lettered at once, so a partial depends on the log only),
and the live page's verdict panels (the page shows this replica's statistics only).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from monitor.drift.judge import Judge, JudgeReport
from monitor.drift.paired import PairedReport
from monitor.drift.partial import Partial, PartialSink, Partitions
from monitor.export.metrics import ScaleMetrics
from monitor.settings import Settings
from monitor.stream.agent import Agent
from monitor.stream.events import Event
from monitor.stream.pipeline import RecordLike
from monitor.stream.scale import Election, JudgeRole, Table, progress, publish
from monitor.stream.source import Partition, Sink, SourceFactory
from monitor.stream.updates import fold_pairs
from monitor.stream.windows import Prepared

log = logging.getLogger(__name__)

JUDGE_STEP_S = 0.5  # how often the election is polled and, if elected, closed windows judged


@dataclasses.dataclass
class ScaleParts:
    """What a replica needs from Kafka besides its source (``monitor.stream.kafka`` builds them)."""

    partials: Table  # partials + progress records (compacted, one partition)
    state: Table  # the judge's state (compacted, one partition)
    election: Election
    partitions: int  # of the events topic: the judge waits for every one's watermark
    close: Callable[[], None] = lambda: None


class Replica(Agent):
    def __init__(self, settings: Settings, source_factory: SourceFactory, sink: Sink, scale: ScaleParts,
                 registry: CollectorRegistry | None = None) -> None:
        self._scale = scale
        self._rows: dict[str, list[dict]] = {}
        super().__init__(settings, source_factory, sink, registry)
        self.partitions = Partitions(self.pipeline.judge, settings.intervals.judge_s)  # type: ignore[arg-type]
        self.role = JudgeRole(scale.election, scale.partials, scale.state, scale.partitions,
                              settings.intervals.judge_s, settings.judge, keep=1, paired_config=settings.paired,
                              items_exported=settings.pipeline.items_exported, titles=self.pipeline.title,
                              retire_after_s=settings.pipeline.retire_after_s)
        self._next: dict[int, int] = {}  # partition -> the offset after the last record folded
        self._last_record: dict[int, float] = {}  # partition -> monotonic time of its last record
        self._idle: set[int] = set()  # partitions whose idle progress is published
        self._first_read: dict[int, int] = {}  # partition -> the first offset this replica read of it
        self.scale_metrics = ScaleMetrics(self.registry)
        self._partial_of: dict[int, Partial] = {}  # id(event) -> its partial, for the batch being folded
        # Route the fold (monitor.stream.fold) through _route: a polled batch mixes partitions.
        self._pipeline_fold = self.pipeline._fold
        self.pipeline._fold = self._route  # type: ignore[method-assign]
        self.pipeline.pair = self._pair

    # -- the hooks of Agent -----------------------------------------------------------------
    def _new_judge(self) -> Judge:
        return PartialSink(self.settings.judge)

    def _pipeline_config(self):
        # No hold buffer: an event held until its version appears would be folded into
        # whichever partial is open then, which depends on timing, not on the log.
        return dataclasses.replace(self.settings.pipeline, max_held=0)

    def _drift_rows(self) -> dict[str, list[dict]]:
        return self._rows  # empty unless judging: only the judge exports drift verdicts

    def _restore(self) -> None:
        """Nothing on disk: partitions resume from their progress records, the judge from its state topic."""

    def _on_assigned(self, partitions: list[Partition]) -> dict[Partition, int]:
        """Resume each partition after its last published partial, with that watermark.

        One without a published partial starts where ``kafka.auto_offset_reset`` says: with
        ``earliest`` at its log's start (offset 0: below the log start, the consumer resets
        to the earliest); with ``latest`` at its end, unless this replica read it before,
        then at the first offset it read. Both are a seek where possible: a member assigned a
        partition it held before keeps its fetch position (kafka-python), past the events of
        the open partial its revocation dropped, which would then never be folded. (Under
        ``latest``, events another replica read of a partition, in the window before its
        first partial was published, are skipped if the partition moves meanwhile.)"""
        records = progress(self._scale.partials)
        earliest = self.settings.kafka.auto_offset_reset == "earliest"
        seeks: dict[Partition, int] = {}
        for tp in partitions:
            p = tp[1]
            mine = records.get(p, {})
            self.partitions.assign(p, sealed=int(mine.get("sealed", -1)), versions=mine.get("versions", ()))
            if "next" in mine:
                seeks[tp] = self._next[p] = int(mine["next"])
            elif earliest:
                seeks[tp] = 0
            elif p in self._first_read:
                seeks[tp] = self._first_read[p]
            self._last_record[p] = time.monotonic()
            self._idle.discard(p)
        log.info("assigned %s; resuming at %s", partitions, seeks)
        return seeks

    def _on_revoked(self, partitions: list[Partition]) -> None:
        """Finish the batch; the partitions' open partials are dropped (never published): the
        next owner folds those events again from the last progress record."""
        self._drain()
        for tp in partitions:
            self.partitions.revoke(tp[1])
            self._next.pop(tp[1], None)
            self._idle.discard(tp[1])
            try:
                self.metrics.lag.remove(tp[0], str(tp[1]))
            except KeyError:
                pass
        log.info("revoked %s", partitions)

    def checkpoint(self) -> None:
        """The progress records are the checkpoint; only the dead letters need flushing."""
        self.sink.flush()

    # -- the worker's side ----------------------------------------------------------------
    def _fold(self, records: Sequence[RecordLike], decoded: Sequence[Any]) -> int:
        """Fold a polled batch at once (one pipeline pass: its forward passes stay batched),
        each event into its partition's partial of its window (``Partitions.split``), then
        publish every partial sealed in it: all its events are folded by then."""
        by_partition: dict[int, list[int]] = {}
        for i, record in enumerate(records):
            by_partition.setdefault(record.partition, []).append(i)
        keep: list[int] = []
        sealed: dict[int, list[Partial]] = {}
        for p, rows in by_partition.items():
            if p not in self.partitions.windows:  # revoked between poll and fold: its new owner reads it
                continue
            outcomes = [decoded[i] for i in rows]
            if p in self._idle:  # awake again: the judge must wait for this partition's windows
                publish(self._scale.partials, [], p, self.partitions.sealed(p), self._next.get(p, records[rows[0]].offset),
                        versions=self.partitions.versions(p))
                self._idle.discard(p)
            ts = [o.ts if isinstance(o, Event) else None for o in outcomes]
            versions = [o.model_version if isinstance(o, Event) else None for o in outcomes]
            for run in self.partitions.split(p, [records[i].offset for i in rows], ts, versions):
                sealed.setdefault(p, []).extend(run.sealed)
                for o in outcomes[run.i:run.j]:
                    if isinstance(o, Event):
                        self._partial_of[id(o)] = run.partial
            keep += rows
            self._next[p] = records[rows[-1]].offset + 1
        try:
            folded = self.pipeline.process([records[i] for i in keep], [decoded[i] for i in keep])
        finally:
            self._partial_of.clear()
        for p, partials in sealed.items():
            if partials:
                self._publish(p, partials)
        return folded

    def _route(self, batch: Any, *args: Any) -> Any:
        """The pipeline's fold, with each event's partial given to the sink (``PartialSink.rows``)."""
        sink: PartialSink = self.pipeline.judge  # type: ignore[assignment]
        sink.rows = [self._partial_of[id(event)] for event in batch.events]
        try:
            return self._pipeline_fold(batch, *args)
        finally:
            sink.rows = None

    def _pair(self, batch: Prepared, codes: np.ndarray, labels: dict[str, tuple[str, ...]]) -> None:
        """Pair the batch's events whose partition's log shows a version before theirs, with that
        version, each pair into its event's partial (the pipeline's ``pair``, run after the fold)."""
        version = batch.served.version
        partials = [self._partial_of[id(event)] for event in batch.events]
        previous = [self.partitions.previous(partial.partition, version) for partial in partials]
        for before in sorted({v for v in previous if v is not None}):
            rows = np.flatnonzero([v == before for v in previous])  # [S] batch rows paired with ``before``
            pairs = self.pipeline.pairing.pair(batch.served, before, [batch.events[r] for r in rows.tolist()])
            if pairs is None:
                continue
            pairs = pairs._replace(rows=rows[pairs.rows])  # rows of the batch, as the cohort codes are
            targets = [partials[r] for r in pairs.rows.tolist()]
            for target in {id(t): t for t in targets}.values():
                mine = np.fromiter((t is target for t in targets), dtype=bool, count=len(targets))
                fold_pairs(pairs.subset(mine), version, codes, labels, self.pipeline.assigner.dimensions,
                           target.pairs(version, before, self.settings.paired))

    def _publish(self, partition: int, sealed: list[Partial], idle: bool = False) -> None:
        watermark = sealed[-1].window if sealed else self.partitions.sealed(partition)
        next_offset = sealed[-1].end if sealed else self._next.get(partition, 0)
        versions = sealed[-1].versions if sealed else self.partitions.versions(partition)
        if idle:
            watermark, next_offset = self.partitions.sealed(partition), self._next.get(partition, next_offset)
            versions = self.partitions.versions(partition)
        self.sink.flush()  # the dead letters of the sealed events first: the next owner starts after them
        publish(self._scale.partials, sealed, partition, watermark, next_offset, idle=idle, versions=versions)
        self.scale_metrics.partials_published.inc(len(sealed))

    def _seal_idle(self, partitions: list[int]) -> None:
        for p in partitions:
            if p not in self.partitions.windows or p in self._idle:
                continue
            partial = self.partitions.seal(p)
            self._publish(p, [partial] if partial is not None else [], idle=True)
            self._idle.add(p)
            log.info("partition %d idle at its log end: sealed window %d", p, self.partitions.sealed(p))

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.settings
        log.info("joining the consumer group (replica; judge election on %s)", cfg.scale.control_topic)
        last_step = last_lag = 0.0
        paused = False
        while not self._stop.is_set():
            now = self._last_tick = time.monotonic()
            while self._queued and self._queued[0].done():
                self._pop()
            paused, behind = self._hold_back(paused)
            if behind:
                continue
            records = self._source.poll(cfg.poll.max_records, cfg.poll.timeout_ms)
            if records:
                for record in records:
                    self._last_record[record.partition] = now
                    self._first_read.setdefault(record.partition, record.offset)
                decoded = self.pipeline.decode(records)
                batch = self._worker.submit(self._fold, records, decoded)
                self._batches.add(batch)
                self._queued.append(batch)
            if now - last_step >= JUDGE_STEP_S:
                self._judge_step()
                last_step = now
            if now - last_lag >= cfg.intervals.lag_s:
                self._export_lag()
                self._check_idle(now)
                # This replica's own per-version series (its statistics, its fold's state) retire
                # as one process's do; the judge retires the verdicts (``_count_retired``).
                self._queued.append(self._worker.submit(self.pipeline.retire_absent, count=False))
                last_lag = now
        self._shutdown()

    def _check_idle(self, now: float) -> None:
        """Partitions at their log end, with no record for ``scale.idle_s``: seal them (on the worker)."""
        lag = self._source.lag()
        idle = [tp[1] for tp, behind in lag.items()
                if behind == 0 and tp[1] not in self._idle
                and now - self._last_record.get(tp[1], now) >= self.settings.scale.idle_s]
        if idle:
            self._queued.append(self._worker.submit(self._seal_idle, idle))

    def _judge_step(self) -> None:
        was = self.role.judging
        rounds = self.role.step(50)
        self.scale_metrics.judging.set(1.0 if self.role.judging else 0.0)
        if self.role.judging and not was:
            assert self.role.judge is not None and self.role.paired is not None
            self._rows = self.role.rows()  # the verdicts the last judge exported, restored with its state
            if self.role.rounds is not None:  # judged up to there already, with nothing new to judge yet
                self.scale_metrics.closed_window.set(self.role.rounds.closed)
            self.pipeline.watch_usage(self.role.judge, self.role.paired)  # attnmon_drift_series: the judge's
        if was and not self.role.judging:
            self._rows = {}
            self.scale_metrics.closed_window.set(float("nan"))
            self.pipeline.watch_usage(self.pipeline.judge, self.pipeline.paired)
        if rounds:
            self._export(rounds)
        self._count_retired(self.role.retired)

    def _count_retired(self, versions: list[str]) -> None:
        """The judge's retirements (event time, ``Rounds``): counted and logged as the single agent's."""
        for version in versions:
            self.metrics.versions_retired.inc()
            log.info("judge retired model version %s: in no merged window for retire_after_s %.0f s of event time",
                     version, self.settings.pipeline.retire_after_s)

    def _export(self, reports: list[tuple[JudgeReport, PairedReport]]) -> None:
        """The judge's rows (drift and paired, built by ``JudgeRole``) exported at once, as the agent's."""
        rounds = self.role.rounds
        assert rounds is not None
        for report, _ in reports:
            self.metrics.judge_runs.inc()
            for verdict in report.cohorts:
                if verdict.drifting:
                    log.info("drift %s: version %s vs %s, %s=%s, series %s (window %d)", verdict.kind,
                             verdict.model_version, verdict.reference_version, verdict.dimension, verdict.cohort,
                             verdict.drifting_series, rounds.closed)
        self._rows = self.role.rows()
        self.scale_metrics.closed_window.set(rounds.closed)

    def _shutdown(self) -> None:
        log.info("draining: finishing the batches in flight")
        self._drain()
        self._worker.shutdown(wait=True)
        self.pipeline.close()
        self._source.close()
        self.sink.close()
        self._scale.close()
        log.info("stopped cleanly")
