"""The long-running agent: poll -> fold -> judge -> checkpoint -> commit, until told to stop.

Threads and why:
- the main thread polls the source, decodes each batch (``Pipeline.decode`` is pure) and
  queues it for the worker, so fetching and decoding the next batch overlaps with folding
  the last one. With three batches queued it pauses every partition but keeps polling, so a
  slow forward pass never pushes the member past ``max.poll.interval.ms`` and memory stays
  bounded;
- one worker thread does everything that touches pipeline state (fold, judge), in FIFO
  order, so state needs no locks; checkpoints run with the worker drained and the main
  thread not polling, since they commit through the consumer;
- the forward passes run in a child process (``pipeline.forward_processes``, see
  ``monitor.attention.forward``). While another batch waits behind the one on the worker, the worker
  starts that batch's passes before it folds this one's statistics (a deferred batch), so
  the child never waits for the worker's serial Python;
- the HTTP thread serves /metrics, /healthz and /readyz.

Delivery: offsets are committed only after the state that includes them is
checkpointed, and on restart the agent seeks to the checkpoint's offsets, so a crash
re-reads what the state lacks and nothing the state already holds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol

import torch
from prometheus_client import CollectorRegistry

from monitor.stream import state as state_store
from monitor.attention.allocator import keep_freed_memory
from monitor.drift.cohorts import CohortAssigner
from monitor.stream.events import Reason
from monitor.export.http import MetricsServer
from monitor.drift.judge import Judge, StateFormatError
from monitor.export.metrics import AgentMetrics, DriftCollector
from monitor.drift.paired import PairedComparison
from monitor.stream.pipeline import Pipeline, RecordLike
from monitor.attention.registry import ModelRegistry
from monitor.settings import Settings

log = logging.getLogger(__name__)

Partition = tuple[str, int]
# One on the worker and two fetched: bounds memory; a batch is deferred only while another
# waits behind it, and a second one gives the poll thread time to queue it.
MAX_QUEUED_BATCHES = 3


class Source(Protocol):
    def poll(self, max_records: int, timeout_ms: int) -> list: ...
    def commit(self, next_offsets: dict[Partition, int]) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def assignment(self) -> list[Partition]: ...
    def lag(self) -> dict[Partition, int]: ...
    def close(self) -> None: ...


class Sink(Protocol):
    def send(self, record: RecordLike, reason: str, detail: str) -> None: ...
    def flush(self, timeout_s: float = 30.0) -> None: ...
    def close(self, timeout_s: float = 30.0) -> None: ...


SourceFactory = Callable[[Callable[[list[Partition]], dict[Partition, int]], Callable[[list[Partition]], None]], Source]


class Agent:
    def __init__(self, settings: Settings, source_factory: SourceFactory, sink: Sink,
                 registry: CollectorRegistry | None = None) -> None:
        keep_freed_memory()
        torch.set_num_threads(settings.models.torch_threads)
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = AgentMetrics(self.registry)
        self.models = ModelRegistry(
            settings.models.root, max_loaded=settings.models.max_loaded, retry_after_s=settings.models.retry_after_s,
            on_load=self._on_model_load, on_failure=self._on_model_failure,
        )
        self.sink = sink
        restored = state_store.load(settings.state.directory)
        self._restored_offsets: dict[Partition, int] = {}
        self.pipeline = Pipeline(
            self.models, CohortAssigner(settings.cohorts), Judge(settings.judge), PairedComparison(settings.paired),
            self.metrics, self._dead_letter, settings.pipeline,
        )
        if restored is not None:
            pipeline_state, offsets = restored
            self.pipeline.restore(
                pipeline_state,
                self._restore_judge(pipeline_state["judge"], settings),
                PairedComparison.from_state(pipeline_state["paired"], settings.paired),
                CohortAssigner.from_state(settings.cohorts, pipeline_state["cohorts"]),
            )
            self._restored_offsets = offsets
            log.info("restored state from %s with offsets %s", settings.state.directory, offsets)
        self.registry.register(DriftCollector(self.pipeline.drift_rows))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnmon-fold")
        self._queued: deque[Future] = deque()  # FIFO on the single worker: state needs no locks
        self._batches: set[Future] = set()  # the queued futures that fold a polled batch
        self._stop = threading.Event()
        self._last_tick = time.monotonic()
        self._source = source_factory(self._on_assigned, self._on_revoked)
        self._dead_lettered_since_flush = 0
        self._preload_newest()

    @staticmethod
    def _restore_judge(state: dict, settings: Settings) -> Judge:
        """The checkpoint's judge; one saved in an older format starts again from traffic."""
        try:
            return Judge.from_state(state, settings.judge)
        except StateFormatError as err:
            log.warning("judge state not restored (%s): baselines and windows start again from traffic", err)
            return Judge(settings.judge)

    # -- callbacks -------------------------------------------------------------------------
    def _on_model_load(self, served, seconds: float) -> None:
        self.metrics.model_load_seconds.observe(seconds)
        self.metrics.model_info.labels(served.version, served.checkpoint.label or "").set(1)

    def _on_model_failure(self, version: str, why: str) -> None:
        cause = "missing" if "no such version" in why or "not a valid version" in why else "invalid"
        self.metrics.model_load_failures.labels(cause).inc()

    def _dead_letter(self, record: RecordLike, reason: Reason, detail: str) -> None:
        self.sink.send(record, reason.value, detail)
        self._dead_lettered_since_flush += 1

    def _on_assigned(self, partitions: list[Partition]) -> dict[Partition, int]:
        """Seek restored partitions to the checkpoint's offsets (first assignment only)."""
        seeks = {tp: self._restored_offsets[tp] for tp in partitions if tp in self._restored_offsets}
        self.pipeline.offsets.restore(seeks)
        # A partition that comes back later was owned by another replica meanwhile: its
        # committed offset is newer than our old checkpoint, so we must not rewind it.
        self._restored_offsets = {}
        log.info("assigned %s", partitions)
        return seeks

    def _on_revoked(self, partitions: list[Partition]) -> None:
        """Before partitions move: finish the batch, checkpoint, commit, forget them."""
        self._drain()
        self.checkpoint()
        self.pipeline.offsets.forget(partitions)
        log.info("revoked %s", partitions)

    # -- the loop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        cfg = self.settings
        last_judge = last_checkpoint = last_lag = time.monotonic()
        paused = False
        while not self._stop.is_set():
            now = self._last_tick = time.monotonic()
            while self._queued and self._queued[0].done():
                self._pop()  # re-raises a worker failure here, on the main thread
            if len(self._queued) >= MAX_QUEUED_BATCHES:
                # The worker is behind: stop fetching (bounded memory) but keep polling, which
                # returns nothing while paused and keeps the member within max.poll.interval.ms.
                if not paused:
                    self._source.pause()
                    paused = True
                wait([self._queued[0]], timeout=0.5)
                self._source.poll(cfg.poll.max_records, 0)
                continue
            if paused:
                self._source.resume()
                paused = False
            # Fetching and decoding the next batch overlaps with the forward pass of the last
            # one: the worker releases the GIL inside torch and numpy.
            records = self._source.poll(cfg.poll.max_records, cfg.poll.timeout_ms)
            if records:
                decoded = self.pipeline.decode(records)  # here, not on the worker: it is the busier thread
                batch = self._worker.submit(self.pipeline.process, records, decoded, defer=self._batch_waiting)
                self._batches.add(batch)
                self._queued.append(batch)
            elif not self._queued and self.pipeline.has_pending():  # not expected: a deferred batch
                self._queued.append(self._worker.submit(self.pipeline.flush))  # always has one behind it
            elif self.pipeline.has_held() and not self._queued:
                self._queued.append(self._worker.submit(self.pipeline.retry_held))
            if now - last_judge >= cfg.intervals.judge_s:
                self._queued.append(self._worker.submit(self.pipeline.run_judgement))
                last_judge = now
            if now - last_checkpoint >= cfg.intervals.checkpoint_s:
                self._drain()  # the checkpoint commits through the consumer: not while it polls
                self.checkpoint()
                last_checkpoint = now
            if now - last_lag >= cfg.intervals.lag_s:
                self._export_lag()
                last_lag = now
        self._shutdown()

    def _pop(self) -> None:
        future = self._queued.popleft()
        self._batches.discard(future)
        future.result()

    def _batch_waiting(self) -> bool:
        """On the worker, during a batch: is another polled batch queued behind it?"""
        return sum(1 for future in list(self._queued) if future in self._batches and not future.done()) > 1

    def _drain(self) -> None:
        """Wait until every queued batch is folded, a deferred one included (the worker is then idle)."""
        while self._queued:
            self._pop()
        if self.pipeline.has_pending():
            self._worker.submit(self.pipeline.flush).result()

    def checkpoint(self) -> None:
        """Checkpoint state with the offsets it includes, then commit those offsets."""
        started = time.perf_counter()
        self.sink.flush()  # dead letters must be durable before their offsets are committed
        offsets = self.pipeline.offsets.committable()
        state_store.save(self.settings.state.directory, self.pipeline.state(), offsets)
        assigned = set(self._source.assignment())
        mine = {tp: o for tp, o in offsets.items() if tp in assigned}
        self._source.commit(mine)
        self.metrics.last_checkpoint.set(time.time())
        self.metrics.observe_stage("checkpoint", time.perf_counter() - started)

    def _export_lag(self) -> None:
        for (topic, partition), lag in self._source.lag().items():
            self.metrics.lag.labels(topic, str(partition)).set(lag)
        self.metrics.ready.set(1.0 if self.ready()[0] else 0.0)

    def _preload_newest(self) -> None:
        versions = self.models.available_versions()
        if versions:
            self.pipeline.warm(versions[-1])  # loads it here and in the forward process

    def _shutdown(self) -> None:
        log.info("draining: finishing the batches in flight, checkpointing, committing")
        self._drain()
        self._worker.submit(self.pipeline.run_judgement).result()
        self.checkpoint()
        self._worker.shutdown(wait=True)
        self.pipeline.close()
        self._source.close()
        self.sink.close()
        log.info("stopped cleanly")

    # -- health ------------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self._last_tick
        if stalled > self.settings.intervals.stall_s:
            return False, f"main loop stalled for {stalled:.0f}s\n"
        return True, "ok\n"

    def ready(self) -> tuple[bool, str]:
        assigned = self._source.assignment()
        loaded = self.models.loaded_versions()
        if not assigned:
            return False, "no partitions assigned\n"
        if not loaded:
            return False, "no model version loaded\n"
        return True, f"partitions {len(assigned)}, models {','.join(loaded)}\n"


def run_forever(agent: Agent, host: str, port: int) -> None:
    """Serve HTTP, run the loop, stop on SIGTERM/SIGINT with a drain and final commit."""
    server = MetricsServer(host, port, agent.registry, agent.healthy, agent.ready)
    log.info("serving /metrics, /healthz, /readyz on %s:%d", host, server.port)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run()
    finally:
        server.close()
