"""Recompute attention rows for a micro-batch of histories of one model version.

Histories are sorted by length and cut into chunks of at most ``max_batch`` rows; each
chunk is left-padded only to its own longest history, so short histories do not pay
for max_len columns. Chunks of 32-64 rows run near peak on 2 cores, while much larger
ones lose up to 4x to page-fault churn in glibc's allocator (DESIGN.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

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


def recompute(
    model: SASRec, histories: Sequence[np.ndarray], *, max_len: int, max_batch: int = 64
) -> Iterator[Chunk]:
    """Yield attention chunks covering every history exactly once (in length order)."""
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    lengths = np.fromiter((min(len(h), max_len) for h in histories), dtype=np.int64, count=len(histories))
    order = np.argsort(lengths, kind="stable")
    with torch.inference_mode():
        for start in range(0, len(order), max_batch):
            rows = order[start : start + max_batch]
            width = int(lengths[rows].max())
            padded = left_pad([histories[i] for i in rows], width)
            weights = model.attention_rows(torch.from_numpy(padded))
            yield Chunk(rows=rows, weights=weights.numpy(), item_index=padded, lengths=lengths[rows])
