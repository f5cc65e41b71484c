"""Recompute attention rows for a micro-batch of histories of one model version.

Histories are sorted by length and cut into chunks of at most ``max_batch`` rows; each
chunk is left-padded only to its own longest history, so short histories do not pay
for max_len columns. Chunks of 64-128 rows run near peak, while much larger ones lose up
to 4x to page-fault churn in glibc's allocator (measured at batch 1024 on 2 cores).

Starting the passes and collecting their rows are separate steps (:func:`start`,
:func:`collect`): the agent starts a batch's passes, folds the previous batch while they
run, then collects. Where a pass runs is the caller's choice (``Forward``): inline when
its rows are collected, on a thread pool, or in another process (``monitor.attention.forward``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Protocol

import numpy as np
import torch

from model.data import left_pad
from model.sasrec import SASRec


@dataclasses.dataclass(frozen=True)
class Chunk:
    rows: np.ndarray  # [b] positions of these events in the caller's list
    weights: np.ndarray  # [b, layers, heads, w] float32 attention rows, left-padded
    item_index: np.ndarray  # [b, w] int64 model item indices, 0 = padding
    lengths: np.ndarray  # [b] int64 real history lengths (after truncation to max_len)


class Pending(Protocol):
    """A forward pass started over one padded chunk (a ``concurrent.futures.Future`` is one)."""

    def result(self) -> np.ndarray: ...


# Starts the passes over a batch's padded [b, w] chunks: one Pending per chunk, in order.
Forward = Callable[[list[np.ndarray]], list[Pending]]


@dataclasses.dataclass(frozen=True)
class StartedChunk:
    rows: np.ndarray
    padded: np.ndarray
    lengths: np.ndarray
    weights: Pending


def forward(model: SASRec, padded: np.ndarray) -> np.ndarray:
    """One pass of the fast attention path: [b, w] indices -> [b, layers, heads, w] rows."""
    with torch.inference_mode():  # thread-local: entered on the thread that runs the pass
        return model.attention_rows(torch.from_numpy(padded)).numpy()


@dataclasses.dataclass(frozen=True)
class InlinePass:
    """A pass that runs when its rows are asked for, on the caller's thread (so one chunk's
    rows at a time are alive)."""

    model: SASRec
    padded: np.ndarray

    def result(self) -> np.ndarray:
        return forward(self.model, self.padded)


def start(run: Forward, histories: Sequence[np.ndarray], *, max_len: int, max_batch: int = 64) -> list[StartedChunk]:
    """Cut ``histories`` into length-sorted chunks and start a pass over each, in order."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    lengths = np.fromiter((min(len(h), max_len) for h in histories), dtype=np.int64, count=len(histories))
    order = np.argsort(lengths, kind="stable")
    pieces = []
    for begin in range(0, len(order), max_batch):
        rows = order[begin : begin + max_batch]
        pieces.append((rows, left_pad([histories[i] for i in rows], int(lengths[rows].max()))))
    passes = run([padded for _, padded in pieces]) if pieces else []
    return [StartedChunk(rows=rows, padded=padded, lengths=lengths[rows], weights=weights)
            for (rows, padded), weights in zip(pieces, passes, strict=True)]


def collect(started: Sequence[StartedChunk]) -> Iterator[Chunk]:
    """Yield the chunks in order as their passes finish (every history exactly once).

    A caller that stops early leaves no passes queued.
    """
    try:
        for chunk in started:
            yield Chunk(rows=chunk.rows, weights=chunk.weights.result(), item_index=chunk.padded,
                        lengths=chunk.lengths)
    finally:
        for chunk in started:
            cancel = getattr(chunk.weights, "cancel", None)
            if cancel is not None:
                cancel()


def recompute(
    model: SASRec,
    histories: Sequence[np.ndarray],
    *,
    max_len: int,
    max_batch: int = 64,
    executor: Executor | None = None,
) -> Iterator[Chunk]:
    """Yield attention chunks covering every history exactly once (in length order).

    With ``executor``, every chunk's pass is submitted up front and the chunks are yielded
    in order as they finish, so the caller's work on one chunk overlaps the next passes.
    """
    if executor is None:
        run: Forward = lambda chunks: [InlinePass(model, padded) for padded in chunks]  # noqa: E731
    else:
        run = lambda chunks: [executor.submit(forward, model, padded) for padded in chunks]  # noqa: E731
    return collect(start(run, histories, max_len=max_len, max_batch=max_batch))
