"""Where the agent's forward passes run: in this process, or in child processes.

Why a child process: a forward pass is ~50 us of exact fp32 work per history, but
between its ~40 torch kernels it needs the interpreter lock, which the poll thread
(kafka-python's record parsing, msgspec decode) and the fold worker hold for most of
their time. On threads of the agent, the passes took ~82 us of CPU per history instead
of ~56 alone, and the agent used 1.3 of 2 cores. One child, with a lock of its own, takes
63-66 us per history in the running agent (docs/architecture.md, "Forward passes in a
child process"). Per history, the parent sends at most 400 bytes of padded indices and
gets back at most 800 bytes of attention rows (50 columns, 2 layers, 2 heads).

A child serves versions through a ``ModelRegistry`` of its own over the agent's checkpoint
directory: loaded the first time a batch names them, at most ``max_loaded`` kept.
If a child dies (OOM kill, crash), its passes fail with ``BrokenProcessPool``: the pool
is replaced once and each of those passes is retried there; a second failure is raised.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from monitor.attention.allocator import keep_freed_memory
from monitor.attention.recompute import InlinePass, Pending, forward
from monitor.attention.registry import ModelRegistry, ServedModel

log = logging.getLogger(__name__)


class Forwards(Protocol):
    """Starts the forward passes of a served version over a batch's padded chunks."""

    def submit(self, served: ServedModel, chunks: list[np.ndarray]) -> list[Pending]: ...
    def warm(self, served: ServedModel) -> None: ...  # ready ``served`` ahead of traffic
    def close(self) -> None: ...


class InlineForwards:
    """No parallelism: each pass runs on the thread that collects it."""

    def submit(self, served: ServedModel, chunks: list[np.ndarray]) -> list[Pending]:
        return [InlinePass(served.checkpoint.model, padded) for padded in chunks]

    def warm(self, served: ServedModel) -> None:
        pass  # the model is already loaded in this process

    def close(self) -> None:
        pass


class ThreadForwards:
    """Passes on threads of this process, one torch intra-op thread each."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="attnmon-forward")

    def submit(self, served: ServedModel, chunks: list[np.ndarray]) -> list[Pending]:
        return [self._pool.submit(forward, served.checkpoint.model, padded) for padded in chunks]

    def warm(self, served: ServedModel) -> None:
        pass  # the model is already loaded in this process

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# -- child side ------------------------------------------------------------------------------
_child_registry: ModelRegistry | None = None


def _child_init(root: Path, torch_threads: int, max_loaded: int) -> None:
    global _child_registry
    _child_registry = ModelRegistry(root, max_loaded=max_loaded)
    # Ctrl-C reaches the whole process group, and systemd's default KillMode signals every
    # process of the unit: the agent drains and then stops its children itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A child waiting on its task queue does not notice a parent that was killed (SIGKILL,
    # OOM): it would live on as an orphan, so it watches for being re-parented.
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True,
                     name="attnmon-orphan-watch").start()
    torch.set_num_threads(torch_threads)
    keep_freed_memory()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _child_forward(version: str, chunks: list[np.ndarray]) -> list[np.ndarray]:
    assert _child_registry is not None  # set by _child_init
    served = _child_registry.get(version)
    if served is None:  # the parent loaded it just before: its directory changed meanwhile
        raise RuntimeError(f"the forward process cannot load model version {version!r}")
    return [forward(served.checkpoint.model, padded) for padded in chunks]


# -- parent side -----------------------------------------------------------------------------
class _RemoteBatch:
    """A batch's passes in a child, as one task; retried once on a fresh pool if the child died."""

    def __init__(self, owner: ProcessForwards, version: str, chunks: list[np.ndarray]) -> None:
        self._owner, self._version, self._chunks = owner, version, chunks
        self._future, self._pool = owner._start(version, chunks)
        self._rows: list[np.ndarray] | None = None

    def result(self) -> list[np.ndarray]:
        if self._rows is None:
            try:
                self._rows = self._future.result()
            except BrokenProcessPool:
                self._owner._replace(self._pool)
                future, _ = self._owner._start(self._version, self._chunks)
                self._rows = future.result()
        return self._rows

    def cancel(self) -> bool:
        return self._future.cancel()


@dataclasses.dataclass(frozen=True)
class _RemoteChunk:
    batch: _RemoteBatch
    index: int

    def result(self) -> np.ndarray:
        return self.batch.result()[self.index]

    def cancel(self) -> bool:
        return self.batch.cancel()


class ProcessForwards:
    """Passes in ``processes`` spawned children, each with its own interpreter lock.

    A batch's chunks go to a child as one task: with one task per chunk, the child
    idled ~14% of the time waiting for the executor's feeder thread, which competes
    for the parent's interpreter lock. Children start with the first task (torch import
    and model load: a few seconds); :meth:`warm` starts them ahead of traffic.
    """

    def __init__(self, processes: int, root: Path, *, torch_threads: int = 1, max_loaded: int = 3,
                 on_replaced: Callable[[], None] | None = None) -> None:
        """``root``: the checkpoint directory the agent's registry serves."""
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self._processes = processes
        self._init_args = (Path(root), torch_threads, max_loaded)
        self._on_replaced = on_replaced
        self._lock = threading.Lock()
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent runs threads (poll, fold, Kafka IO) and torch state
        # that a forked child would inherit half-initialised.
        return ProcessPoolExecutor(self._processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_child_init, initargs=self._init_args)

    def _start(self, version: str, chunks: list[np.ndarray]) -> tuple[Future, ProcessPoolExecutor]:
        with self._lock:
            pool = self._pool
        try:
            return pool.submit(_child_forward, version, chunks), pool
        except BrokenProcessPool:
            pool = self._replace(pool)
            return pool.submit(_child_forward, version, chunks), pool

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """Swap in a new pool unless another batch already replaced ``broken``."""
        with self._lock:
            if self._pool is broken:
                log.error("a forward-pass process died; starting a new pool and retrying its passes")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                if self._on_replaced is not None:
                    self._on_replaced()
            return self._pool

    def submit(self, served: ServedModel, chunks: list[np.ndarray]) -> list[Pending]:
        batch = _RemoteBatch(self, served.version, chunks)
        return [_RemoteChunk(batch, i) for i in range(len(chunks))]

    def warm(self, served: ServedModel) -> None:
        """Start the children and load ``served`` there (blocks until done)."""
        one = [np.full((1, 1), 1, dtype=np.int64)]
        for remote in [self.submit(served, one)[0] for _ in range(self._processes)]:
            remote.result()

    def pids(self) -> list[int]:
        """The children's process ids (for tests and diagnostics)."""
        with self._lock:
            return [process.pid for process in (self._pool._processes or {}).values()]

    def close(self) -> None:
        with self._lock:
            self._pool.shutdown(wait=True, cancel_futures=True)


def make_forwards(processes: int, threads: int, registry: ModelRegistry, *,
                  on_replaced: Callable[[], None] | None = None) -> Forwards:
    """``processes`` > 0: child processes serving ``registry``'s versions; else ``threads``
    threads here (1: inline)."""
    if processes > 0:
        return ProcessForwards(processes, registry.root, torch_threads=torch.get_num_threads(),
                               max_loaded=registry.max_loaded, on_replaced=on_replaced)
    return ThreadForwards(threads) if threads > 1 else InlineForwards()
