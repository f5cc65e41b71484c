"""Model updates: noticing that a version replaced another in the stream, and pairing the
two on the same events.

A version first seen after another one is an update of it (:class:`ModelUpdates`; the
judge then compares the new version against the previous one's baseline). For a sample
of the new version's events, :class:`Pairing` recomputes the previous version on the very
same windows and folds the per-event divergence of the two attention rows into the paired
comparison, which tells a model-caused change from a traffic shift.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from monitor.attention.recompute import collect
from monitor.attention.registry import ModelRegistry, ServedModel
from monitor.attention.stats import paired_divergence
from monitor.drift.judge import Judge
from monitor.drift.paired import PairedComparison, PairKey
from monitor.export.metrics import AgentMetrics
from monitor.stream.config import PipelineConfig
from monitor.stream.windows import Recompute

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
            self._metrics.model_update.labels(version, previous).set(now)
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


class Pairing:
    """Recomputes the previous version on a sample of a new version's events and folds
    the paired divergence, per cohort."""

    def __init__(self, registry: ModelRegistry, recompute: Recompute, config: PipelineConfig, *, seed: int) -> None:
        self._registry = registry
        self._recompute = recompute
        self._config = config
        self._rng = np.random.default_rng(seed)

    def __call__(self, served: ServedModel, previous: str, raw_histories: list[np.ndarray], codes: np.ndarray,
                 labels: dict[str, tuple[str, ...]], dimensions: Sequence[str], paired: PairedComparison) -> None:
        """Recompute both versions on a sample of the same events and fold their divergence.

        ``raw_histories``: the events' windows as raw ids; ``codes`` [B, dimensions]: their
        cohort codes, ``labels`` naming them.
        """
        old = self._registry.get(previous)
        if old is None:
            return
        count = min(self._config.paired_max_per_batch, int(np.ceil(self._config.paired_fraction * len(raw_histories))))
        if count == 0:
            return
        picked = self._rng.choice(len(raw_histories), size=count, replace=False)
        width = min(served.max_len, old.max_len)
        pairs_raw = []
        rows_kept = []
        for row in picked:
            raw = raw_histories[row][-width:]
            old_idx, new_idx = old.to_indices(raw), served.to_indices(raw)
            if (old_idx < 0).any() or (new_idx < 0).any():
                continue  # the versions disagree on the vocabulary: positions would not pair up
            pairs_raw.append((old_idx, new_idx))
            rows_kept.append(row)
        if not rows_kept:
            return
        old_rows = self._mean_rows(old, [p[0] for p in pairs_raw], width)  # [P, layers, width]
        new_rows = self._mean_rows(served, [p[1] for p in pairs_raw], width)
        lengths = np.asarray([len(p[0]) for p in pairs_raw], dtype=np.int64)
        js_per_layer = []
        overlap_per_layer = []
        for layer in range(min(old_rows.shape[1], new_rows.shape[1])):
            js, overlap = paired_divergence(old_rows[:, layer], new_rows[:, layer], lengths, self._config.stats.top_k)
            js_per_layer.append(js)
            overlap_per_layer.append(overlap)
        js = np.mean(js_per_layer, axis=0)  # [P]
        overlap = np.mean(overlap_per_layer, axis=0)
        kept_codes = codes[np.asarray(rows_kept)]  # [P, dimensions]
        for column, dimension in enumerate(dimensions):
            for code in np.unique(kept_codes[:, column]):
                members = kept_codes[:, column] == code
                paired.observe(PairKey(served.version, dimension, labels[dimension][code]),
                               js[members], overlap[members])

    def _mean_rows(self, served: ServedModel, histories: list[np.ndarray], width: int) -> np.ndarray:
        """Head-averaged rows [B, layers, width] (head averaging: invariant to head permutations)."""
        out = np.zeros((len(histories), served.checkpoint.config.layers, width), dtype=np.float32)
        for chunk in collect(self._recompute.start(served, histories, width)):
            w = chunk.weights.shape[-1]
            out[chunk.rows, :, width - w:] = chunk.weights.mean(axis=2)
        return out
