"""Model registry: serves published versions from a checkpoint directory.

A version is loaded (and its hashes verified) the first time an event names it, so a
version published while the agent runs is served without a restart. At most
``max_loaded`` versions stay in memory (least recently used goes first, and ``on_evict``
hears of it). A version that fails to load is remembered for ``retry_after_s`` so a flood
of events naming a broken or absent version costs one directory check per interval, not
one per event.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model import checkpoint
from model.checkpoint import Checkpoint, CheckpointError

log = logging.getLogger(__name__)

_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


DENSE_LOOKUP_MAX_ID = 1 << 22  # a direct table up to 4M raw ids costs at most 32 MiB per version


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """A loaded version plus the lookup tables the hot path needs."""

    checkpoint: Checkpoint
    raw_ids: np.ndarray  # [n_items] ascending raw item ids of model indices 1..n_items
    raw_order: np.ndarray  # [n_items] model index of raw_ids[i]
    genre_matrix: np.ndarray  # [V, G] float32, row-normalised
    # raw id -> model index, -1 if unknown; the last slot answers every id beyond the table.
    # None when the catalogue's ids are too sparse for a table (binary search then).
    dense: np.ndarray | None = None

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def max_len(self) -> int:
        return self.checkpoint.config.max_len

    def to_indices(self, raw_history: np.ndarray) -> np.ndarray:
        """Raw item ids -> model indices (int64); unknown items map to -1. Vectorised."""
        raw = np.asarray(raw_history, dtype=np.int64)
        if self.dense is not None:  # one gather instead of a binary search per item
            beyond = len(self.dense) - 1
            return self.dense[np.where((raw < 0) | (raw > beyond), beyond, raw)]
        position = np.searchsorted(self.raw_ids, raw)
        position = np.minimum(position, len(self.raw_ids) - 1)
        found = self.raw_ids[position] == raw
        return np.where(found, self.raw_order[position], -1)

    @classmethod
    def from_checkpoint(cls, loaded: Checkpoint) -> ServedModel:
        ids = loaded.catalog.item_ids[1:]
        order = np.argsort(ids, kind="stable")
        raw_ids, raw_order = ids[order], (order + 1).astype(np.int64)
        dense = None
        if len(raw_ids) and 0 <= raw_ids[0] and raw_ids[-1] < DENSE_LOOKUP_MAX_ID:
            dense = np.full(int(raw_ids[-1]) + 2, -1, dtype=np.int64)
            dense[raw_ids] = raw_order
        return cls(checkpoint=loaded, raw_ids=raw_ids, raw_order=raw_order,
                   genre_matrix=loaded.catalog.genre_matrix(), dense=dense)


class ModelRegistry:
    def __init__(
        self,
        root: Path,
        *,
        max_loaded: int = 3,
        retry_after_s: float = 10.0,
        on_load: Callable[[ServedModel, float], None] | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        on_evict: Callable[[ServedModel], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be >= 1")
        self.root = Path(root)
        self.max_loaded = max_loaded
        self.retry_after_s = retry_after_s
        self._loaded: OrderedDict[str, ServedModel] = OrderedDict()
        self._failed: dict[str, tuple[float, str]] = {}  # version -> (when, why); bounded below
        self._on_load = on_load
        self._on_failure = on_failure
        self._on_evict = on_evict
        self._clock = clock

    def get(self, version: str) -> ServedModel | None:
        """The served model for ``version``, loading it if needed; None if unavailable."""
        served = self._loaded.get(version)
        if served is not None:
            self._loaded.move_to_end(version)
            return served
        failure = self._failed.get(version)
        if failure is not None and self._clock() - failure[0] < self.retry_after_s:
            return None
        return self._load(version)

    def _load(self, version: str) -> ServedModel | None:
        if not _VERSION_PATTERN.match(version):
            self._remember_failure(version, "not a valid version id")
            return None
        directory = self.root / version
        if not directory.is_dir():
            self._remember_failure(version, "no such version directory")
            return None
        started = time.perf_counter()
        try:
            served = ServedModel.from_checkpoint(checkpoint.load(directory))
        except CheckpointError as err:
            log.error("cannot load model version %s: %s", version, err)
            self._remember_failure(version, str(err))
            return None
        self._failed.pop(version, None)
        self._loaded[version] = served
        while len(self._loaded) > self.max_loaded:
            evicted, gone = self._loaded.popitem(last=False)
            log.info("evicted model version %s from memory", evicted)
            if self._on_evict is not None:
                self._on_evict(gone)
        log.info("loaded model version %s (%s)", version, served.checkpoint.label or "no label")
        if self._on_load is not None:
            self._on_load(served, time.perf_counter() - started)
        return served

    def _remember_failure(self, version: str, why: str) -> None:
        if len(self._failed) >= 1024:  # versions come from untrusted events: bound the memory
            self._failed.pop(next(iter(self._failed)))
        self._failed[version] = (self._clock(), why)
        if self._on_failure is not None:
            self._on_failure(version, why)

    def loaded_versions(self) -> list[str]:
        return list(self._loaded)

    def available_versions(self) -> list[str]:
        """Published versions on disk, oldest first (cheap: a directory listing)."""
        return [p.name for p in checkpoint.list_versions(self.root)]
