"""The cohorts' top attended items, before and after: the item section of ``attnmon report``.

Each event's head-averaged rows spread one unit of attention per layer over its history's
items (``stats.attended_items``); summed per cohort in the agent's sketch
(``monitor.drift.items.ItemSketch``) they give, per cohort and layer, the top items with
their catalogue titles and their share of the attention in the reference and the current
events, the top-k share and the effective number of attended items
(``monitor.drift.concentration.figures``). Descriptive: the agent's judge tests narrowing
(docs/drift.md, "Attention concentrated on few items"); the report shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from monitor.drift.concentration import figures
from monitor.drift.items import ItemSketch
from monitor.export.item_rows import clean_title


class Attention(NamedTuple):
    """One event set's attention per item: an entry per (event row, history position)."""

    row: np.ndarray  # [K] the event's row in the set's frame
    item: np.ndarray  # [K] raw item id
    mass: np.ndarray  # [K, layers]

    @classmethod
    def empty(cls, layers: int) -> Attention:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, layers), np.float32))


def sketch_of(attention: Attention, members: np.ndarray, layers: int) -> ItemSketch:
    """The attention mass per item of the events where ``members`` [rows] (bool) holds."""
    sketch = ItemSketch(layers=layers)
    keep = members[attention.row] if attention.row.size else np.zeros(0, dtype=bool)
    if keep.any():
        sketch.add(attention.item[keep], attention.mass[keep][:, :layers])
    return sketch


def top_items(sections: Sequence[tuple[str, np.ndarray, np.ndarray]], reference: Attention, current: Attention,
              title: Callable[[int], str | None], *, top_n: int = 10, top_k: int = 10) -> dict[str, Any]:
    """Per cohort section ``(name, reference rows, current rows)``: per layer, the current top
    ``top_n`` items with title and shares now and before, and both sides' concentration figures."""
    layers = min(reference.mass.shape[1], current.mass.shape[1])
    out: dict[str, Any] = {}
    for name, ref_rows, cur_rows in sections:
        before, after = sketch_of(reference, ref_rows, layers), sketch_of(current, cur_rows, layers)
        per_layer = {}
        for layer in range(layers):
            now, then = figures(after, top_k, layer), figures(before, top_k, layer)
            ids = np.array([item for item, _ in now.top[:top_n]], dtype=np.int64)
            before_total = max(before.mass_total(layer), 1e-12)
            shares_before = before.estimate(ids, layer) / before_total
            per_layer[f"layer_{layer}"] = {
                "top_share": {"reference": then.top_share, "current": now.top_share},
                "effective_items": {"reference": then.effective_items, "current": now.effective_items},
                "items": [{"rank": rank + 1, "item": int(item), "title": clean_title(title(int(item))),
                           "share_current": share, "share_reference": float(shares_before[rank])}
                          for rank, (item, share) in enumerate(now.top[:top_n])],
            }
        out[name] = per_layer
    return out


def markdown(section: dict[str, Any], cohort: str, limit: int = 5) -> list[str]:
    """A few lines for the report's header: one cohort's top items per layer, before -> now."""
    lines = []
    for layer, entry in section.get(cohort, {}).items():
        share = entry["top_share"]
        items = "; ".join(f"{i['title'] or i['item']} {i['share_reference']:.1%} -> {i['share_current']:.1%}"
                          for i in entry["items"][:limit])
        lines.append(f"- top attended items, {cohort}, {layer.replace('_', ' ')} (top-k share "
                     f"{share['reference']:.1%} -> {share['current']:.1%}): {items or 'none'}")
    return lines
