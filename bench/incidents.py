"""Training-data incidents: what a faulty training job reads instead of the real data.

Each incident is a function ``(data, seed, **params) -> Interactions`` applied before
training (``model.recipe.train_sasrec(training_data=...)``); the job then splits, trains
and evaluates on what it returns, and the checkpoint is still published with the real
(serving) catalogue. Nothing is hand-edited afterwards: the harm is whatever training on
the faulty data produced.

- ``vocabulary_by_popularity``: the job built its item vocabulary in another order
  (by descending interaction count, a ``value_counts()`` order) than the serving
  catalogue (by movieId). Its own offline evaluation is consistent and looks normal;
  served with the serving catalogue, each embedding row belongs to another item.
- ``campaign_flood``: a promotion put a handful of items into many users' recent
  histories before the retrain. The last two items of every timeline (the job's
  validation and test targets) are left as they were.
- ``popular_items_only``: the job's minimum-interactions filter was set for another
  dataset and kept only the ``keep`` most interacted items; users left with fewer than
  three interactions are dropped, as such a filter does. Every other item's embedding is
  trained only as a softmax negative, never as history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from model.data import PAD, Interactions

Incident = Callable[..., Interactions]


def popularity_order(data: Interactions) -> np.ndarray:
    """[n_items] serving indices (1..n) from the most to the least interacted item; ties by index."""
    counts = np.bincount(np.concatenate(data.sequences), minlength=data.catalog.n_items + 1)[1:]
    return np.lexsort((np.arange(1, len(counts) + 1), -counts)) + 1


def vocabulary_by_popularity(data: Interactions, seed: int = 0) -> Interactions:
    """The timelines in a vocabulary ordered by popularity: the k-th most interacted item gets index k.

    ``seed`` is unused (the bug is deterministic); it is accepted like every incident's.
    """
    del seed
    remap = np.zeros(data.catalog.n_items + 1, dtype=np.int64)  # serving index -> training-job index
    remap[popularity_order(data)] = np.arange(1, data.catalog.n_items + 1)
    remap[PAD] = PAD
    return dataclasses.replace(data, sequences=tuple(remap[s] for s in data.sequences))


def campaign_items(data: Interactions, seed: int, count: int, popularity_from: int, popularity_to: int) -> np.ndarray:
    """``count`` promoted items, drawn by ``seed`` among popularity ranks [from, to) (0 = most popular)."""
    ranked = popularity_order(data)[popularity_from:popularity_to]
    return np.random.default_rng(seed).choice(ranked, size=count, replace=False)


def campaign_flood(data: Interactions, seed: int = 0, *, items: int = 5, share: float = 0.6, recent: int = 20,
                   popularity_from: int = 100, popularity_to: int = 500) -> Interactions:
    """A share of users get the campaign's items (those they lack) inserted among their ``recent`` latest items.

    Insertions go before each timeline's last two items and take a neighbour's timestamp,
    so the job's leave-one-out targets are real interactions. Which items, which users and
    where are drawn from ``seed``.
    """
    if not 0.0 < share <= 1.0 or items < 1 or recent < 1:
        raise ValueError("share must be in (0, 1], items and recent >= 1")
    promoted = campaign_items(data, seed, items, popularity_from, popularity_to)
    rng = np.random.default_rng(seed + 1)
    sequences, stamps = [], []
    for seq, ts in zip(data.sequences, data.timestamps, strict=True):
        missing = promoted[~np.isin(promoted, seq)]
        if rng.random() >= share or not len(missing) or len(seq) < 3:
            sequences.append(seq)
            stamps.append(ts)
            continue
        head, held_out = len(seq) - 2, slice(len(seq) - 2, None)
        # positions among the last `recent` training items where each inserted item lands (before that index)
        where = np.sort(rng.integers(max(0, head - recent), head + 1, size=len(missing)))
        injected = rng.permutation(missing)
        sequences.append(np.concatenate([np.insert(seq[:head], where, injected), seq[held_out]]))
        neighbour = np.maximum(where - 1, 0)
        stamps.append(np.concatenate([np.insert(ts[:head], where, ts[:head][neighbour]), ts[held_out]]))
    return dataclasses.replace(data, sequences=tuple(sequences), timestamps=tuple(stamps))


def popular_items_only(data: Interactions, seed: int = 0, *, keep: int = 300) -> Interactions:
    """The timelines with every item outside the ``keep`` most interacted ones removed.

    ``seed`` is unused (the filter is deterministic); it is accepted like every incident's.
    """
    del seed
    if keep < 1:
        raise ValueError("keep must be >= 1")
    kept = np.zeros(data.catalog.n_items + 1, dtype=bool)
    kept[popularity_order(data)[:keep]] = True
    masks = [kept[seq] for seq in data.sequences]
    users = [u for u, mask in enumerate(masks) if mask.sum() >= 3]
    return dataclasses.replace(
        data, user_ids=data.user_ids[users],
        sequences=tuple(data.sequences[u][masks[u]] for u in users),
        timestamps=tuple(data.timestamps[u][masks[u]] for u in users))


INCIDENTS: dict[str, Incident] = {
    "vocabulary_by_popularity": vocabulary_by_popularity,
    "campaign_flood": campaign_flood,
    "popular_items_only": popular_items_only,
}


@dataclasses.dataclass(frozen=True)
class DataIncident:
    """A named incident and its parameters; ``describe()`` is stored in the checkpoint's metrics."""

    name: str
    params: tuple[tuple[str, int | float], ...] = ()

    def __post_init__(self) -> None:
        if self.name not in INCIDENTS:
            raise ValueError(f"unknown data incident {self.name!r}; known: {sorted(INCIDENTS)}")

    def apply(self, data: Interactions, seed: int) -> Interactions:
        return INCIDENTS[self.name](data, seed, **dict(self.params))

    def describe(self) -> dict:
        return {"name": self.name, **dict(self.params)}
