"""Windows and recompute: each event's history looked up in the model's vocabulary, then
attention recomputed on those windows and reduced to statistics.

:func:`window_histories` is one vectorised lookup per batch and version. :class:`Recompute`
owns the forward passes (in a child process by default, see ``monitor.attention.forward``):
it starts them, so that a batch's passes can run while another batch is folded, and
collects their rows into statistics ``[B, stats, layers]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from monitor.attention.forward import make_forwards
from monitor.attention.recompute import StartedChunk, collect, start
from monitor.attention.registry import ModelRegistry, ServedModel
from monitor.attention.stats import STATISTICS, attended_items, compute
from monitor.drift.items import Attended
from monitor.export.metrics import AgentMetrics
from monitor.stream.config import PipelineConfig
from monitor.stream.events import Event, Reason
from monitor.stream.intake import Item, RecordLike


class Windows(NamedTuple):
    """The windows of one version's events (see :func:`window_histories`)."""

    kept: list[Event]  # the events with any known item, in input order
    histories: list[np.ndarray]  # model indices of each kept event's window
    positions: list[np.ndarray]  # [n] where each window item sits in event.history (only with keep_positions)
    skipped: int  # unknown items skipped inside the windows
    truncated: int  # windows that start after their history's first item


def window_histories(served: ServedModel, items: list[Item], *, keep_positions: bool = False,
                     reject: Callable[[RecordLike, Reason, str], None]) -> Windows:
    """Each event's window: the last ``max_len`` items of its history the model knows.

    Returns the events with any known item (the others are dead-lettered through
    ``reject``), the model indices of their windows, where each window item sits in its
    event's history (only with ``keep_positions``: the paired comparison aligns two
    versions' windows of one event by history position), the unknown
    items skipped inside the windows and how many windows start after the history's first
    item. Only the tail the model can read is looked up, in one vectorised pass; an event
    whose tail holds unknown items is looked up whole, since its window then reaches
    further back. Unknown items older than the window are not counted: the model would not
    have read them anyway.
    """
    window = served.max_len
    tails = [event.history[-window:] for _, event in items]
    sizes = np.fromiter(map(len, tails), dtype=np.int64, count=len(tails))
    all_raw = np.fromiter(itertools.chain.from_iterable(tails), dtype=np.int64, count=int(sizes.sum()))
    all_indices = served.to_indices(all_raw)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))  # histories are never empty (decode)
    unknown = np.add.reduceat((all_indices < 0).astype(np.int64), starts)
    histories = np.split(all_indices, starts[1:])
    full_sizes = np.fromiter((len(event.history) for _, event in items), dtype=np.int64, count=len(items))
    # A window without unknown items is the history's last sizes[k] positions.
    positions = [np.arange(n - size, n) for n, size in zip(full_sizes.tolist(), sizes.tolist())] if keep_positions else []
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
            reject(items[k][0], Reason.UNKNOWN_ITEMS,
                   f"none of {len(history)} history items is known to {served.version}")
            continue
        first = int(known_at[-window]) if known_at.size >= window else 0  # where the window starts
        in_window = known_at[known_at >= first]
        skipped += (len(raw) - first) - len(in_window)
        cut[k] = first > 0
        histories[k] = indices[in_window]
        if keep_positions:  # raw is the whole history here (an uncut tail is the whole history)
            positions[k] = in_window
    kept = [event for (_, event), k in zip(items, keep, strict=True) if k]
    if not keep.all():
        histories = [h for h, k in zip(histories, keep, strict=True) if k]
        positions = [p for p, k in zip(positions, keep, strict=True) if k] if keep_positions else []
    return Windows(kept, histories, positions, skipped, int(cut[keep].sum()))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One version's usable events of a batch, with their forward passes started."""

    served: ServedModel
    events: list[Event]
    histories: list[np.ndarray]  # model indices of each event's window
    passes: list[StartedChunk]
    previous: str | None  # the version this one replaced, when its events are paired
    now: float


class Recompute:
    """The forward passes over windows, and the attention statistics of their rows."""

    def __init__(self, registry: ModelRegistry, config: PipelineConfig, metrics: AgentMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._forwards = make_forwards(config.forward_processes, config.forward_threads, registry,
                                       on_replaced=metrics.forward_pool_replaced.inc)

    def start(self, served: ServedModel, histories: list[np.ndarray], width: int) -> list[StartedChunk]:
        """Start the passes over ``histories`` (left-padded to ``width``), in length-sorted chunks."""
        return start(lambda chunks: self._forwards.submit(served, chunks), histories,
                     max_len=width, max_batch=self._config.max_batch)

    def statistics(self, served: ServedModel,
                   passes: list[StartedChunk]) -> tuple[np.ndarray, np.ndarray | None, Attended]:
        """Head-averaged [B, stats, layers] for the histories of ``passes``, in their order,
        per-head [B, stats, layers, heads] when ``stats.per_head`` is configured (else None),
        and the attention each event put on each of its items (raw item ids)."""
        count = sum(len(chunk.rows) for chunk in passes)
        config = self._config.stats
        averaged_config = dataclasses.replace(config, per_head=False)
        config_b = served.checkpoint.config
        out = np.empty((count, len(STATISTICS), config_b.layers), dtype=np.float32)
        per_head = (np.empty((count, len(STATISTICS), config_b.layers, config_b.heads), dtype=np.float32)
                    if config.per_head else None)
        started, stats_seconds = time.perf_counter(), 0.0
        events, indices, masses = [], [], []
        for chunk in collect(passes):
            t0 = time.perf_counter()
            averaged = chunk.weights.mean(axis=2, dtype=np.float32)  # [b, layers, w], once for both uses
            out[chunk.rows] = compute(averaged[:, :, None, :], chunk.lengths, chunk.item_index, served.genre_matrix,
                                      averaged_config)
            if per_head is not None:
                per_head[chunk.rows] = compute(chunk.weights, chunk.lengths, chunk.item_index,
                                               served.genre_matrix, config)
            event, index, mass = attended_items(averaged, chunk.item_index)
            events.append(chunk.rows[event])
            indices.append(index)
            masses.append(mass)
            stats_seconds += time.perf_counter() - t0
        # recompute: waiting for (and, inline, running) the forward passes; stats overlap them
        self._metrics.observe_stage("recompute", time.perf_counter() - started - stats_seconds)
        self._metrics.observe_stage("stats", stats_seconds)
        rank = np.zeros(served.raw_order.size + 1, dtype=np.int64)  # model index -> position in raw_ids
        rank[served.raw_order] = np.arange(served.raw_order.size)
        attended = Attended(
            np.concatenate(events) if events else np.zeros(0, dtype=np.int64),
            rank[np.concatenate(indices)] if indices else np.zeros(0, dtype=np.int64),
            np.concatenate(masses) if masses else np.zeros((0, config_b.layers), dtype=np.float32),
            served.raw_ids,
        )
        return out, per_head, attended

    def warm(self, served: ServedModel) -> None:
        """Start the forward processes and load ``served`` there ahead of traffic."""
        self._forwards.warm(served)

    def close(self) -> None:
        """Stop the forward passes' threads or processes (after the last batch)."""
        self._forwards.close()
