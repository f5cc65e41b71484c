"""The agent's core, without Kafka: records in; attention statistics folded into
metrics, per-cohort drift windows and baselines; offsets tracked for commit.

    record bytes -> decode (bad: dead-letter + count)
      -> group by model_version (unknown: held for a grace period, then dead-lettered)
      -> raw item ids -> model indices (unknown items dropped and counted)
      -> recompute attention rows (fast path, length-sorted chunks; in a child
         process by default, see monitor.attention.forward)
      -> statistics [B, stats, layers]
      -> fold into Prometheus histograms and the judge, per cohort dimension
      -> after a model update: recompute the previous version on a sample of the
         same events and fold the paired divergence

The daemon (``monitor.stream.agent``) drives this with a Kafka source; ``attnmon demo``
drives it with an in-process source. Either way the same code runs.

A batch can be *deferred* (``process(defer=...)``): its passes are started, and its
statistics are folded by the next call, after that call has started its own passes.
The forward process then never waits for the worker's serial fold. A deferred batch's
offsets are seen but must not be committed before :meth:`Pipeline.flush`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from monitor.drift.baseline import SeriesKey
from monitor.drift.cohorts import CohortAssigner
from monitor.stream.config import PipelineConfig
from monitor.stream.events import Event, InvalidEvent, Reason, decode
from monitor.drift.judge import Judge, JudgeReport
from monitor.export.metrics import AgentMetrics
from monitor.stream.offsets import OffsetTracker
from monitor.drift.paired import PairedComparison, PairedReport, PairKey
from monitor.attention.forward import make_forwards
from monitor.attention.recompute import StartedChunk, collect, start
from monitor.attention.registry import ModelRegistry, ServedModel
from monitor.attention.stats import STATISTICS, compute, paired_divergence

log = logging.getLogger(__name__)


class RecordLike(Protocol):
    topic: str
    partition: int
    offset: int
    value: bytes | None


DeadLetter = Callable[[RecordLike, Reason, str], None]


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """One version's usable events of a batch, with their forward passes started."""

    served: ServedModel
    events: list[Event]
    histories: list[np.ndarray]  # model indices of each event's window
    raw_histories: list[np.ndarray]  # raw ids of the same windows (only when pairing)
    passes: list[StartedChunk]
    previous: str | None  # the version this one replaced, when its events are paired
    now: float


@dataclasses.dataclass
class _Held:
    record: RecordLike
    event: Event
    since: float


class Pipeline:
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
        seed: int = 0,
    ) -> None:
        self.registry = registry
        self.assigner = assigner
        self.judge = judge
        self.paired = paired
        self.metrics = metrics
        self.config = config
        self.offsets = OffsetTracker()
        self._dead_letter = dead_letter
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._held: deque[_Held] = deque()
        self._versions_seen: list[str] = []  # stream order of first appearance
        self._previous: dict[str, str] = {}  # version -> the version it replaced
        self._processed = metrics.events.labels("processed", "ok")
        self._drift_rows: dict[str, list[dict]] = {}
        self._latest_keys: dict[tuple[str, SeriesKey], dict] = {}
        self._latest_pairs: dict[PairKey, dict] = {}
        self._pending: list[_Prepared] = []  # a deferred batch, folded by the next call or flush()
        self._forwards = make_forwards(config.forward_processes, config.forward_threads, registry,
                                       on_replaced=metrics.forward_pool_replaced.inc)
        self.last_report: JudgeReport | None = None
        self.last_paired: PairedReport | None = None

    # -- intake --------------------------------------------------------------------------
    def decode(self, records: Sequence[RecordLike]) -> list[Event | InvalidEvent]:
        """Decode a polled batch, one outcome per record. Pure: the agent runs it on its
        poll thread, so the worker that owns the state spends its time on folding."""
        started = time.perf_counter()
        limits = self.config.limits
        decoded: list[Event | InvalidEvent] = []
        for record in records:
            skipped = getattr(record, "skipped", None)  # a source's marker for an undecodable batch
            if skipped is not None:
                count = skipped.count(record.offset)
                self.metrics.skipped_offsets.inc(count)
                decoded.append(InvalidEvent(Reason.UNDECODABLE_BATCH, f"offsets {skipped.first_offset}..{record.offset}"
                                            f" ({count}) of partition {record.partition}: {skipped.error}"))
                continue
            try:
                decoded.append(decode(record.value, limits))  # type: ignore[arg-type]
            except InvalidEvent as err:
                decoded.append(err)
            except Exception as exc:  # a decoder bug must not stop the batch; keep it visible in detail
                decoded.append(InvalidEvent(Reason.NOT_JSON, f"unexpected {type(exc).__name__}: {exc}"))
        self.metrics.observe_stage("decode", time.perf_counter() - started)
        return decoded

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
        by_version: dict[str, list[tuple[RecordLike, Event]]] = {}
        for record, outcome in zip(records, decoded, strict=True):
            self.offsets.seen((record.topic, record.partition), record.offset)
            if isinstance(outcome, InvalidEvent):
                self._reject(record, outcome.reason, outcome.detail)
                continue
            by_version.setdefault(outcome.model_version, []).append((record, outcome))
        prepared = []
        for version, items in by_version.items():
            served = self.registry.get(version)
            if served is None:
                self._hold(items)
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

    def _reject(self, record: RecordLike, reason: Reason, detail: str) -> None:
        self._dead_letter(record, reason, detail)
        self.metrics.events.labels("dead_lettered", reason.value).inc()

    def _hold(self, items: list[tuple[RecordLike, Event]]) -> None:
        now = time.monotonic()
        for record, event in items:
            if len(self._held) >= self.config.max_held:
                self._reject(record, Reason.UNKNOWN_MODEL_VERSION, f"{event.model_version!r}: hold buffer full")
                continue
            self._held.append(_Held(record, event, now))
            self.offsets.hold((record.topic, record.partition), record.offset)
        self.metrics.held.set(len(self._held))

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
            self._forwards.warm(served)

    def close(self) -> None:
        """Stop the forward passes' threads or processes (after the last batch)."""
        self._forwards.close()

    def has_held(self) -> bool:
        return bool(self._held)

    def retry_held(self) -> int:
        """Fold held events whose version has appeared; dead-letter those out of time."""
        if not self._held:
            return 0
        now = time.monotonic()
        waiting: deque[_Held] = deque()
        ready: dict[str, list[tuple[RecordLike, Event]]] = {}
        for held in self._held:
            self.offsets.release((held.record.topic, held.record.partition), held.record.offset)
            version = held.event.model_version
            if version in ready or self.registry.get(version) is not None:
                ready.setdefault(version, []).append((held.record, held.event))
            elif now - held.since > self.config.unknown_version_grace_s:
                self._reject(held.record, Reason.UNKNOWN_MODEL_VERSION,
                             f"no model version {version!r} within {self.config.unknown_version_grace_s:.0f}s")
            else:
                waiting.append(held)
                self.offsets.hold((held.record.topic, held.record.partition), held.record.offset)
        self._held = waiting
        self.metrics.held.set(len(waiting))
        folded = 0
        for version, items in ready.items():
            served = self.registry.get(version)
            if served is not None:
                folded += self._fold(served, items)
        return folded

    # -- folding -------------------------------------------------------------------------
    def _fold(self, served: ServedModel, items: list[tuple[RecordLike, Event]]) -> int:
        batch = self._prepare(served, items)
        return 0 if batch is None else self._finish(batch)

    def _prepare(self, served: ServedModel, items: list[tuple[RecordLike, Event]]) -> _Prepared | None:
        """Look the windows up and start their forward passes; None if no event is usable."""
        version = served.version
        now = self._clock()
        self._note_version(version, now)
        previous = self._previous.get(version)
        pairing = previous is not None and version in self.judge.updates
        kept, histories, raw_histories, skipped, truncated = self._window_histories(served, items, keep_raw=pairing)
        if skipped:
            self.metrics.unknown_items.labels(version).inc(skipped)
        if truncated:
            self.metrics.truncated.labels(version).inc(truncated)
        if not kept:
            return None
        passes = self._start_passes(served, histories, served.max_len)
        return _Prepared(served, kept, histories, raw_histories, passes, previous if pairing else None, now)

    def _finish(self, batch: _Prepared) -> int:
        """Statistics of a prepared batch, folded into metrics, the judge and pairs."""
        served, kept, histories, now = batch.served, batch.events, batch.histories, batch.now
        version = served.version
        statistics, per_head = self._statistics(served, batch.passes)

        started = time.perf_counter()
        lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))  # windows: <= max_len
        codes = self.assigner.assign([e.context for e in kept], lengths)
        labels = self.assigner.labels()
        for column, dimension in enumerate(self.assigner.dimensions):
            column_codes = codes[:, column]
            dim_labels = labels[dimension]
            self.metrics.attention.fold(version, dimension, column_codes, dim_labels, statistics)
            if per_head is not None:  # within-version detail only: the judge sees head-averaged rows
                self.metrics.attention_per_head.fold(version, dimension, column_codes, dim_labels, per_head)
            for code in np.unique(column_codes):
                members = statistics[column_codes == code]  # [b, stats, layers]
                for s_index, statistic in enumerate(STATISTICS):
                    for layer in range(members.shape[2]):
                        key = SeriesKey(version, dimension, dim_labels[code], statistic, layer)
                        self.judge.observe(key, members[:, s_index, layer], now)
        event_seconds = np.fromiter((e.ts for e in kept), dtype=np.float64, count=len(kept)) / 1000.0
        self.metrics.latency.observe_many(np.maximum(0.0, self._clock() - event_seconds))
        self._processed.inc(len(kept))
        self.metrics.observe_stage("fold", time.perf_counter() - started)

        if batch.previous is not None:
            self._pair(served, batch.previous, batch.raw_histories, codes, labels)
        return len(kept)

    def _window_histories(
        self, served: ServedModel, items: list[tuple[RecordLike, Event]], *, keep_raw: bool
    ) -> tuple[list[Event], list[np.ndarray], list[np.ndarray], int, int]:
        """Each event's window: the last ``max_len`` items of its history the model knows.

        Returns the events with any known item (the others are dead-lettered), the model
        indices of their windows, the windows' raw ids (only with ``keep_raw``: the paired
        comparison looks them up in another version), the unknown items skipped inside the
        windows and how many windows start after the history's first item. Only the tail
        the model can read is looked up, in one vectorised pass; an event whose tail holds unknown items is looked up whole, since
        its window then reaches further back. Unknown items older than the window are
        not counted: the model would not have read them anyway.
        """
        window = served.max_len
        tails = [event.history[-window:] for _, event in items]
        sizes = np.fromiter(map(len, tails), dtype=np.int64, count=len(tails))
        all_raw = np.fromiter(itertools.chain.from_iterable(tails), dtype=np.int64, count=int(sizes.sum()))
        all_indices = served.to_indices(all_raw)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))  # histories are never empty (decode)
        unknown = np.add.reduceat((all_indices < 0).astype(np.int64), starts)
        histories = np.split(all_indices, starts[1:])
        raw_histories = np.split(all_raw, starts[1:]) if keep_raw else []
        full_sizes = np.fromiter((len(event.history) for _, event in items), dtype=np.int64, count=len(items))
        cut = full_sizes > sizes
        keep = np.ones(len(items), dtype=bool)
        skipped = 0
        for k in np.flatnonzero(unknown).tolist():  # rare: only events with unknown items in their tail
            history = items[k][1].history
            tail = all_raw[starts[k] : starts[k] + sizes[k]]
            raw = np.fromiter(history, dtype=np.int64, count=len(history)) if cut[k] else tail
            indices = served.to_indices(raw) if cut[k] else histories[k]
            known_at = np.flatnonzero(indices >= 0)
            if known_at.size == 0:
                keep[k] = False
                self._reject(items[k][0], Reason.UNKNOWN_ITEMS,
                             f"none of {len(history)} history items is known to {served.version}")
                continue
            first = int(known_at[-window]) if known_at.size >= window else 0  # where the window starts
            in_window = known_at[known_at >= first]
            skipped += (len(raw) - first) - len(in_window)
            cut[k] = first > 0
            histories[k] = indices[in_window]
            if keep_raw:
                raw_histories[k] = raw[in_window]
        kept = [event for (_, event), k in zip(items, keep, strict=True) if k]
        if not keep.all():
            histories = [h for h, k in zip(histories, keep, strict=True) if k]
            raw_histories = [h for h, k in zip(raw_histories, keep, strict=True) if k] if keep_raw else []
        return kept, histories, raw_histories, skipped, int(cut[keep].sum())

    def _start_passes(self, served: ServedModel, histories: list[np.ndarray], width: int) -> list[StartedChunk]:
        return start(lambda chunks: self._forwards.submit(served, chunks), histories,
                     max_len=width, max_batch=self.config.max_batch)

    def _statistics(self, served: ServedModel, passes: list[StartedChunk]) -> tuple[np.ndarray, np.ndarray | None]:
        """Head-averaged [B, stats, layers] for the histories of ``passes``, in their order,
        and per-head [B, stats, layers, heads] when ``stats.per_head`` is configured (else None)."""
        count = sum(len(chunk.rows) for chunk in passes)
        config = self.config.stats
        averaged_config = dataclasses.replace(config, per_head=False)
        config_b = served.checkpoint.config
        out = np.empty((count, len(STATISTICS), config_b.layers), dtype=np.float32)
        per_head = (np.empty((count, len(STATISTICS), config_b.layers, config_b.heads), dtype=np.float32)
                    if config.per_head else None)
        started, stats_seconds = time.perf_counter(), 0.0
        for chunk in collect(passes):
            t0 = time.perf_counter()
            out[chunk.rows] = compute(chunk.weights, chunk.lengths, chunk.item_index, served.genre_matrix,
                                      averaged_config)
            if per_head is not None:
                per_head[chunk.rows] = compute(chunk.weights, chunk.lengths, chunk.item_index,
                                               served.genre_matrix, config)
            stats_seconds += time.perf_counter() - t0
        # recompute: waiting for (and, inline, running) the forward passes; stats overlap them
        self.metrics.observe_stage("recompute", time.perf_counter() - started - stats_seconds)
        self.metrics.observe_stage("stats", stats_seconds)
        return out, per_head

    def _note_version(self, version: str, now: float) -> None:
        if version in self._previous or version in self._versions_seen:
            return
        if self._versions_seen:
            previous = self._versions_seen[-1]
            self._previous[version] = previous
            self.judge.start_update(version, previous, now)
            self.metrics.model_update.labels(version, previous).set(now)
            log.warning("model update: %s replaces %s in the stream", version, previous)
        self._versions_seen.append(version)
        del self._versions_seen[: -self.config.max_versions_remembered]

    def _pair(self, served: ServedModel, previous: str, raw_histories: list[np.ndarray],
              codes: np.ndarray, labels: dict[str, tuple[str, ...]]) -> None:
        """Recompute both versions on a sample of the same events and fold their divergence."""
        old = self.registry.get(previous)
        if old is None:
            return
        count = min(self.config.paired_max_per_batch, int(np.ceil(self.config.paired_fraction * len(raw_histories))))
        if count == 0:
            return
        picked = self._rng.choice(len(raw_histories), size=count, replace=False)
        width = min(served.max_len, old.max_len)
        pairs_raw = []
        rows_kept = []
        for row in picked:
            raw = raw_histories[row][-width:]
            old_idx, new_idx = old.to_indices(raw), served.to_indices(raw)
            if (old_idx < 0).any() or (new_idx < 0).any():
                continue  # the versions disagree on the vocabulary: positions would not pair up
            pairs_raw.append((old_idx, new_idx))
            rows_kept.append(row)
        if not rows_kept:
            return
        old_rows = self._mean_rows(old, [p[0] for p in pairs_raw], width)
        new_rows = self._mean_rows(served, [p[1] for p in pairs_raw], width)
        lengths = np.asarray([len(p[0]) for p in pairs_raw], dtype=np.int64)
        js_per_layer = []
        overlap_per_layer = []
        for layer in range(min(old_rows.shape[1], new_rows.shape[1])):
            js, overlap = paired_divergence(old_rows[:, layer], new_rows[:, layer], lengths, self.config.stats.top_k)
            js_per_layer.append(js)
            overlap_per_layer.append(overlap)
        js = np.mean(js_per_layer, axis=0)
        overlap = np.mean(overlap_per_layer, axis=0)
        kept_codes = codes[np.asarray(rows_kept)]
        for column, dimension in enumerate(self.assigner.dimensions):
            for code in np.unique(kept_codes[:, column]):
                members = kept_codes[:, column] == code
                self.paired.observe(PairKey(served.version, dimension, labels[dimension][code]),
                                    js[members], overlap[members])

    def _mean_rows(self, served: ServedModel, histories: list[np.ndarray], width: int) -> np.ndarray:
        """Head-averaged rows [B, layers, width] (head averaging: invariant to head permutations)."""
        out = np.zeros((len(histories), served.checkpoint.config.layers, width), dtype=np.float32)
        for chunk in collect(self._start_passes(served, histories, width)):
            w = chunk.weights.shape[-1]
            out[chunk.rows, :, width - w:] = chunk.weights.mean(axis=2)
        return out

    # -- judgement -----------------------------------------------------------------------
    def run_judgement(self) -> tuple[JudgeReport, PairedReport]:
        started = time.perf_counter()
        now = self._clock()
        report = self.judge.judge(now)
        paired = self.paired.judge(now)
        self.last_report, self.last_paired = report, paired
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
                "model_version": result.key.new_version, "previous_version": self._previous.get(result.key.new_version, ""),
                "dimension": result.key.dimension, "cohort": result.key.cohort,
                "mean_js": result.mean_js, "pairs": result.total_pairs, "changed": int(result.model_caused),
            }
        self._prune_rows()
        explained = self._explained(report)
        self._drift_rows = {
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
                for (kind, version, dimension, cohort), by in explained.items()
            ],
            "baselines": [
                {"model_version": v, "dimension": d, "cohort": c, "ready": int(ready)}
                for (v, d, c), ready in self.judge.baselines.cohort_status().items()
                if v in self._versions_seen
            ],
        }
        self.metrics.judge_runs.inc()
        self.metrics.observe_stage("judge", time.perf_counter() - started)
        for verdict in report.cohorts:
            if verdict.drifting:
                log.info("drift %s: version %s vs %s, %s=%s, series %s", verdict.kind, verdict.model_version,
                         verdict.reference_version, verdict.dimension, verdict.cohort, verdict.drifting_series)
        return report, paired

    def _explained(self, report: JudgeReport) -> dict[tuple[str, str, str, str], tuple[str, str]]:
        """Drifting within-version cohorts explained by a stronger drifting cohort of another dimension.

        A shift confined to one cohort (say platform=android) also moves every cohort that
        contains part of its traffic (all, each region, ...), but diluted: a mixture is
        closer to the baseline than its shifted component. So a drifting cohort whose
        largest effect is below that of a drifting cohort in another dimension is reported
        as explained by it, and on-call is paged for the root cohort only.
        """
        strongest: dict[tuple[str, str, str, str], float] = {}
        for (kind, key), row in self._latest_keys.items():
            if kind == "within_version" and row["drifting"]:
                cohort = (kind, key.model_version, key.dimension, key.cohort)
                strongest[cohort] = max(strongest.get(cohort, 0.0), float(row["score"]))
        drifting = [(c.kind, c.model_version, c.dimension, c.cohort) for c in report.cohorts
                    if c.drifting and c.kind == "within_version"]
        explained: dict[tuple[str, str, str, str], tuple[str, str]] = {}
        for cohort in drifting:
            score = strongest.get(cohort, 0.0)
            rivals = [(strongest.get(other, 0.0), other) for other in drifting
                      if other[1] == cohort[1] and other[2] != cohort[2] and other[2] != "all"]
            best = max(rivals, default=None)
            if best is not None and best[0] > score:
                explained[cohort] = (best[1][2], best[1][3])
        return explained

    def _prune_rows(self) -> None:
        """Keep exported rows to versions still remembered, so label sets stay bounded."""
        alive = set(self._versions_seen)
        self._latest_keys = {k: v for k, v in self._latest_keys.items() if k[1].model_version in alive}
        self._latest_pairs = {k: v for k, v in self._latest_pairs.items() if k.new_version in alive}

    def drift_rows(self) -> dict[str, list[dict]]:
        """Rows for ``metrics.DriftCollector`` (read by the scrape thread; replaced, never mutated)."""
        return self._drift_rows

    # -- state ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        if self._pending:  # its offsets are seen: a checkpoint now would skip its events after a crash
            raise RuntimeError("state() while a batch is deferred: flush() first")
        return {
            "judge": self.judge.to_state(),
            "paired": self.paired.to_state(),
            "cohorts": self.assigner.state(),
            "versions_seen": list(self._versions_seen),
            "previous": dict(self._previous),
        }

    def restore(self, state: dict[str, Any], judge: Judge, paired: PairedComparison, assigner: CohortAssigner) -> None:
        """Adopt restored components and the version history from a checkpoint."""
        self.judge, self.paired, self.assigner = judge, paired, assigner
        self._versions_seen = list(state.get("versions_seen", []))
        self._previous = dict(state.get("previous", {}))
        for version, update in judge.updates.items():  # keep the update annotations after a restart
            self.metrics.model_update.labels(version, update.previous_version).set(update.at)
