"""Model updates: noticing that a version replaced another in the stream, and pairing the
two on the same events.

A version first seen after another one is an update of it (:class:`ModelUpdates`; the
judge then compares the new version against the previous one's baseline). For a sample
of the new version's events, :class:`Pairing` recomputes both versions on the very same
events, each on its own window, and folds the per-event, per-layer divergence of the two
attention rows into the paired comparison, which tells a model-caused change from a
traffic shift.

Which events are sampled depends on each event alone: an event is paired when its priority,
a hash of (user id, event id) (``agreement.event_priorities``), falls in the lowest
``paired_fraction`` of the hash range, so one process and replicas that split the partitions
pair the same events (the scale-out judge then merges what one process would hold). Only
``paired_max_per_batch`` bounds it by the batch: past it, the lowest priorities are kept
and the rest counted (outcome ``over_cap``); a cap that binds makes the sample depend on how
the stream was polled.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from model.data import left_pad
from monitor.attention.recompute import collect
from monitor.attention.registry import ModelRegistry, ServedModel
from monitor.attention.stats import STATISTICS, compute, paired_divergence, union_rows
from monitor.drift.judge import Judge
from monitor.drift.paired import PairCohort, PairedComparison, PairedConfig
from monitor.drift.agreement import event_priorities
from monitor.drift.users import hash_users
from monitor.export.metrics import AgentMetrics
from monitor.stream.config import PipelineConfig
from monitor.stream.events import Event, Reason
from monitor.stream.intake import RecordLike
from monitor.stream.windows import Recompute, window_histories

log = logging.getLogger("monitor.stream.pipeline")  # where these lines were always logged


class ModelUpdates:
    """The stream order of model versions, which version each new one replaced, and when
    each was last seen (so that versions absent from the stream retire).

    Last seen is processing time (the clock the judge and update timestamps use), not the
    events' own timestamps: those come from producers (a skewed or hostile clock would retire
    every version, or none) and a lagging partition would make its versions look absent.
    Absence is measured against the stream, from a version's last sighting to the latest
    sighting of any version: a quiet stream, or an agent that is down, retires nothing.
    """

    def __init__(self, metrics: AgentMetrics, max_remembered: int) -> None:
        self._metrics = metrics
        self._max_remembered = max_remembered
        self.versions_seen: list[str] = []  # stream order of first appearance, the last max_remembered
        self.previous: dict[str, str] = {}  # version -> the version it replaced
        self.last_seen: dict[str, float] = {}  # version -> when it was last seen (or replaced)

    def note(self, version: str, now: float, judge: Judge) -> None:
        """Record ``version`` seen at ``now``; if it is new and follows another, start an update in the judge."""
        self._seen(version, now)
        if version in self.previous or version in self.versions_seen:
            return
        if self.versions_seen:
            previous = self.versions_seen[-1]
            self.previous[version] = previous
            # Being replaced counts as a sighting: the update judges the new version against the
            # previous one's baselines, which therefore stay at least retire_after_s.
            self._seen(previous, now)
            judge.start_update(version, previous, now)
            self._metrics.start_update(version, previous, now)
            log.warning("model update: %s replaces %s in the stream", version, previous)
        self.versions_seen.append(version)
        del self.versions_seen[: -self._max_remembered]

    def _seen(self, version: str, now: float) -> None:
        self.last_seen[version] = max(now, self.last_seen.get(version, now))

    def absent(self, retire_after_s: float, in_use: set[str] | frozenset[str] = frozenset()) -> dict[str, float]:
        """Versions absent from the stream for at least ``retire_after_s`` and not ``in_use``,
        with how long they have been absent (seconds before the latest sighting of any version)."""
        if not self.last_seen:
            return {}
        latest = max(self.last_seen.values())
        return {version: latest - seen for version, seen in self.last_seen.items()
                if latest - seen >= retire_after_s and version not in in_use}

    def forget(self, version: str) -> str | None:
        """Drop a retired version; returns the version it had replaced, if any.

        Should it come back, it is new again: ``note`` starts an update from the version
        first seen most recently, as for any version appearing for the first time. Newer
        versions that replaced it keep their ``previous`` entry (their update happened).
        """
        self.last_seen.pop(version, None)
        if version in self.versions_seen:
            self.versions_seen.remove(version)
        return self.previous.pop(version, None)

    def state(self) -> dict[str, Any]:
        return {"versions_seen": list(self.versions_seen), "previous": dict(self.previous),
                "last_seen": dict(self.last_seen)}

    def restore(self, state: dict[str, Any], judge: Judge, now: float) -> None:
        """Adopt the version history of a checkpoint, and re-export the judge's updates.

        Last-seen times are shifted so that the latest sighting is ``now``: the time between
        it and the restart (a quiet stream, the agent down) was not watched, so it is not
        absence. A checkpoint written before versions retired has no last-seen times: every
        version it holds counts as seen now, and retires after a full period of absence.
        """
        self.versions_seen = list(state.get("versions_seen", []))
        self.previous = dict(state.get("previous", {}))
        if "last_seen" in state:
            saved = {str(v): float(t) for v, t in state["last_seen"].items()}
            shift = now - max(saved.values()) if saved else 0.0
            self.last_seen = {version: seen + shift for version, seen in saved.items()}
        else:
            held = {*self.versions_seen, *self.previous, *judge.updates, *(key.model_version for key in judge.baselines)}
            self.last_seen = dict.fromkeys(held, now)
        for version, update in judge.updates.items():  # keep the update annotations after a restart
            self._metrics.model_update.labels(version, update.previous_version).set(update.at)


@dataclass(frozen=True)
class _Sampled:
    """A sampled event's row in its batch, standing in for its record: ``window_histories``
    reports an event the version cannot read through its record."""

    offset: int
    topic: str = "paired"
    partition: int = 0
    value: bytes | None = None


class Pairs(NamedTuple):
    """A batch's paired events: both versions on the same events (``Pairing.pair``)."""

    rows: np.ndarray  # [P] batch rows of the paired events
    js: np.ndarray  # [P, layers] per-event JS distance of the two head-averaged rows
    overlap: np.ndarray  # [P, layers] top-k overlap
    old_stats: np.ndarray  # [P, statistics, layers] the previous version's statistics
    new_stats: np.ndarray  # [P, statistics, layers] the new version's
    lengths: np.ndarray  # [P] the events' own history lengths (strata of the agreement)
    users: np.ndarray  # uint64 [P] user hashes
    priorities: np.ndarray  # uint64 [P] event hashes (the agreement's bottom-k sample)
    old_lists: np.ndarray  # int64 [P, slots] the previous version's top items there (raw ids, -1: none)
    new_lists: np.ndarray  # int64 [P, slots] the new version's

    def subset(self, keep: np.ndarray) -> Pairs:
        """The pairs where ``keep`` [P] (bool or indices)."""
        return Pairs(*(field[keep] for field in self))


def fold_pairs(pairs: Pairs, new_version: str, codes: np.ndarray, labels: dict[str, tuple[str, ...]],
               dimensions: Sequence[str], paired: PairedComparison) -> None:
    """Fold ``pairs`` into ``paired``, per cohort of each dimension (``codes`` [B, dimensions]:
    the whole batch's cohort codes, ``labels`` naming them)."""
    kept_codes = codes[pairs.rows]  # [P, dimensions]
    for column, dimension in enumerate(dimensions):
        for code in np.unique(kept_codes[:, column]):
            members = kept_codes[:, column] == code
            cohort = PairCohort(new_version, dimension, labels[dimension][code])
            paired.observe(cohort, pairs.js[members], pairs.overlap[members], pairs.users[members])
            paired.observe_statistics(cohort, pairs.old_stats[members], pairs.new_stats[members],
                                      pairs.lengths[members], pairs.users[members], pairs.priorities[members])
            paired.observe_served(cohort, pairs.old_lists[members], pairs.new_lists[members], pairs.users[members])


class Pairing:
    """Recomputes the previous version on a sample of a new version's events and folds
    the paired divergence, per cohort and layer.

    Each version reads the event's raw history through its own vocabulary and ``max_len``
    (``window_histories``, as when it served), so the comparison sees what each version
    actually attends over; the two rows are aligned by history position over the union
    of the positions either reads (``stats.union_rows``). Items inside the compared span
    that one version knows and the other does not are counted
    (``attnmon_update_paired_items_unknown_total``), and so is every sampled event by
    outcome (``attnmon_update_paired_events_total``): paired, or not because the previous
    version reads none of its items or could not be loaded.
    """

    def __init__(self, registry: ModelRegistry, recompute: Recompute, config: PipelineConfig,
                 metrics: AgentMetrics, *, served_slots: int = PairedConfig.served_slots) -> None:
        self._registry = registry
        self._recompute = recompute
        self._config = config
        self._metrics = metrics
        self._served_slots = served_slots  # the length of the lists each version recomputes

    def __call__(self, served: ServedModel, previous: str, events: Sequence[Event], codes: np.ndarray,
                 labels: dict[str, tuple[str, ...]], dimensions: Sequence[str], paired: PairedComparison) -> None:
        """Recompute both versions on a sample of the same events and fold their divergence.

        ``events``: the new version's folded events; ``codes`` [B, dimensions]: their
        cohort codes, ``labels`` naming them.
        """
        pairs = self.pair(served, previous, events)
        if pairs is not None:
            fold_pairs(pairs, served.version, codes, labels, dimensions, paired)

    def sample(self, events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray, int]:
        """The batch rows to pair, ascending, their priorities, and how many more the cap left out."""
        priorities = event_priorities((e.user_id for e in events), (e.event_id for e in events))  # [B]
        fraction = self._config.paired_fraction
        chosen = (np.arange(len(events)) if fraction >= 1.0 else
                  np.flatnonzero(priorities < np.uint64(int(fraction * 2.0**64))))
        cap = self._config.paired_max_per_batch
        over = max(0, len(chosen) - cap)
        if over:  # the lowest priorities: the events any other batching would keep first
            chosen = np.sort(chosen[np.lexsort((chosen, priorities[chosen]))[:cap]])
        return chosen, priorities[chosen], over

    def pair(self, served: ServedModel, previous: str, events: Sequence[Event]) -> Pairs | None:
        """Both versions on the sampled events, each on its own window: their divergence and
        statistics per event and layer (None: nothing paired; the outcomes are counted)."""
        picked, priorities, over = self.sample(events)  # [S]
        counted = self._metrics.paired_events
        if over:
            counted.labels(served.version, previous, "over_cap").inc(over)
        if picked.size == 0:
            return None
        old = self._registry.get(previous)
        if old is None:
            counted.labels(served.version, previous, "previous_unavailable").inc(int(picked.size))
            return None
        items = [(_Sampled(int(row)), events[row]) for row in picked.tolist()]
        unreadable: list[int] = []
        new_w = window_histories(served, items, keep_positions=True, reject=_served_reads_every_event)
        old_w = window_histories(old, items, keep_positions=True,
                                 reject=lambda record, reason, detail: unreadable.append(record.offset))
        if unreadable:
            counted.labels(served.version, previous, "previous_unreadable").inc(len(unreadable))
        readable = np.isin(picked, unreadable, invert=True)  # [S]
        rows = picked[readable]  # [P] batch rows of the paired events
        if rows.size == 0:
            return None
        counted.labels(served.version, previous, "paired").inc(int(rows.size))
        new_positions = [p for p, ok in zip(new_w.positions, readable.tolist(), strict=True) if ok]
        new_histories = [h for h, ok in zip(new_w.histories, readable.tolist(), strict=True) if ok]
        self._count_catalogue_differences(served, old, [events[row] for row in rows.tolist()],
                                          old_w.positions, new_positions, previous)
        layers = min(served.checkpoint.config.layers, old.checkpoint.config.layers)
        old_mean, old_stats = self._mean_rows(old, old_w.histories)
        new_mean, new_stats = self._mean_rows(served, new_histories)
        old_rows, new_rows, lengths = union_rows(old_w.positions, old_mean[:, :layers],
                                                 new_positions, new_mean[:, :layers])
        js = np.empty((rows.size, layers), dtype=np.float32)  # [P, layers]
        overlap = np.empty_like(js)
        for layer in range(layers):
            js[:, layer], overlap[:, layer] = paired_divergence(old_rows[:, layer], new_rows[:, layer], lengths,
                                                                self._config.stats.top_k)
        users = hash_users(events[row].user_id for row in rows.tolist())  # [P]
        history_lengths = np.fromiter((len(events[row].history) for row in rows.tolist()), dtype=np.int64,
                                      count=rows.size)  # [P] the event's own length (strata of the agreement)
        # Served lists for the lowest event hashes among them (the same events in any process while
        # the cap does not bind); the others' stay empty (-1) and are left out of the lists test.
        kept = priorities[readable]
        listed = np.sort(np.lexsort((np.arange(rows.size), kept))[:self._config.paired_lists_max_per_batch])
        old_lists = np.full((rows.size, self._served_slots), -1, dtype=np.int64)
        new_lists = old_lists.copy()
        old_lists[listed] = top_lists(old, [old_w.histories[i] for i in listed.tolist()], self._served_slots)
        new_lists[listed] = top_lists(served, [new_histories[i] for i in listed.tolist()], self._served_slots)
        return Pairs(rows, js, overlap, old_stats[:, :, :layers], new_stats[:, :, :layers], history_lengths, users,
                     kept, old_lists, new_lists)

    def _count_catalogue_differences(self, served: ServedModel, old: ServedModel, events: list[Event],
                                     old_positions: list[np.ndarray], new_positions: list[np.ndarray],
                                     previous: str) -> None:
        """Count the items of each event's compared span (from the first position either
        version reads to the end) that one version knows and the other does not."""
        spans = [event.history[min(int(o[0]), int(n[0])):]
                 for event, o, n in zip(events, old_positions, new_positions, strict=True)]
        raw = np.fromiter(itertools.chain.from_iterable(spans), dtype=np.int64)
        known_new, known_old = served.to_indices(raw) >= 0, old.to_indices(raw) >= 0
        for side, lacking in (("previous", known_new & ~known_old), ("new", known_old & ~known_new)):
            if (missing := int(lacking.sum())):
                self._metrics.paired_items_unknown.labels(served.version, previous, side).inc(missing)

    def _mean_rows(self, served: ServedModel, histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Head-averaged rows [B, layers, width], left-padded (head averaging: invariant to
        head permutations; width = the longest history), and their statistics [B, statistics,
        layers], computed as the main path computes them (for the agreement test)."""
        width = max(map(len, histories))
        layers = served.checkpoint.config.layers
        out = np.zeros((len(histories), layers, width), dtype=np.float32)
        statistics = np.empty((len(histories), len(STATISTICS), layers), dtype=np.float32)
        averaged_config = dataclasses.replace(self._config.stats, per_head=False)
        for chunk in collect(self._recompute.start(served, histories, width)):
            w = chunk.weights.shape[-1]
            averaged = chunk.weights.mean(axis=2, dtype=np.float32)  # [b, layers, w]
            out[chunk.rows, :, width - w:] = averaged
            statistics[chunk.rows] = compute(averaged[:, :, None, :], chunk.lengths, chunk.item_index,
                                             served.genre_matrix, averaged_config)
        return out, statistics


SCORES_HELD = 4 * 1024 * 1024  # item scores computed at once (16 MiB of float32): rows per chunk shrink with the catalogue


def top_lists(served: ServedModel, histories: Sequence[np.ndarray], slots: int, *,
              max_batch: int = 64) -> np.ndarray:
    """What ``served`` would recommend after each window (model indices, as
    ``window_histories`` gives them): its ``slots`` best-scored items, the window's own items
    excluded, as raw item ids ``int64 [P, slots]`` (-1 where fewer items remain). Runs here, in
    the fold's thread, on the paired sample only (``PipelineConfig.paired_lists_max_per_batch``):
    a pass to the item scores, which the attention path's child processes do not compute. A
    chunk holds at most ``SCORES_HELD`` scores, so a large catalogue scores fewer rows at once."""
    out = np.full((len(histories), slots), -1, dtype=np.int64)
    if not histories:
        return out
    model, ids = served.checkpoint.model, served.checkpoint.catalog.item_ids
    max_batch = max(1, min(max_batch, SCORES_HELD // len(ids)))
    lengths = np.fromiter(map(len, histories), dtype=np.int64, count=len(histories))
    order = np.argsort(lengths, kind="stable")
    with torch.inference_mode():
        for begin in range(0, len(order), max_batch):
            rows = order[begin:begin + max_batch]
            padded = torch.from_numpy(left_pad([histories[i] for i in rows], int(lengths[rows].max())))
            scores = model.next_item_scores(padded)
            scores.scatter_(1, padded, float("-inf"))  # never what the window holds (nor padding)
            top = torch.topk(scores, min(slots, scores.shape[1]), dim=1)
            picked = np.where(np.isfinite(top.values.numpy()), ids[top.indices.numpy()], -1)
            out[rows, :picked.shape[1]] = picked
    return out


def _served_reads_every_event(record: RecordLike, reason: Reason, detail: str) -> None:
    """The new version already read every event it folded: a reject here is a bug."""
    raise AssertionError(f"the served version cannot read an event it folded: {detail}")
