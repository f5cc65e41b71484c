"""Realistic prediction events from MovieLens timelines, for Kafka, the demo and tests.

Each event is one step of one user's timeline, in global time order: the history so
far (raw movie ids), the serving model's top-10 unseen items with their scores, and
context fields derived deterministically from the user id (platform, region). Event
time is the wall clock when the event is made, so event-to-metric latency is real.

Scenarios shape the stream:
- a **model update**: from event N on, events name another model version (and carry
  that version's recommendations);
- a **cohort shift**: from event N on, the histories of one cohort move towards one
  genre (each item is swapped, with probability ``strength``, for a random movie of
  that genre), while the model stays the same;
- an **item burst**: from event N on, one cohort's users all watch the same few titles (a
  viral release): a share of that cohort's events end their history with those items, as
  its most recent ones, while the model stays the same.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Iterator, Sequence

import msgspec
import numpy as np
import torch

from model.data import Interactions, left_pad
from model.sasrec import SASRec

PLATFORMS = ("ios", "android", "web")
PLATFORM_WEIGHTS = (0.45, 0.35, 0.20)
REGIONS = ("eu", "na", "apac", "latam")
REGION_WEIGHTS = (0.35, 0.35, 0.2, 0.1)
TOP_N = 10


def context_of(user_id: int) -> dict[str, str]:
    """Deterministic platform and region of a user (stable across runs and machines)."""
    h = zlib.crc32(f"user-{user_id}".encode())
    u1, u2 = (h & 0xFFFF) / 0x10000, (h >> 16) / 0x10000
    platform = PLATFORMS[int(np.searchsorted(np.cumsum(PLATFORM_WEIGHTS), u1, side="right"))]
    region = REGIONS[int(np.searchsorted(np.cumsum(REGION_WEIGHTS), u2, side="right"))]
    return {"platform": platform, "region": region}


@dataclasses.dataclass(frozen=True)
class CohortShift:
    """From event ``start`` on, histories of events in (field=value) drift towards ``genre``."""

    field: str  # context field, e.g. "platform"
    value: str  # e.g. "android"
    genre: str  # e.g. "Horror"
    start: int  # event index where the shift begins
    strength: float = 0.7  # probability that each history item is swapped

    def __post_init__(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise ValueError("strength must be in (0, 1]")


@dataclasses.dataclass(frozen=True)
class ItemBurst:
    """From event ``start`` on, a ``share`` of the events of (field=value) end their history with
    ``items`` (raw catalogue ids, the last one the most recent): a viral release that one cohort's
    users all watch. Each event draws on its own: a user's later events keep the titles on top,
    as a history re-read at every request would."""

    field: str  # context field, e.g. "platform"
    value: str  # e.g. "android"
    items: tuple[int, ...]  # raw catalogue ids appended, oldest first
    start: int  # event index where the burst begins
    share: float = 1.0  # probability that an event of the cohort carries the items

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError("share must be in (0, 1]")
        if not self.items:
            raise ValueError("an item burst needs at least one item")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Which version serves from which event index on, and an optional cohort shift or item burst."""

    versions: tuple[tuple[int, str], ...]  # (first event index, model version), ascending
    shift: CohortShift | None = None
    burst: ItemBurst | None = None

    def __post_init__(self) -> None:
        if not self.versions or self.versions[0][0] != 0:
            raise ValueError("the first version must start at event 0")
        starts = [s for s, _ in self.versions]
        if starts != sorted(starts):
            raise ValueError("version switch points must ascend")

    def version_at(self, index: int) -> str:
        current = self.versions[0][1]
        for start, version in self.versions:
            if index >= start:
                current = version
        return current


def timeline_steps(data: Interactions, min_history: int = 3) -> np.ndarray:
    """[N, 2] (user row, step t) in global time order: event t predicts item t from items[:t]."""
    users, steps, stamps = [], [], []
    for row, (seq, ts) in enumerate(zip(data.sequences, data.timestamps, strict=True)):
        t = np.arange(min_history, len(seq))
        users.append(np.full(len(t), row))
        steps.append(t)
        stamps.append(ts[t])
    users_a, steps_a, stamps_a = np.concatenate(users), np.concatenate(steps), np.concatenate(stamps)
    order = np.lexsort((steps_a, users_a, stamps_a))
    return np.stack([users_a[order], steps_a[order]], axis=1)


class EventFactory:
    """Makes encoded events for a scenario, ``batch`` at a time (one forward per version)."""

    def __init__(self, data: Interactions, models: dict[str, SASRec], scenario: Scenario, *,
                 seed: int = 0, batch: int = 256, offset: int = 0, history_limit: int = 200,
                 recommend: bool = True) -> None:
        missing = {v for _, v in scenario.versions} - set(models)
        if missing:
            raise ValueError(f"scenario names versions without a model: {sorted(missing)}")
        self.data = data
        self.models = models
        self.scenario = scenario
        self.batch = batch
        self.steps = timeline_steps(data)
        self.offset = offset
        self.history_limit = history_limit  # a serving system sends the recent history, not all of it
        # The agent never reads the recommendations; benches that only judge attention skip
        # scoring them (a full forward pass over every item, most of a replay's cost).
        self.recommend = recommend
        self._rng = np.random.default_rng(seed)
        self._encoder = msgspec.json.Encoder()
        self._contexts = [context_of(int(u)) for u in data.user_ids]
        self._genre_items = self._items_by_genre()
        burst = scenario.burst
        self._burst_items = np.zeros(0, dtype=np.int64)
        if burst is not None:
            indices, unknown = data.catalog.to_indices(list(burst.items))
            if unknown:
                raise ValueError(f"item burst names items the catalogue lacks: {list(burst.items)}")
            self._burst_items = indices

    def _items_by_genre(self) -> dict[str, np.ndarray]:
        by_genre: dict[str, list[int]] = {}
        for index, genres in enumerate(self.data.catalog.item_genres):
            for genre in genres:
                by_genre.setdefault(genre, []).append(index)
        return {g: np.asarray(v) for g, v in by_genre.items()}

    def events(self, count: int) -> Iterator[list[bytes]]:
        """Encoded events, in batches; wraps around the timeline if count exceeds it."""
        made = 0
        while made < count:
            size = min(self.batch, count - made)
            yield self._make(made, size)
            made += size

    def _history(self, index: int, user: int, step: int) -> np.ndarray:
        history = self.data.sequences[user][max(0, step - self.history_limit):step]
        shift = self.scenario.shift
        if shift is not None and index >= shift.start and self._contexts[user].get(shift.field) == shift.value:
            swap = self._rng.random(len(history)) < shift.strength
            if swap.any():
                history = history.copy()
                history[swap] = self._rng.choice(self._genre_items[shift.genre], size=int(swap.sum()))
        burst = self.scenario.burst
        if (burst is not None and index >= burst.start and self._contexts[user].get(burst.field) == burst.value
                and self._rng.random() < burst.share):
            history = np.concatenate([history, self._burst_items])[-self.history_limit:]
        return history

    def _make(self, first: int, size: int) -> list[bytes]:
        now_ms = int(time.time() * 1000)
        indices = [self.offset + first + i for i in range(size)]
        rows = [self.steps[i % len(self.steps)] for i in indices]
        histories = [self._history(i, int(u), int(t)) for i, (u, t) in zip(indices, rows, strict=True)]
        versions = [self.scenario.version_at(i) for i in indices]
        recommended: list[list[dict]] = [[] for _ in range(size)]
        for version in set(versions) if self.recommend else ():
            members = [k for k, v in enumerate(versions) if v == version]
            model = self.models[version]
            padded = torch.from_numpy(left_pad([histories[k] for k in members], model.config.max_len))
            with torch.inference_mode():
                scores = model.scores(padded)
                scores.scatter_(1, padded, float("-inf"))  # never recommend what was seen
                top = torch.topk(scores, TOP_N, dim=1)
            ids = self.data.catalog.item_ids
            for j, k in enumerate(members):
                recommended[k] = [{"item": int(ids[i]), "score": round(float(s), 4)}
                                  for i, s in zip(top.indices[j].tolist(), top.values[j].tolist(), strict=True)]
        out = []
        ids = self.data.catalog.item_ids
        for k, (index, (user, _)) in enumerate(zip(indices, rows, strict=True)):
            out.append(self._encoder.encode({
                "event_id": f"ev-{index}",
                "ts": now_ms,
                "model_version": versions[k],
                "user_id": str(int(self.data.user_ids[user])),
                "history": ids[histories[k]].tolist(),
                "recommended": recommended[k],
                "context": self._contexts[int(user)],
            }))
        return out


def malformed_events(count: int, seed: int = 0) -> list[bytes]:
    """A mix of broken records, one kind per reason the decoder knows."""
    rng = np.random.default_rng(seed)
    kinds: Sequence[bytes] = (
        b"{not json",
        b'{"event_id": 1}',
        b'{"event_id":"x","ts":1764259200000,"model_version":"v","user_id":"u","history":[]}',
        b'{"event_id":"x","ts":-5,"model_version":"v","user_id":"u","history":[1]}',
        b'{"event_id":"x","ts":1764259200000,"model_version":"v","user_id":"u","history":[-3]}',
        b"\xff\xfe\x00",
    )
    return [kinds[int(i)] for i in rng.integers(0, len(kinds), size=count)]


def serving_traffic(data: Interactions, seed: int = 0) -> Interactions:
    """The same timelines re-timed as stationary, interleaved serving traffic.

    Each user's events keep their order (history t is still items[:t]) but are spread
    over one common period at random times, starting from a random phase of the user's
    own timeline and wrapping once, so at any point of the stream the mix of users and
    of history lengths is the same. ``seed`` picks another interleaving.
    """
    rng = np.random.default_rng(seed)
    span = 10**12  # integer "seconds"; wide enough that ties practically never happen
    stamps = []
    for seq in data.sequences:
        times = (rng.random() + np.sort(rng.random(len(seq)))) % 1.0
        stamps.append((times * span).astype(np.int64))
    return dataclasses.replace(data, timestamps=tuple(stamps))
