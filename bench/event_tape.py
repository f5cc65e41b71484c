"""What a replayed update sent, and the attention statistics of every event, measured by
the bench itself.

The detection bench judges the same windows with attnmon and with other methods
(Evidently's drift preset, a naive per-head test). Those methods need each event's
statistics, per head as well; the bench recomputes them here from the events it sent,
with the agent's own public building blocks (the version's catalogue lookup,
``recompute``, ``stats.compute``, ``CohortAssigner``), so it does not depend on how the
pipeline stores or batches them internally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import msgspec
import numpy as np

from monitor.attention.recompute import recompute
from monitor.attention.registry import ServedModel
from monitor.attention.stats import STATISTICS, StatsConfig, compute
from monitor.drift.cohorts import CohortAssigner, CohortDimension
from monitor.tools.replay import EventFactory


class _Event(msgspec.Struct):
    model_version: str
    history: list[int]
    context: dict[str, str]


class Tape:
    """The events a factory made, in the order they were sent (version, raw history, context)."""

    def __init__(self) -> None:
        self.versions: list[str] = []
        self.histories: list[np.ndarray] = []
        self.contexts: list[dict[str, str]] = []
        self._decoder = msgspec.json.Decoder(_Event)

    def __len__(self) -> int:
        return len(self.versions)

    def record(self, batch: Sequence[bytes]) -> None:
        for raw in batch:
            event = self._decoder.decode(raw)
            self.versions.append(event.model_version)
            self.histories.append(np.asarray(event.history, dtype=np.int64))
            self.contexts.append(event.context)


class TapedFactory:
    """An ``EventFactory`` whose batches are also recorded on a ``Tape`` as they are made."""

    def __init__(self, factory: EventFactory, tape: Tape) -> None:
        self.factory = factory
        self.tape = tape

    def events(self, count: int) -> Iterator[list[bytes]]:
        for batch in self.factory.events(count):
            self.tape.record(batch)
            yield batch


@dataclasses.dataclass(frozen=True)
class VersionValues:
    """Statistics of one version's events of a tape.

    ``positions`` are the events' places on the tape (ascending); ``cohorts`` maps a
    dimension to each event's cohort label in it.
    """

    positions: np.ndarray  # [n]
    averaged: np.ndarray  # [n, stats, layers], head-averaged rows (what the judge sees)
    per_head: np.ndarray  # [n, stats, layers, heads]
    cohorts: dict[str, np.ndarray]  # dimension -> [n] labels

    def members(self, dimension: str, cohort: str) -> np.ndarray:
        """Indices (into this object's arrays) of the events of one cohort, in tape order."""
        labels = self.cohorts.get(dimension)
        return np.zeros(0, dtype=np.int64) if labels is None else np.flatnonzero(labels == cohort)


def measure(tape: Tape, served: ServedModel, dimensions: Sequence[CohortDimension],
            stats: StatsConfig = StatsConfig()) -> VersionValues:
    """Statistics and cohorts of ``served``'s events on ``tape``, computed as the agent computes them.

    Each event's window is the last ``max_len`` history items the version knows; cohorts
    see the event's own history length, as in the agent's fold.
    """
    positions = np.flatnonzero(np.asarray(tape.versions, dtype=object) == served.version)
    windows = []
    for p in positions.tolist():
        indices = served.to_indices(tape.histories[p])
        windows.append(indices[indices >= 0][-served.max_len:])
    config = served.checkpoint.config
    shape = (len(windows), len(STATISTICS), config.layers)
    averaged = np.full(shape, np.nan, dtype=np.float32)
    per_head = np.full((*shape, config.heads), np.nan, dtype=np.float32)
    averaged_config = dataclasses.replace(stats, per_head=False)
    head_config = dataclasses.replace(stats, per_head=True)
    for chunk in recompute(served.checkpoint.model, windows, max_len=served.max_len):
        args = (chunk.weights, chunk.lengths, chunk.item_index, served.genre_matrix)
        averaged[chunk.rows] = compute(*args, averaged_config)
        per_head[chunk.rows] = compute(*args, head_config)
    assigner = CohortAssigner(list(dimensions))
    lengths = np.fromiter((len(tape.histories[p]) for p in positions.tolist()), dtype=np.int64, count=len(positions))
    codes = assigner.assign([tape.contexts[p] for p in positions.tolist()], lengths)
    labels = assigner.labels()
    cohorts = {dim: np.asarray(labels[dim], dtype=object)[codes[:, column]]
               for column, dim in enumerate(assigner.dimensions)}
    return VersionValues(positions, averaged, per_head, cohorts)


def measure_versions(tape: Tape, served: Mapping[str, ServedModel], dimensions: Sequence[CohortDimension],
                     stats: StatsConfig = StatsConfig()) -> dict[str, VersionValues]:
    """``measure`` for every version on the tape."""
    return {version: measure(tape, served[version], dimensions, stats) for version in dict.fromkeys(tape.versions)}
