"""Baselines: what "normal attention" looks like, per model version and series.

A series is one (model_version, dimension, cohort, statistic, layer): e.g.
the head-averaged entropy of layer 0 for platform=ios under version v7. Its
baseline is the reference window of the version's *own early traffic*: it is
``collecting`` until it holds ``reference_events`` events AND has collected
for at least ``reference_seconds`` (so a burst of traffic at start-up, or one
time of day, does not become the reference by itself), then ``frozen`` for
good. A version can instead be *pinned* to another version's baselines (a
known-good version) with ``pin(version, to_version)``; a pinned version does
not collect its own.

The store is bounded: at most ``max_keys`` baselines. Cohort values come
from untrusted events, so a key beyond the cap is refused and counted
(``counts["refused_key_cap"]``), never silently grown. ``forget(version)``
drops a retired version's baselines.

>>> store = BaselineStore(reference_events=3)
>>> key = SeriesKey("v1", "platform", "ios", "entropy", 0)
>>> store.observe(key, np.array([0.1, 0.2]), now=0.0)
Intake(taken=2, froze=False, outcome='collecting')
>>> store.observe(key, np.array([0.3, 0.4, 0.5]), now=1.0)
Intake(taken=1, froze=True, outcome='collecting')
>>> store.reference(key).total
3
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import numpy as np

from monitor.drift.histogram import Histogram


class SeriesKey(NamedTuple):
    """One monitored series; ``layer`` indexes the model's attention layers."""

    model_version: str
    dimension: str
    cohort: str
    statistic: str
    layer: int

    def with_version(self, version: str) -> SeriesKey:
        """The same series under another model version (cross-version lookups)."""
        return self._replace(model_version=version)

    @property
    def cohort_key(self) -> tuple[str, str, str]:
        """(model_version, dimension, cohort): the unit of cohort roll-ups."""
        return (self.model_version, self.dimension, self.cohort)

    def to_state(self) -> list[Any]:
        return [self.model_version, self.dimension, self.cohort, self.statistic, self.layer]

    @classmethod
    def from_state(cls, state: list[Any]) -> SeriesKey:
        v, d, c, s, layer = state
        return cls(str(v), str(d), str(c), str(s), int(layer))


class Intake(NamedTuple):
    """What ``BaselineStore.observe`` did with a batch.

    ``taken``: how many leading values the baseline took (the rest belong to
    the current window); ``froze``: this call froze the baseline;
    ``outcome``: the baseline's state on arrival, one of "collecting",
    "frozen", "pinned" (the version uses another's baseline), "refused" (key cap).
    """

    taken: int
    froze: bool
    outcome: str


class Baseline:
    """One series' reference histogram and its collecting -> frozen lifecycle."""

    __slots__ = ("histogram", "started_at", "frozen_at")

    def __init__(self, bins: int, started_at: float | None) -> None:
        self.histogram = Histogram(bins)
        self.started_at = started_at  # None until a clock is known
        self.frozen_at: float | None = None

    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None

    @property
    def status(self) -> str:
        return "frozen" if self.frozen else "collecting"

    def to_state(self) -> dict[str, Any]:
        return {
            "histogram": self.histogram.to_state(),
            "started_at": self.started_at,
            "frozen_at": self.frozen_at,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Baseline:
        h = Histogram.from_state(state["histogram"])
        b = cls(h.bins, state["started_at"])
        b.histogram = h
        b.frozen_at = state["frozen_at"]
        return b


class BaselineStore:
    """All baselines, keyed by ``SeriesKey``; bounded, pinnable, saved and loaded as JSON."""

    def __init__(
        self,
        reference_events: int = 2000,
        reference_seconds: float = 0.0,
        bins: int = 20,
        max_keys: int = 20_000,
    ) -> None:
        if reference_events < 1:
            raise ValueError(f"reference_events must be >= 1, got {reference_events}")
        if not reference_seconds >= 0:
            raise ValueError(f"reference_seconds must be >= 0, got {reference_seconds}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        Histogram(bins)  # validates bins
        self.reference_events = int(reference_events)
        self.reference_seconds = float(reference_seconds)
        self.bins = int(bins)
        self.max_keys = int(max_keys)
        self._baselines: dict[SeriesKey, Baseline] = {}
        self._pins: dict[str, str] = {}  # version -> version whose baselines it uses
        self.counts: dict[str, int] = {"refused_key_cap": 0}  # events refused, by reason

    # -- collecting ---------------------------------------------------------------

    def observe(self, key: SeriesKey, values: np.ndarray, now: float | None = None) -> Intake:
        """Feed a batch to the key's baseline while it collects.

        The baseline takes values until it is due to freeze, so a batch that
        crosses ``reference_events`` is split: the first part completes the
        reference, the rest (``values[taken:]``) is the caller's to put in the
        current window. ``now`` is any monotone clock in seconds; without one,
        ``reference_seconds`` counts from the first call that gives one.
        """
        values = np.asarray(values, dtype=np.float64).ravel()
        if key.model_version in self._pins:
            return Intake(0, False, "pinned")
        b = self._baselines.get(key)
        if b is None:
            if len(self._baselines) >= self.max_keys:
                self.counts["refused_key_cap"] += int(values.size)
                return Intake(0, False, "refused")
            b = self._baselines[key] = Baseline(self.bins, now)
        if b.frozen:
            return Intake(0, False, "frozen")
        if b.started_at is None:
            b.started_at = now
        taken = values.size
        if self._time_ok(b, now):
            # Take just enough *valid* values to complete the reference (NaNs are rejected).
            needed = max(self.reference_events - b.histogram.total, 0)
            valid = np.cumsum(~np.isnan(values))
            if valid.size and valid[-1] >= needed:
                taken = int(np.searchsorted(valid, needed)) + 1 if needed else 0
        b.histogram.add(values[:taken])
        froze = self._maybe_freeze(b, now)
        return Intake(int(taken), froze, "collecting")

    def freeze_due(self, now: float) -> list[SeriesKey]:
        """Freeze every collecting baseline whose conditions hold at ``now``; return their keys.

        Needed when ``reference_seconds`` > 0: a baseline with enough events
        may become old enough between batches.
        """
        froze = []
        for key, b in self._baselines.items():
            if not b.frozen:
                if b.started_at is None:
                    b.started_at = now
                if self._maybe_freeze(b, now):
                    froze.append(key)
        return froze

    def _time_ok(self, b: Baseline, now: float | None) -> bool:
        if self.reference_seconds == 0.0:
            return True
        if b.started_at is None or now is None:
            return False
        return now - b.started_at >= self.reference_seconds

    def _maybe_freeze(self, b: Baseline, now: float | None) -> bool:
        if b.histogram.total >= self.reference_events and self._time_ok(b, now):
            b.frozen_at = now if now is not None else b.started_at
            if b.frozen_at is None:
                b.frozen_at = 0.0
            return True
        return False

    # -- pinning ------------------------------------------------------------------

    def pin(self, version: str, to_version: str) -> None:
        """Judge ``version`` against ``to_version``'s baselines instead of its own.

        Pins may chain (v3 -> v2 -> v1) but not loop. The pinned version's own
        baselines, if any, are kept (``unpin`` brings them back).
        """
        if version == to_version:
            raise ValueError("cannot pin a version to itself")
        seen = {version}
        v: str | None = to_version
        while v is not None:
            if v in seen:
                raise ValueError(f"pinning {version} to {to_version} would make a loop")
            seen.add(v)
            v = self._pins.get(v)
        self._pins[version] = to_version

    def unpin(self, version: str) -> None:
        self._pins.pop(version, None)

    def pinned_to(self, version: str) -> str | None:
        return self._pins.get(version)

    def resolve(self, key: SeriesKey) -> SeriesKey:
        """The key whose baseline serves ``key``: follows pins to the end of the chain."""
        v = key.model_version
        while v in self._pins:
            v = self._pins[v]
        return key if v == key.model_version else key.with_version(v)

    def reference(self, key: SeriesKey) -> Histogram | None:
        """The frozen reference histogram for ``key`` (following pins), or None if not ready."""
        b = self._baselines.get(self.resolve(key))
        return b.histogram if b is not None and b.frozen else None

    # -- inspection and housekeeping ----------------------------------------------

    def get(self, key: SeriesKey) -> Baseline | None:
        """The key's own baseline (pins not followed)."""
        return self._baselines.get(key)

    def status(self, key: SeriesKey) -> str:
        """"pinned", "frozen", "collecting" or "absent" for the key's own version."""
        if key.model_version in self._pins:
            return "pinned"
        b = self._baselines.get(key)
        return "absent" if b is None else b.status

    def cohort_status(self) -> dict[tuple[str, str, str], bool]:
        """(model_version, dimension, cohort) -> True once all its baselines are frozen."""
        ready: dict[tuple[str, str, str], bool] = {}
        for key, b in self._baselines.items():
            cohort = key.cohort_key
            ready[cohort] = ready.get(cohort, True) and b.frozen
        return ready

    def collecting(self) -> int:
        """How many baselines are still collecting."""
        return sum(1 for b in self._baselines.values() if not b.frozen)

    def forget(self, version: str) -> int:
        """Drop a retired version's baselines and pin; return how many baselines went."""
        doomed = [k for k in self._baselines if k.model_version == version]
        for k in doomed:
            del self._baselines[k]
        self._pins.pop(version, None)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._baselines)

    def __contains__(self, key: object) -> bool:
        return key in self._baselines

    def __iter__(self) -> Iterator[SeriesKey]:
        return iter(self._baselines)

    # -- persistence --------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: settings, every baseline, pins, counters."""
        return {
            "reference_events": self.reference_events,
            "reference_seconds": self.reference_seconds,
            "bins": self.bins,
            "max_keys": self.max_keys,
            "baselines": [[k.to_state(), b.to_state()] for k, b in self._baselines.items()],
            "pins": dict(self._pins),
            "counts": dict(self.counts),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], **overrides: Any) -> BaselineStore:
        """Rebuild a store; ``overrides`` replace saved settings (bins must still match)."""
        settings = {k: state[k] for k in ("reference_events", "reference_seconds", "bins", "max_keys")}
        unknown = set(overrides) - set(settings)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        if "bins" in overrides and overrides["bins"] != settings["bins"]:
            raise ValueError(f"saved baselines have {settings['bins']} bins, not {overrides['bins']}")
        settings.update(overrides)
        store = cls(**settings)
        for k, b in state["baselines"]:
            baseline = Baseline.from_state(b)
            if baseline.histogram.bins != store.bins:
                raise ValueError("baseline state: bins differ from the store's")
            store._baselines[SeriesKey.from_state(k)] = baseline
        store._pins = {str(k): str(v) for k, v in state["pins"].items()}
        store.counts.update({k: int(v) for k, v in state.get("counts", {}).items()})
        return store
