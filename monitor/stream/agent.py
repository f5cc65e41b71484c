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
- the HTTP thread serves /metrics, /healthz, /readyz and the live page (/, /api/state),
  which reads the snapshot the worker replaces after each judgement round.

Delivery: offsets are committed only after the state that includes them is
checkpointed, and on restart the agent seeks to the checkpoint's offsets, so a crash
re-reads what the state lacks and nothing the state already holds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait

import torch
from prometheus_client import CollectorRegistry

from monitor.stream import state as state_store
from monitor.attention.allocator import keep_freed_memory
from monitor.drift.cohorts import CohortAssigner
from monitor.stream.events import Reason
from monitor.export.http import MetricsServer
from monitor.drift.judge import Judge, StateFormatError
from monitor.export.metrics import AgentMetrics, DriftCollector, UsageCollector
from monitor.drift.paired import PairedComparison
from monitor.stream.pipeline import Pipeline, RecordLike
from monitor.attention.registry import ModelRegistry, ServedModel
from monitor.settings import Settings
from monitor.stream.source import CommitFailed, Partition, Sink, SourceError, SourceFactory

log = logging.getLogger(__name__)

# One on the worker and two fetched: bounds memory; a batch is deferred only while another
# waits behind it, and a second one gives the poll thread time to queue it.
MAX_QUEUED_BATCHES = 3


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
            on_load=self._on_model_load, on_failure=self._on_model_failure, on_evict=self._on_model_evict,
        )
        self.sink = sink
        self._restored_offsets: dict[Partition, int] = {}
        self.pipeline = Pipeline(
            self.models, CohortAssigner(settings.cohorts), self._new_judge(), PairedComparison(settings.paired),
            self.metrics, self._dead_letter, self._pipeline_config(),
        )
        self._restore()
        self.registry.register(DriftCollector(self._drift_rows))
        self.registry.register(UsageCollector(self.pipeline.usage_rows))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attnmon-fold")
        self._queued: deque[Future] = deque()  # FIFO on the single worker: state needs no locks
        self._batches: set[Future] = set()  # the queued futures that fold a polled batch
        self._stop = threading.Event()
        self._last_tick = time.monotonic()
        self._source = source_factory(self._on_assigned, self._on_revoked)
        self._dead_lettered_since_flush = 0
        self._preload_newest()

    # -- what a replica (monitor.stream.replica) does differently ---------------------------
    def _new_judge(self) -> Judge:
        return Judge(self.settings.judge)

    def _pipeline_config(self):
        return self.settings.pipeline

    def _drift_rows(self) -> dict[str, list[dict]]:
        return self.pipeline.drift_rows()

    def _restore(self) -> None:
        """Adopt the last checkpoint. One that cannot be read or restored (corrupt, tampered,
        from an incompatible version) is kept aside with a reason, counted, and the agent
        starts from empty state, or stops with ``state.UnusableState`` (``state.on_unusable``)."""
        directory = self.settings.state.directory
        try:
            loaded = state_store.load(directory)
            if loaded is None:
                return
            pipeline_state, offsets = loaded
            components = (
                self._restore_judge(pipeline_state["judge"], self.settings),
                PairedComparison.from_state(pipeline_state["paired"], self.settings.paired),
                CohortAssigner.from_state(self.settings.cohorts, pipeline_state["cohorts"]),
            )
        except Exception as error:  # noqa: BLE001 -- any defect of the file, never a crash loop
            reason = f"{type(error).__name__}: {error}"[:500]
            aside = state_store.set_aside(directory)
            self.metrics.state_unusable.inc()
            log.error("checkpoint in %s cannot be restored (%s); kept aside as %s", directory, reason, aside)
            if self.settings.state.on_unusable == "exit":
                raise state_store.UnusableState(f"checkpoint in {directory} cannot be restored ({reason}); kept aside as {aside}")
            log.error("starting from empty state (state.on_unusable: start_empty)")
            return
        self.pipeline.restore(pipeline_state, *components)
        self._restored_offsets = offsets
        log.info("restored state from %s with offsets %s", directory, offsets)

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

    def _on_model_evict(self, served: ServedModel) -> None:
        """``attnmon_model_info`` says which versions are in memory: an evicted one leaves it."""
        try:
            self.metrics.model_info.remove(served.version, served.checkpoint.label or "")
        except KeyError:
            pass

    def _on_model_failure(self, version: str, why: str) -> None:
        cause = "missing" if "no such version" in why or "not a valid version" in why else "invalid"
        self.metrics.model_load_failures.labels(cause).inc()

    def _dead_letter(self, record: RecordLike, reason: Reason, detail: str) -> None:
        self.sink.send(record, reason.value, detail)
        self._dead_lettered_since_flush += 1

    def _on_assigned(self, partitions: list[Partition]) -> dict[Partition, int]:
        """Where each newly assigned partition resumes: the newer of what the restored state
        includes and what the group committed.

        The group's offset is newer when another member processed the partition after our
        checkpoint: those events are in its state, so we read on after them. Ours is newer
        when our last commit did not land (a crash between checkpoint and commit): our state
        already holds those events. A partition we hold no state for starts at the group's
        committed offset (no seek).
        """
        ours = {tp: self._restored_offsets.pop(tp) for tp in partitions if tp in self._restored_offsets}
        theirs = self._source.committed(sorted(ours)) if ours else {}
        seeks = {}
        for tp, offset in ours.items():
            if theirs.get(tp, -1) > offset:
                log.info("%s: the group committed %d, past our checkpoint's %d; reading on from there",
                         tp, theirs[tp], offset)
                continue
            seeks[tp] = offset
        self.pipeline.offsets.restore(seeks)
        log.info("assigned %s", partitions)
        return seeks

    def _on_revoked(self, partitions: list[Partition]) -> None:
        """Before partitions move: finish the batch, give up their held events, checkpoint,
        commit, forget them."""
        self._drain()
        self.pipeline.forget_held(partitions)  # dead-lettered before the checkpoint that commits past them
        try:
            self.checkpoint()
        finally:
            # The state now holds these partitions' events up to ``ours``. When they were lost
            # rather than revoked (the member evicted: a session timeout, the broker restarting),
            # the commit is refused and the group's offsets are older; should a partition come
            # back to this member, it resumes after what the state holds, as after a restart
            # (``_on_assigned`` takes the newer of this and the group's offset).
            ours = self.pipeline.offsets.committable()
            self._restored_offsets.update({tp: ours[tp] for tp in partitions if tp in ours})
            self.pipeline.offsets.forget(partitions)
            for topic, partition in partitions:  # a partition's lag is its new owner's to export
                try:
                    self.metrics.lag.remove(topic, str(partition))
                except KeyError:
                    pass
        log.info("revoked %s", partitions)

    # -- the loop ----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        cfg = self.settings
        log.info("joining the consumer group")  # the first poll joins; rejoin time is measured from here
        last_judge = last_checkpoint = last_lag = time.monotonic()
        paused = False
        while not self._stop.is_set():
            now = self._last_tick = time.monotonic()
            while self._queued and self._queued[0].done():
                self._pop()  # re-raises a worker failure here, on the main thread
            paused, behind = self._hold_back(paused)
            if behind:
                continue
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
                self._periodic_checkpoint()
                last_checkpoint = now
            if now - last_lag >= cfg.intervals.lag_s:
                self._export_lag()
                last_lag = now
        self._shutdown()

    def _hold_back(self, paused: bool) -> tuple[bool, bool]:
        """Back-pressure for one loop turn: (paused now, whether the worker is behind and the
        turn is spent). When behind, stop fetching (bounded memory) but keep polling, which
        returns nothing while paused and keeps the member within max.poll.interval.ms."""
        if len(self._queued) >= MAX_QUEUED_BATCHES:
            if not paused:
                self._source.pause()
            wait([self._queued[0]], timeout=0.5)
            self._source.poll(self.settings.poll.max_records, 0)
            return True, True
        if paused:
            self._source.resume()
        return False, False

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

    def _periodic_checkpoint(self) -> None:
        """A checkpoint between polls. A commit refused because the group is rebalancing is
        expected, not fatal: the state is saved, and the next poll runs the rebalance, whose
        revocation checkpoints and commits again for the partitions that move. So is a commit
        that fails for a retriable reason (the broker restarting: a timeout, no coordinator):
        the state holds the offsets, the next checkpoint commits newer ones, and a restart
        meanwhile resumes from the state's offsets, the newer ones (``_on_assigned``)."""
        try:
            self.checkpoint()
        except CommitFailed as error:
            self.metrics.commit_failures.inc()
            log.warning("commit refused during a rebalance; the revocation will commit: %s", error)
        except SourceError as error:
            if not error.retriable:
                raise
            self.metrics.commit_failures.inc()
            log.warning("commit failed (retriable); the next checkpoint commits again: %s", error)

    def _export_lag(self) -> None:
        for (topic, partition), lag in self._source.lag().items():
            self.metrics.lag.labels(topic, str(partition)).set(lag)
        self.metrics.ready.set(1.0 if self.ready()[0] else 0.0)

    def _preload_newest(self) -> None:
        """Load the newest version that loads, here and in the forward process. A newest one
        that cannot be loaded (corrupt, tampered) is refused and counted, and the one before it
        is tried, so /readyz does not wait for traffic naming a good version."""
        for version in reversed(self.models.available_versions()):
            if self.models.get(version) is not None:
                self.pipeline.warm(version)
                return

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
    server = MetricsServer(host, port, agent.registry, agent.healthy, agent.ready, live=agent.pipeline.live.snapshot)
    log.info("serving /metrics, /healthz, /readyz and the live page / on %s:%d", host, server.port)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s", signal.Signals(signum).name)
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agent.run()
    finally:
        server.close()
