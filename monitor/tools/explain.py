"""``attnmon explain``: where one prediction looked, as a heatmap and a terminal view.

The event's history goes through the served model's full ``attention`` call (the
same forward that produces the scores, not the monitoring fast path), giving the
last position's attention over every history position for every layer and head,
and the next-item scores. From that:

- a PNG heatmap (matplotlib, Agg): one row per (layer, head) and a head-averaged
  row per layer, one column per history position, most recent on the right; x
  ticks name each item (title and genres, truncated). Long histories show the
  most recent ``max_positions`` columns and say how many are hidden. The image
  size is a pure function of the shown columns and rows (:func:`heatmap_size`);
- a plain-text view at most ``width`` columns wide: the top recommendations
  (recomputed, seen items excluded, as the replayed serving does) and whether
  the event's served list agrees, then per layer the statistics of the
  head-averaged row (the agent's numbers for this event) and its ``top_k`` most
  attended items with position from the end (-1 = the most recent item, which
  is also the query position), weight, a bar, title and genres. Items among the
  cohort's heavy hitters (``heavy_hitters``: raw item ids, e.g. the ``top_items`` of
  an ``attnmon report`` summary, :func:`heavy_hitters_of`) are marked ``[heavy]``.

Unknown items are dropped (as the agent does) and a history longer than the
model's ``max_len`` is read from its most recent ``max_len`` items; the text
says so. ``Explanation.weights`` covers every position the model read.
"""

from __future__ import annotations

import dataclasses
import textwrap
import unicodedata
import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import torch

from monitor.stream.events import Event, decode
from monitor.attention.registry import ModelRegistry, ServedModel
from monitor.attention.stats import STATISTICS, StatsConfig, compute

__all__ = ["Explanation", "Recommended", "explain", "heatmap_rows", "heatmap_size", "render_heatmap", "render_text"]

DPI: Final = 100
_BARS: Final = " ▏▎▍▌▋▊▉█"  # eighths of a cell
_BAR_CELLS: Final = 12
_TICK_TITLE: Final = 22  # characters of the title on an x tick
_TICK_GENRES: Final = 18  # characters of the genre list on an x tick


@dataclasses.dataclass(frozen=True)
class Recommended:
    rank: int  # 1-based
    item: int  # raw item id
    title: str
    genres: tuple[str, ...]
    score: float


@dataclasses.dataclass(frozen=True)
class Explanation:
    text: str  # the terminal view, lines of at most ``width`` columns
    png: Path | None  # the heatmap, when asked for
    weights: np.ndarray  # [layers, heads, n] float32 over the n read positions, oldest first; rows sum to 1
    stats: dict[str, float]  # "entropy_l0", ..., "genre_entropy_l1": head-averaged row statistics
    event_id: str
    user_id: str
    model_version: str
    items: np.ndarray  # [n] raw item ids of the read positions, oldest first
    recommended: tuple[Recommended, ...]  # recomputed top recommendations
    dropped_unknown: int  # history items unknown to the model, dropped
    truncated: int  # oldest known items beyond the model's max_len, not read


def explain(
    event: Event | bytes | bytearray | memoryview,
    registry_root: Path | ModelRegistry,
    *,
    png_path: Path | None = None,
    max_positions: int = 50,
    top_k: int = 5,
    top_recommended: int = 5,
    width: int = 100,
    version: str | None = None,
    stats_config: StatsConfig = StatsConfig(),
    heavy_hitters: Collection[int] = (),
) -> Explanation:
    """Recompute one event's attention and render it.

    ``version`` explains the event under another model version than the one it
    names (e.g. the previous one, after an update). Raises ``InvalidEvent`` for
    an undecodable record, ``LookupError`` when the version is not available and
    ``ValueError`` when no history item is known to the model.
    """
    if max_positions < 1 or top_k < 1 or top_recommended < 1:
        raise ValueError("max_positions, top_k and top_recommended must be >= 1")
    if width < 60:
        raise ValueError(f"width must be >= 60 columns, got {width}")
    if stats_config.per_head:
        raise ValueError("explain reports head-averaged statistics; per_head must be False")
    if not isinstance(event, Event):
        event = decode(event)
    registry = registry_root if isinstance(registry_root, ModelRegistry) else ModelRegistry(Path(registry_root))
    name = version or event.model_version
    served = registry.get(name)
    if served is None:
        raise LookupError(f"model version {name!r} is not available under {registry.root}")

    raw = np.fromiter(event.history, dtype=np.int64, count=len(event.history))
    indices = served.to_indices(raw)
    known = indices >= 0
    dropped = int((~known).sum())
    indices, raw = indices[known], raw[known]
    if len(indices) == 0:
        raise ValueError(f"none of the {len(event.history)} history items is known to {name}")
    truncated = max(0, len(indices) - served.max_len)
    indices, raw = indices[-served.max_len :], raw[-served.max_len :]

    model = served.checkpoint.model
    with torch.inference_mode():
        history = torch.from_numpy(indices[None, :].copy())  # [1, n]: no padding, right-aligned
        attention = model.attention(history)
        scores = attention.scores[0].clone()  # [V+1]
        scores[history[0]] = float("-inf")  # never recommend what was seen
        top = torch.topk(scores, min(top_recommended, int(torch.isfinite(scores).sum())))
    weights = attention.weights[0].numpy().astype(np.float32)  # [layers, heads, n]
    values = compute(weights[None], np.asarray([len(indices)]), indices[None, :], served.genre_matrix, stats_config)
    stats = {f"{stat}_l{layer}": float(values[0, s, layer])
             for s, stat in enumerate(STATISTICS) for layer in range(values.shape[2])}

    catalog = served.checkpoint.catalog
    recommended = tuple(
        Recommended(rank=r + 1, item=int(catalog.item_ids[i]), title=catalog.titles[i],
                    genres=catalog.item_genres[i], score=float(s))
        for r, (i, s) in enumerate(zip(top.indices.tolist(), top.values.tolist(), strict=True))
    )
    explanation = Explanation(
        text="", png=None, weights=weights, stats=stats, event_id=event.event_id, user_id=event.user_id,
        model_version=served.version, items=raw, recommended=recommended, dropped_unknown=dropped,
        truncated=truncated,
    )
    text = render_text(explanation, served, event, top_k=top_k, width=width, heavy_hitters=heavy_hitters)
    png = None
    if png_path is not None:
        png = render_heatmap(explanation, served, Path(png_path), max_positions=max_positions)
    return dataclasses.replace(explanation, text=text, png=png)


# -- terminal view ------------------------------------------------------------------------
def heavy_hitters_of(summary_path: Path, cohort: str = "all") -> set[int]:
    """The raw ids of a cohort's top attended items (every layer) in an ``attnmon report``
    summary.json (its ``top_items``); empty when the summary has none for the cohort."""
    summary = json.loads(Path(summary_path).read_text(encoding="utf-8"))
    layers = summary.get("top_items", {}).get(cohort, {})
    return {int(entry["item"]) for layer in layers.values() for entry in layer["items"]}


def render_text(explanation: Explanation, served: ServedModel, event: Event, *, top_k: int = 5,
                width: int = 100, heavy_hitters: Collection[int] = ()) -> str:
    """The terminal view; every line is at most ``width`` display columns."""
    heavy = {int(i) for i in heavy_hitters}
    catalog = served.checkpoint.catalog
    layers, heads, n = explanation.weights.shape
    label = served.checkpoint.label
    lines = [
        f"event {_printable(explanation.event_id)} · user {_printable(explanation.user_id)} · "
        f"model {explanation.model_version}"
        + (f" ({label})" if label else ""),
        f"history {_count(len(event.history), 'item')}; model read {n}"
        + (f" (the {explanation.truncated} oldest beyond max_len {served.max_len} not read)"
           if explanation.truncated else "")
        + (f"; {_count(explanation.dropped_unknown, 'unknown item')} dropped" if explanation.dropped_unknown else "")
        + f" · {layers} layers × {heads} heads",
        "",
        "recommended (recomputed, seen items excluded)" + _served_agreement(explanation, event) + ":",
    ]
    score_width = max(len(f"{r.score:.3f}") for r in explanation.recommended) if explanation.recommended else 5
    for rec in explanation.recommended:
        lines.append(_columns(f"{rec.rank:>4}  {rec.score:>{score_width}.3f}  ", rec.title,
                              "|".join(rec.genres) or "-", width))

    rows = explanation.weights.mean(axis=1)  # [layers, n] head-averaged
    item_index = served.to_indices(explanation.items)
    for layer in range(layers):
        lines.append("")
        summary = "  ".join(f"{stat} {explanation.stats[f'{stat}_l{layer}']:.3f}" for stat in STATISTICS)
        wrapped = textwrap.wrap(summary, width=width - 10, break_long_words=True) or [""]
        lines.append(f"layer {layer}  " + wrapped[0])
        lines.extend(" " * 9 + more for more in wrapped[1:])
        lines.append(_fit("   pos  weight  " + " " * _BAR_CELLS + "  title / genres", width))
        row = rows[layer]
        order = np.argsort(-row, kind="stable")[: min(top_k, n)]
        peak = float(row[order[0]]) if len(order) else 1.0
        for position in order:
            index = int(item_index[position])
            prefix = f"{position - n:>6}  {row[position]:.3f}  {_bar(float(row[position]), peak)}  "
            mark = "[heavy] " if int(catalog.item_ids[index]) in heavy else ""
            lines.append(_columns(prefix, mark + catalog.titles[index], "|".join(catalog.item_genres[index]) or "-",
                                  width))
        if heads > 1:
            per_head = explanation.weights[layer]  # [heads, n]
            tops = [f"h{h} {position - n} {_fit(catalog.titles[int(item_index[position])], 24)} "
                    f"{per_head[h, position]:.2f}"
                    for h, position in enumerate(per_head.argmax(axis=1))]
            lines.append(_fit("   heads' top: " + " · ".join(tops), width))
    return "\n".join(_fit(line, width) for line in lines)


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def _printable(text: str) -> str:
    """Untrusted event fields with control characters (terminal escapes) replaced."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _served_agreement(explanation: Explanation, event: Event) -> str:
    if not event.recommended or not explanation.recommended:
        return ""
    k = len(explanation.recommended)
    served = {r.item for r in event.recommended[:k]}
    same = sum(r.item in served for r in explanation.recommended)
    return f"; served top-{k} shares {same}"


def _columns(prefix: str, title: str, genres: str, width: int) -> str:
    """prefix + title + genres, the title given about 60 % of what is left."""
    room = width - _display_width(prefix)
    title_room = max(10, int(room * 0.6))
    return prefix + _pad(_fit(title, title_room), title_room) + "  " + _fit(genres, max(0, room - title_room - 2))


def _bar(value: float, peak: float) -> str:
    eighths = int(round(_BAR_CELLS * 8 * value / peak)) if peak > 0 else 0
    full, rest = divmod(eighths, 8)
    return (_BARS[-1] * full + (_BARS[rest] if rest else "")).ljust(_BAR_CELLS)


def _char_width(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _display_width(text: str) -> int:
    return sum(_char_width(c) for c in text)


def _fit(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` display columns, with an ellipsis when cut."""
    if _display_width(text) <= width:
        return text
    if width <= 0:
        return ""
    out, used = [], 0
    for char in text:
        w = _char_width(char)
        if used + w > width - 1:
            break
        out.append(char)
        used += w
    return "".join(out) + "…"


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _display_width(text))


# -- heatmap ------------------------------------------------------------------------------
def heatmap_size(positions: int, rows: int) -> tuple[int, int]:
    """(width, height) in pixels of the heatmap of ``positions`` columns and ``rows`` rows."""
    width_in, height_in, *_ = _layout(positions, rows)
    return round(width_in * DPI), round(height_in * DPI)


def _layout(positions: int, rows: int) -> tuple[float, float, float, float, float, float]:
    """Figure inches and fixed margins (width, height, left, right, top, bottom)."""
    left, right, top, bottom = 1.0, 1.3, 0.9, 2.6  # right: colour bar; bottom: rotated item labels
    width = left + right + max(5.0, 0.3 * positions)
    height = top + bottom + max(1.2, 0.32 * rows)
    return width, height, left, right, top, bottom


def render_heatmap(explanation: Explanation, served: ServedModel, path: Path, *, max_positions: int = 50) -> Path:
    """Write the PNG heatmap of ``explanation`` to ``path`` and return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    catalog = served.checkpoint.catalog
    layers, heads, n = explanation.weights.shape
    shown = min(n, max_positions)
    hidden = n - shown
    matrix, labels = heatmap_rows(explanation.weights[..., n - shown :])
    width_in, height_in, left, right, top, bottom = _layout(shown, len(labels))

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / width_in, bottom / height_in,
                       1 - (left + right) / width_in, 1 - (top + bottom) / height_in))
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(matrix.max()), 1e-6),
                      interpolation="nearest")
    bar_ax = fig.add_axes((1 - (right - 0.25) / width_in, bottom / height_in, 0.2 / width_in,
                           1 - (top + bottom) / height_in))
    fig.colorbar(image, cax=bar_ax, label="attention weight")

    item_index = served.to_indices(explanation.items[n - shown :])
    ticks = [_plain(_tick_label(catalog.titles[int(i)], catalog.item_genres[int(i)])) for i in item_index]
    ax.set_xticks(np.arange(shown), labels=ticks, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(len(labels)), labels=labels, fontsize=8)
    for boundary in range(heads + 1, len(labels), heads + 1):  # separate layers
        ax.axhline(boundary - 0.5, color="white", linewidth=2)
    note = f"most recent on the right; {hidden} earlier positions hidden" if hidden else "most recent on the right"
    ax.set_xlabel(f"history position ({note})", fontsize=8)
    title = f"event {explanation.event_id} · model {explanation.model_version} · user {explanation.user_id}"
    title = _printable(title)
    sub = f"{layers} layers × {heads} heads · last-position attention over the {n} items read"
    if explanation.truncated or explanation.dropped_unknown:
        sub += f" of {n + explanation.truncated + explanation.dropped_unknown} in the history"
    if hidden:
        sub += f" · most recent {shown} shown"
    chars = int(width_in * 12)  # about 12 characters of 10 pt text per inch
    fig.suptitle(_plain("\n".join(textwrap.wrap(title, chars) + textwrap.wrap(sub, chars))), fontsize=10,
                 y=1 - 0.1 / height_in, va="top")

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _plain(text: str) -> str:
    """Text for matplotlib with "$" escaped, so titles or ids never parse as mathtext."""
    return text.replace("$", r"\$")


def heatmap_rows(weights: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[rows, shown] matrix and row labels: per layer its heads, then the head average."""
    layers, heads, _ = weights.shape
    rows, labels = [], []
    for layer in range(layers):
        for head in range(heads):
            rows.append(weights[layer, head])
            labels.append(f"L{layer} h{head}")
        rows.append(weights[layer].mean(axis=0))
        labels.append(f"L{layer} mean")
    return np.stack(rows), labels


def _tick_label(title: str, genres: Sequence[str]) -> str:
    short = "/".join(g[:3] for g in genres) or "-"
    return f"{_fit(title, _TICK_TITLE)} [{_fit(short, _TICK_GENRES)}]"
