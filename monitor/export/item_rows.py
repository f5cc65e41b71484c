"""The attention mass per item, judged, as plain rows for ``metrics.DriftCollector``.

Per (kind, model version, dimension, cohort, layer) the latest judged window's figures, its
verdict, and its top ``top_n`` items with their share in the window and in the reference;
per exported item its catalogue title, cleaned and cut to ``TITLE_MAX`` characters (a title
is a label value: prometheus_client escapes it, this bounds it). The series are bounded:
``2 * top_n + 7`` per (kind, cohort, layer), plus one title per distinct exported item
(docs/drift.md, "Exported"). A cohort's served recommendations are one more such row, with
the layer label ``served`` (its shares are of the served slots, not of attention).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Iterable
from typing import Any

from monitor.drift.concentration import SERVED_LAYER, ItemResult

TITLE_MAX = 80  # characters of a catalogue title on /metrics
MAX_TOP_N = 20  # exported items per (kind, cohort, layer), at most
_SPACE = re.compile(r"\s+")

Titles = Callable[[str, int], str | None]  # (model version, raw item id) -> catalogue title, None if unknown
SERVED_LABEL = "served"  # the layer label of the served recommendations' row (SERVED_LAYER)


def layer_label(layer: int) -> str:
    """The ``layer`` label value of an item row: the layer's index, or "served"."""
    return SERVED_LABEL if layer == SERVED_LAYER else str(layer)


def layer_of(label: str) -> int:
    """``layer_label``'s inverse (rows read back from a saved state)."""
    return SERVED_LAYER if label == SERVED_LABEL else int(label)


def clean_title(title: str | None) -> str:
    """A catalogue title fit for a label value: no control characters, one space between words,
    at most ``TITLE_MAX`` characters (cut with an ellipsis).

    >>> clean_title("Toy Story (1995)")
    'Toy Story (1995)'
    >>> clean_title('Evil\\n"title"\\x00 ' + "x" * 100)[:20], len(clean_title("x" * 100))
    ('Evil "title" xxxxxxx', 80)
    >>> clean_title(None)
    ''
    """
    if not title:
        return ""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in str(title))
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= TITLE_MAX else text[: TITLE_MAX - 1] + "\u2026"


class ItemRows:
    """The latest item-mass judgement of every (kind, cohort, layer), as rows."""

    def __init__(self, top_n: int) -> None:
        if not 0 <= top_n <= MAX_TOP_N:
            raise ValueError(f"top_n must be in [0, {MAX_TOP_N}], got {top_n}")
        self.top_n = top_n
        self._latest: dict[tuple, dict] = {}
        self._titles: dict[int, str] = {}

    def update(self, results: Iterable[ItemResult], alive: Collection[str], titles: Titles) -> None:
        """Fold a round's item results in; drop rows of versions no longer remembered."""
        for r in results:
            labels = {"kind": r.kind, "model_version": r.key.model_version, "reference_version": r.reference_version,
                      "dimension": r.key.dimension, "cohort": r.key.cohort, "layer": layer_label(r.layer)}
            top = [(rank + 1, item, share, before) for rank, (item, share, before) in enumerate(r.top[: self.top_n])]
            self._latest[(r.kind, r.key, r.layer)] = {
                **labels, "score": r.score, "p_adjusted": r.p_adjusted, "narrowed": int(r.drifting),
                "top_share": r.top_share, "reference_top_share": r.reference_top_share,
                "effective_items": r.effective_items, "reference_effective_items": r.reference_effective_items,
                "overlap": r.overlap, "top": top,
            }
            for _, item, _, _ in top:
                if item not in self._titles:
                    self._titles[item] = clean_title(titles(r.key.model_version, item))
        remembered = set(alive)
        self._latest = {k: v for k, v in self._latest.items() if k[1].model_version in remembered}
        shown = {item for row in self._latest.values() for _, item, _, _ in row["top"]}
        self._titles = {item: title for item, title in self._titles.items() if item in shown}

    def to_state(self) -> dict[str, Any]:
        """The latest row of every (kind, cohort, layer) and the titles shown (as ``DriftRows.to_state``)."""
        return {"latest": list(self._latest.values()), "titles": {str(i): t for i, t in self._titles.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any], top_n: int) -> ItemRows:
        from monitor.drift.baseline import CohortKey

        rows = cls(top_n)
        for row in state["latest"]:
            key = (row["kind"], CohortKey(row["model_version"], row["dimension"], row["cohort"]), layer_of(row["layer"]))
            rows._latest[key] = {**row, "top": [tuple(entry) for entry in row["top"]]}
        rows._titles = {int(i): t for i, t in state["titles"].items()}
        return rows

    def rows(self) -> dict[str, list[dict]]:
        """"items": one row per (kind, cohort, layer); "item_shares": one per exported item and
        side; "item_titles": one per distinct exported item."""
        items = [{k: v for k, v in row.items() if k != "top"} for row in self._latest.values()]
        shares = []
        for row in self._latest.values():
            base = {k: row[k] for k in ("kind", "model_version", "dimension", "cohort", "layer")}
            for rank, item, share, before in row["top"]:
                shares.append({**base, "rank": str(rank), "item": str(item), "side": "window", "share": share})
                shares.append({**base, "rank": str(rank), "item": str(item), "side": "reference", "share": before})
        titles = [{"item": str(item), "title": title} for item, title in sorted(self._titles.items())]
        return {"items": items, "item_shares": shares, "item_titles": titles}
