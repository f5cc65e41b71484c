"""Recompute attention rows for a micro-batch of histories of one model version.

Histories are sorted by length and cut into chunks of at most ``max_batch`` rows; each
chunk is left-padded only to its own longest history, so short histories do not pay
for max_len columns. Chunks of 64-128 rows run near peak, while much larger ones lose up
to 4x to page-fault churn in glibc's allocator (DESIGN.md).

With an executor, chunks run as parallel forward passes, each on one intra-op thread.
On 2 cores that is 1.45x one pass at a time, while torch's own OpenMP threads spin
between kernels and starve the thread that polls Kafka (bench/throughput.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor

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


def _forward(model: SASRec, padded: np.ndarray) -> np.ndarray:
    with torch.inference_mode():  # thread-local: entered on the thread that runs the pass
        return model.attention_rows(torch.from_numpy(padded)).numpy()


def recompute(
    model: SASRec,
    histories: Sequence[np.ndarray],
    *,
    max_len: int,
    max_batch: int = 64,
    executor: Executor | None = None,
) -> Iterator[Chunk]:
    """Yield attention chunks covering every history exactly once (in length order).

    With ``executor``, every chunk's forward pass is submitted up front and the chunks
    are yielded in order as they finish, so the caller's work on one chunk overlaps the
    passes of the next.
    """
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    lengths = np.fromiter((min(len(h), max_len) for h in histories), dtype=np.int64, count=len(histories))
    order = np.argsort(lengths, kind="stable")
    pieces = []
    for start in range(0, len(order), max_batch):
        rows = order[start : start + max_batch]
        pieces.append((rows, left_pad([histories[i] for i in rows], int(lengths[rows].max()))))
    if executor is None:
        for rows, padded in pieces:
            yield Chunk(rows=rows, weights=_forward(model, padded), item_index=padded, lengths=lengths[rows])
        return
    futures = [executor.submit(_forward, model, padded) for _, padded in pieces]
    try:
        for (rows, padded), future in zip(pieces, futures, strict=True):
            yield Chunk(rows=rows, weights=future.result(), item_index=padded, lengths=lengths[rows])
    finally:
        for future in futures:  # a caller that stops early leaves no passes queued
            future.cancel()
