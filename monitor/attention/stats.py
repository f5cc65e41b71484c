"""Vectorised statistics of attention rows: one small vector of numbers per event.

Input convention (fixed by the model's attention-extraction API):

- histories are LEFT-padded to ``L`` columns, pad id 0, most recent item in
  the last column; ``lengths[b]`` (1 <= n <= L) real items sit in the last n
  columns;
- ``weights`` [B, layers, heads, L] float32 are the last query row per layer
  and head: padding exactly 0, each row sums to 1.

By default every statistic is computed on the head-AVERAGED row per layer, which
is invariant to a permutation of heads (a retrain permutes heads, so per-head
numbers are not comparable across model versions). ``per_head=True`` adds a head
axis for within-version tracking.

Every statistic lies in [0, 1] and is normalised by the number n of real
positions, so histories of different lengths compare (``w`` = the row over
its n real positions, renormalised to sum 1):

=================  ==========================================================  =====
statistic          definition                                                  n = 1
=================  ==========================================================  =====
``entropy``        H(w) / log n  (1 uniform, 0 one-hot)                        0
``max_weight``     max_i w_i                                                   1
``topk_mass``      sum of the min(k, n) largest weights (k = ``top_k``)        1
``gini``           Gini(w) / ((n-1)/n)  (0 uniform, 1 one-hot)                 1
``effective_span`` (smallest m: the m most recent positions hold >= q) / n     1
``recent_mass``    mass on the min(r, n) most recent items (r = ``recent_k``)  1
``genre_entropy``  H(genre mass) / log G over the G genres (0 when G = 1 or    H/logG
                   no attended item has a genre)
=================  ==========================================================  =====

The n = 1 convention: a single-item history is treated as *fully concentrated*
(entropy 0, Gini 1), consistent with max_weight = topk_mass = 1. Note that
``effective_span`` is then 1 (the whole history), as for any row whose mass
sits on the oldest item. ``effective_span`` uses a tolerance of 1e-6 on q so
float32 rows that are exactly at the quantile (e.g. uniform rows) give
ceil(q n) / n.

Genre mass is ``sum_i w_i * genre_matrix[item_index_i]``; the caller passes a
row-normalised item x genre matrix in the model's item-index space, row 0 (the
pad id) zero. Attention on items without genres (zero rows) is dropped and the
genre mass renormalised.

Whatever sits in the padding columns is ignored (zeroed), negative weights are
clipped to 0 and each row is renormalised to sum 1. Non-finite weights at real
positions are not checked here (a model bug): they give NaN statistics for that
row, which the caller should count and drop before observing.

Computation runs in float32 with few temporaries, updated in place where
possible (the cumulative sum behind ``effective_span`` is float64 so its
tolerance holds on long rows). Fresh large temporaries are the main cost here:
glibc hands blocks over its mmap/trim thresholds back to the OS and
page-faults them in again on every batch, so run the agent with
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` raised (``monitor.attention.allocator``
does it at start-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["STATISTICS", "StatsConfig", "attended_items", "compute", "paired_divergence", "union_rows"]

STATISTICS: Final[tuple[str, ...]] = (
    "entropy",
    "max_weight",
    "topk_mass",
    "gini",
    "effective_span",
    "recent_mass",
    "genre_entropy",
)

_SPAN_TOLERANCE: Final = 1e-6
_LOG_FLOOR: Final = np.float32(1e-30)  # w * log(max(w, floor)) is 0 at w = 0


@dataclass(frozen=True)
class StatsConfig:
    """Parameters of the statistics (validated on construction)."""

    top_k: int = 3  # topk_mass: mass of the k largest weights
    recent_k: int = 5  # recent_mass: mass on the r most recent items
    span_quantile: float = 0.9  # effective_span: mass quantile q, 0 < q <= 1
    per_head: bool = False  # add a head axis instead of averaging heads

    def __post_init__(self) -> None:
        for name in ("top_k", "recent_k"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"StatsConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 < float(self.span_quantile) <= 1.0:
            raise ValueError(f"StatsConfig.span_quantile must be in (0, 1], got {self.span_quantile!r}")
        if not isinstance(self.per_head, bool):
            raise ValueError(f"StatsConfig.per_head must be a bool, got {self.per_head!r}")


def compute(
    weights: npt.NDArray[np.floating],
    lengths: npt.NDArray[np.integer],
    item_index: npt.NDArray[np.integer],
    genre_matrix: npt.NDArray[np.floating],
    config: StatsConfig = StatsConfig(),
) -> npt.NDArray[np.float32]:
    """Statistics of every attention row.

    Args:
        weights: [B, layers, heads, L] last-query attention rows, left-padded.
        lengths: [B] number of real history items per event, 1 <= n <= L.
        item_index: [B, L] histories in model item-index space, pad 0.
        genre_matrix: [V, G] row-normalised item x genre matrix, row 0 zero.
        config: statistic parameters.

    Returns:
        [B, len(STATISTICS), layers] float32, or [B, len(STATISTICS), layers, heads]
        when ``config.per_head``; axis 1 follows :data:`STATISTICS`.
    """
    weights = np.asarray(weights)
    if weights.ndim != 4:
        raise ValueError(f"weights must be [B, layers, heads, L], got shape {weights.shape}")
    batch, layers, heads, width = weights.shape
    n = _check_lengths(lengths, batch, width)  # [B] int64
    item_index = np.asarray(item_index)
    genre_matrix = np.asarray(genre_matrix)
    if item_index.shape != (batch, width):
        raise ValueError(f"item_index must be [B, L] = {(batch, width)}, got {item_index.shape}")
    if genre_matrix.ndim != 2 or genre_matrix.shape[1] < 1:
        raise ValueError(f"genre_matrix must be [V, G] with G >= 1, got {genre_matrix.shape}")
    if batch and (item_index.min() < 0 or item_index.max() >= genre_matrix.shape[0]):
        raise ValueError(f"item_index outside [0, {genre_matrix.shape[0]})")

    if config.per_head:
        rows = weights.reshape(batch, layers * heads, width).astype(np.float32)  # [B, M, L] (a copy)
    else:
        rows = weights.mean(axis=2, dtype=np.float32)  # [B, M=layers, L]
    rows = _mask_and_normalise(rows, n)

    out = np.empty((batch, len(STATISTICS), rows.shape[1]), dtype=np.float32)  # [B, S, M]
    nf = n.astype(np.float32)[:, None]  # [B, 1]
    many = nf > 1  # [B, 1]
    # Each large temporary is dropped as soon as its statistics are out, so the
    # heap's peak stays low (fewer trims, fewer page faults on the next batch).
    out[:, 6] = _genre_entropy(rows, item_index, genre_matrix)

    # entropy: H(w) / log n, 0 for n = 1 (w log w -> 0 at w = 0 via the floor)
    scratch = np.maximum(rows, _LOG_FLOOR)
    np.log(scratch, out=scratch)
    scratch *= rows
    out[:, 0] = np.where(many, scratch.sum(axis=-1) / -np.log(np.where(many, nf, 2.0)), 0.0)
    del scratch

    srt = np.sort(rows, axis=-1)  # [B, M, L] ascending; padding zeros sort first
    out[:, 1] = srt[..., -1]
    out[:, 2] = srt[..., width - min(config.top_k, width) :].sum(axis=-1)
    # gini via ranks among the n real values: rank = position - (L - n) + 1;
    # padding (and real zeros) contribute nothing whatever their rank.
    ranks = np.arange(1, width + 1, dtype=np.float32)[None, :] - (width - nf)  # [B, L]
    ranked = np.einsum("bml,bl->bm", srt, ranks)
    out[:, 3] = np.where(many, (2.0 * ranked - (nf + 1.0)) / np.where(many, nf - 1.0, 1.0), 1.0)
    del srt

    # older[..., i] = mass on positions <= i, so the m most recent positions hold
    # 1 - older[..., L-m-1]; the smallest m reaching q is L minus the number of
    # prefixes holding at most 1 - q (padding prefixes hold 0, hence m <= n).
    # Accumulated in float64 so the tolerance on q stays meaningful for long rows.
    older = np.cumsum(rows, axis=-1, dtype=np.float64)  # [B, M, L]
    span = width - (older <= 1.0 - config.span_quantile + _SPAN_TOLERANCE).sum(axis=-1)
    out[:, 4] = np.maximum(span, 1) / nf
    recent_k = min(config.recent_k, width)
    out[:, 5] = 1.0 - older[..., width - recent_k - 1] if recent_k < width else 1.0

    np.clip(out, 0.0, 1.0, out=out)

    if config.per_head:
        return out.reshape(batch, len(STATISTICS), layers, heads)
    return out


def attended_items(
    rows: npt.NDArray[np.floating], item_index: npt.NDArray[np.integer]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The attention each event's head-averaged row puts on each item of its history.

    Args:
        rows: [B, layers, L] head-averaged last-query rows, left-padded (each sums to 1).
        item_index: [B, L] histories in model item-index space, pad 0.

    Returns:
        (event [K], item index [K], mass [K, layers] float32): one entry per real position
        (an item repeated in a history gets one entry per position), padding left out.
    """
    rows = np.asarray(rows)
    item_index = np.asarray(item_index)
    if rows.ndim != 3 or item_index.shape != (rows.shape[0], rows.shape[2]):
        raise ValueError(f"rows [B, layers, L] and item_index [B, L] disagree: {rows.shape}, {item_index.shape}")
    real = item_index > 0  # [B, L]
    event = np.nonzero(real)[0]
    return event, item_index[real].astype(np.int64), rows.transpose(0, 2, 1)[real].astype(np.float32, copy=False)


def paired_divergence(
    old_rows: npt.NDArray[np.floating],
    new_rows: npt.NDArray[np.floating],
    lengths: npt.NDArray[np.integer],
    top_k: int = 3,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Compare two models' attention on identical events.

    Args:
        old_rows: [B, L] head-averaged attention rows of the old model (pick a
            layer, or average layers, the same way for both models).
        new_rows: [B, L] the new model's rows over the same left-padded histories.
        lengths: [B] real history lengths.
        top_k: size of the attended-position sets, min(top_k, n) per event.

    Returns:
        js: [B] Jensen-Shannon distance (sqrt of the base-2 divergence), 0 for
            identical rows, 1 for rows with disjoint support.
        topk_overlap: [B] |top_k(old) & top_k(new)| / k, in [0, 1]. Ties are
            broken towards the more recent position, identically for both rows.
    """
    old = np.asarray(old_rows)
    new = np.asarray(new_rows)
    if old.ndim != 2 or old.shape != new.shape:
        raise ValueError(f"old_rows and new_rows must both be [B, L], got {old.shape} and {new.shape}")
    if type(top_k) is not int or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    batch, width = old.shape
    n = _check_lengths(lengths, batch, width)
    p = _mask_and_normalise(old.astype(np.float64), n)  # [B, L]
    q = _mask_and_normalise(new.astype(np.float64), n)
    # Jensen-Shannon by hand, not scipy.spatial.distance.jensenshannon(p, q, base=2, axis=-1):
    # same values (to 2e-16), but on this per-event path scipy measured 1.4-2.1x slower
    # (it renormalises rows that are already normalised; B=256 x L=50: 0.76 vs 1.60 ms).
    mid = 0.5 * (p + q)
    safe_mid = np.where(mid > 0, mid, 1.0)
    kl_p = (p * np.log2(np.where(p > 0, p, 1.0) / safe_mid)).sum(axis=-1)
    kl_q = (q * np.log2(np.where(q > 0, q, 1.0) / safe_mid)).sum(axis=-1)
    js = np.sqrt(np.clip(0.5 * (kl_p + kl_q), 0.0, 1.0))

    k = np.minimum(top_k, n)[:, None]  # [B, 1]
    overlap = (_top_positions(p, k) & _top_positions(q, k)).sum(axis=-1) / k[:, 0]
    return js.astype(np.float32), overlap.astype(np.float32)


def union_rows(
    old_positions: Sequence[npt.NDArray[np.integer]],
    old_rows: npt.NDArray[np.floating],
    new_positions: Sequence[npt.NDArray[np.integer]],
    new_rows: npt.NDArray[np.floating],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Two versions' rows of the same events, aligned by history position over the union
    of the positions either version read, ready for :func:`paired_divergence`.

    Each version reads its own window of an event's history (its own vocabulary and
    ``max_len``), so column j of one version's row and column j of the other's are in
    general different items. Aligning by position in the raw history, and giving a
    position that one version did not read weight 0 on that side, compares what the two
    versions attend to over everything either of them sees: a context cut that puts all
    its mass on the last three items is then far from a model spreading it over fifty.

    Args:
        old_positions: per event, the ascending history positions the old version read.
        old_rows: [B, M, Lo] its rows (M layers), left-padded: event b's row over
            ``old_positions[b]`` sits in its last ``len(old_positions[b])`` columns.
        new_positions, new_rows: the same for the new version, [B, M, Ln].

    Returns:
        old, new: [B, M, U] rows over each event's union of positions, left-padded to the
        widest union U; lengths: [B] union widths.

    >>> old, new, n = union_rows([np.array([7, 8, 9])], np.array([[[0.2, 0.3, 0.5]]]),
    ...                          [np.array([5, 9])], np.array([[[0.4, 0.6]]]))  # union: positions 5, 7, 8, 9
    >>> old[0, 0].astype(float).round(2).tolist(), new[0, 0].astype(float).round(2).tolist(), n.tolist()
    ([0.0, 0.2, 0.3, 0.5], [0.4, 0.0, 0.0, 0.6], [4])
    """
    old_rows, new_rows = np.asarray(old_rows), np.asarray(new_rows)
    batch = len(old_positions)
    if old_rows.ndim != 3 or new_rows.ndim != 3 or old_rows.shape[:2] != new_rows.shape[:2] or \
            old_rows.shape[0] != batch or len(new_positions) != batch:
        raise ValueError(f"rows must be [B, M, L] for the same B = {batch} events and M layers, "
                         f"got {old_rows.shape} and {new_rows.shape}")
    unions = [np.union1d(a, b) for a, b in zip(old_positions, new_positions, strict=True)]
    lengths = np.fromiter(map(len, unions), dtype=np.int64, count=batch)
    width = int(lengths.max()) if batch else 1
    old_out = np.zeros((batch, old_rows.shape[1], width), dtype=np.float32)
    new_out = np.zeros_like(old_out)
    for b, union in enumerate(unions):
        offset = width - len(union)
        for out, rows, positions in ((old_out, old_rows, old_positions[b]), (new_out, new_rows, new_positions[b])):
            columns = offset + np.searchsorted(union, positions)
            out[b][:, columns] = rows[b, :, rows.shape[-1] - len(positions):]
    return old_out, new_out, lengths


def _check_lengths(lengths: npt.NDArray[np.integer], batch: int, width: int) -> npt.NDArray[np.int64]:
    """Validate [B] lengths (1 <= n <= L) and return them as int64."""
    n = np.asarray(lengths)
    if n.shape != (batch,) or (batch and not np.issubdtype(n.dtype, np.integer)):
        raise ValueError(f"lengths must be an int array of shape ({batch},), got {n.dtype} {n.shape}")
    n = n.astype(np.int64, copy=False)
    if batch and (n.min() < 1 or n.max() > width):
        raise ValueError(f"lengths must lie in [1, {width}]")
    return n


def _mask_and_normalise(rows: npt.NDArray[np.floating], n: npt.NDArray[np.int64]) -> npt.NDArray[np.floating]:
    """Zero the padding columns of [B, ..., L] rows and rescale each row to sum 1 (in place)."""
    width = rows.shape[-1]
    padding = np.arange(width)[None, :] < (width - n)[:, None]  # [B, L]
    np.copyto(rows, 0.0, where=padding.reshape(padding.shape[:1] + (1,) * (rows.ndim - 2) + padding.shape[1:]))
    np.maximum(rows, 0.0, out=rows)
    total = rows.sum(axis=-1, keepdims=True)
    rows /= np.where(total > 0, total, 1.0)
    return rows


def _genre_entropy(
    rows: npt.NDArray[np.float32], item_index: npt.NDArray[np.integer], genre_matrix: npt.NDArray[np.floating]
) -> npt.NDArray[np.float32]:
    """[B, M] entropy of the attention mass per genre, divided by log G."""
    genres = genre_matrix.shape[1]
    # np.take is several times faster than fancy indexing here; float32 is ample
    # for a weighted sum over at most L items.
    per_item = np.take(genre_matrix.astype(np.float32, copy=False), item_index, axis=0)  # [B, L, G]
    mass = np.matmul(rows, per_item)  # [B, M, G]
    total = mass.sum(axis=-1, keepdims=True)
    mass /= np.where(total > 0, total, 1.0)
    if genres == 1:
        return np.zeros(mass.shape[:2], dtype=np.float32)
    return (mass * np.log(np.maximum(mass, _LOG_FLOOR))).sum(axis=-1) / -np.log(genres)


def _top_positions(rows: npt.NDArray[np.float64], k: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """[B, L] mask of each row's k[b] largest positions ([B, 1] k), ties to the more recent.

    No full sort: the k-th largest value comes from a partition, every position
    above it is in, and the most recent of the positions equal to it fill the rest.
    """
    width = rows.shape[-1]
    most = int(k.max()) if k.size else 1
    top = np.sort(np.partition(rows, width - most, axis=-1)[:, width - most :], axis=-1)  # [B, most] ascending
    threshold = np.take_along_axis(top, most - k, axis=-1)  # [B, 1] the k-th largest
    above = rows > threshold
    tied = rows == threshold
    need = k - above.sum(axis=-1, keepdims=True)
    tied_from_right = np.cumsum(tied[:, ::-1], axis=-1)[:, ::-1]  # tied positions at or after each
    return above | (tied & (tied_from_right <= need))
