"""Baselines: what "normal attention" looks like, per model version and cohort.

A cohort is one (model_version, dimension, cohort); its series are the statistics x
layers computed from the same events, so one baseline (a ``Sample``: counts per series,
stratum and bin, plus a sketch of the users) serves them all. A baseline is the
reference of the version's *own early traffic*: it is ``collecting`` until it holds a
reference's worth (``ReferenceRule``: ``events`` events, ``users`` effective users, and
``seconds`` of collecting), then ``frozen`` for good. Events alone are not enough: a
window's worth of events from a handful of heavy users is a handful of observations
(``monitor.drift.users``), and a burst of traffic at start-up, or one time of day, must
not become the reference by itself. A version can instead be *pinned* to another
version's baselines (a known-good version) with ``pin(version, to_version)``; a pinned
version does not collect its own.

The store holds one baseline per cohort the judge admitted (the judge caps them);
``forget(version)`` drops a retired version's baselines.

>>> rule = ReferenceRule(events=3, users=2, seconds=0)
>>> store = BaselineStore(rule)
>>> key = CohortKey("v1", "platform", "ios")
>>> baseline = store.start(key, (1, 1, 4), now=0.0)
>>> store.take(key, 5, now=0.0)   # users unknown yet: the whole batch is taken, then judged
5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple

from monitor.drift.sample import Sample


class CohortKey(NamedTuple):
    """One monitored cohort: its series share events, users, baselines and windows."""

    model_version: str
    dimension: str
    cohort: str

    def with_version(self, version: str) -> CohortKey:
        """The same cohort under another model version (cross-version lookups)."""
        return self._replace(model_version=version)

    def series(self, statistic: str, layer: int) -> SeriesKey:
        return SeriesKey(self.model_version, self.dimension, self.cohort, statistic, layer)

    def to_state(self) -> list[str]:
        return [self.model_version, self.dimension, self.cohort]

    @classmethod
    def from_state(cls, state: list[Any]) -> CohortKey:
        v, d, c = state
        return cls(str(v), str(d), str(c))


class SeriesKey(NamedTuple):
    """One judged series; ``layer`` indexes the model's attention layers."""

    model_version: str
    dimension: str
    cohort: str
    statistic: str
    layer: int

    def with_version(self, version: str) -> SeriesKey:
        """The same series under another model version (cross-version lookups)."""
        return self._replace(model_version=version)

    @property
    def cohort_key(self) -> CohortKey:
        """(model_version, dimension, cohort): the unit of baselines, windows and roll-ups."""
        return CohortKey(self.model_version, self.dimension, self.cohort)

    def to_state(self) -> list[Any]:
        return [self.model_version, self.dimension, self.cohort, self.statistic, self.layer]

    @classmethod
    def from_state(cls, state: list[Any]) -> SeriesKey:
        v, d, c, s, layer = state
        return cls(str(v), str(d), str(c), str(s), int(layer))


@dataclass(frozen=True)
class ReferenceRule:
    """What a reference must hold: ``events`` events from ``users`` effective users,
    collected over ``seconds`` (the same rule for baselines and recent-traffic blocks)."""

    events: int
    users: float
    seconds: float

    def holds_enough(self, sample: Sample) -> bool:
        return sample.events >= self.events and sample.effective_users() >= self.users

    def old_enough(self, started_at: float | None, now: float | None) -> bool:
        if self.seconds == 0.0:
            return True
        if started_at is None or now is None:
            return False
        return now - started_at >= self.seconds


class Baseline:
    """One cohort's reference sample and its collecting -> frozen lifecycle."""

    __slots__ = ("sample", "started_at", "frozen_at")

    def __init__(self, sample: Sample, started_at: float | None) -> None:
        self.sample = sample
        self.started_at = started_at  # None until a clock is known
        self.frozen_at: float | None = None

    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None

    @property
    def status(self) -> str:
        return "frozen" if self.frozen else "collecting"

    def to_state(self) -> dict[str, Any]:
        return {"sample": self.sample.to_state(), "started_at": self.started_at, "frozen_at": self.frozen_at}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Baseline:
        b = cls(Sample.from_state(state["sample"]), state["started_at"])
        b.frozen_at = state["frozen_at"]
        return b


class BaselineStore:
    """All baselines, keyed by ``CohortKey``; pinnable, saved and loaded as JSON."""

    def __init__(self, rule: ReferenceRule) -> None:
        if rule.events < 1:
            raise ValueError(f"reference events must be >= 1, got {rule.events}")
        if not rule.users >= 0:
            raise ValueError(f"reference users must be >= 0, got {rule.users}")
        if not rule.seconds >= 0:
            raise ValueError(f"reference seconds must be >= 0, got {rule.seconds}")
        self.rule = rule
        self._baselines: dict[CohortKey, Baseline] = {}
        self._pins: dict[str, str] = {}  # version -> version whose baselines it uses

    # -- collecting ---------------------------------------------------------------

    def start(self, key: CohortKey, shape: tuple[int, int, int], now: float | None) -> Baseline:
        """A new collecting baseline of ``shape`` (series, strata, bins) for ``key``."""
        baseline = self._baselines[key] = Baseline(Sample(*shape), now)
        return baseline

    def take(self, key: CohortKey, events: int, now: float | None) -> int:
        """How many leading events of a batch of ``events`` the collecting baseline takes.

        All of them while the baseline cannot freeze before their end; once it has
        collected long enough and from enough users, just the events that complete
        ``rule.events`` (the rest is the caller's for the current window). Whether a
        batch brings enough users is known only once it is counted, so a batch that
        completes the users is taken whole.
        """
        b = self._baselines[key]
        if b.started_at is None:
            b.started_at = now
        needed = max(self.rule.events - b.sample.events, 0)
        if needed >= events or not self.rule.old_enough(b.started_at, now):
            return events
        if b.sample.effective_users() < self.rule.users:
            return events
        return needed

    def settle(self, key: CohortKey, now: float | None) -> bool:
        """Freeze the key's collecting baseline if it holds a reference's worth now; True if it froze."""
        b = self._baselines[key]
        if b.frozen or not self.rule.old_enough(b.started_at, now) or not self.rule.holds_enough(b.sample):
            return False
        b.frozen_at = now if now is not None else (b.started_at if b.started_at is not None else 0.0)
        return True

    def freeze_due(self, now: float) -> list[CohortKey]:
        """Freeze every collecting baseline whose conditions hold at ``now``; return their keys.

        A baseline with enough events and users may become old enough between batches.
        """
        froze = []
        for key, b in self._baselines.items():
            if not b.frozen:
                if b.started_at is None:
                    b.started_at = now
                if self.settle(key, now):
                    froze.append(key)
        return froze

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

    def resolve(self, key: CohortKey) -> CohortKey:
        """The key whose baseline serves ``key``: follows pins to the end of the chain."""
        v = key.model_version
        while v in self._pins:
            v = self._pins[v]
        return key if v == key.model_version else key.with_version(v)

    def reference(self, key: CohortKey) -> Sample | None:
        """The frozen reference sample for ``key`` (following pins), or None if not ready."""
        b = self._baselines.get(self.resolve(key))
        return b.sample if b is not None and b.frozen else None

    # -- inspection and housekeeping ----------------------------------------------

    def get(self, key: CohortKey) -> Baseline | None:
        """The key's own baseline (pins not followed)."""
        return self._baselines.get(key)

    def status(self, key: CohortKey) -> str:
        """"pinned", "frozen", "collecting" or "absent" for the key's own version."""
        if key.model_version in self._pins:
            return "pinned"
        b = self._baselines.get(key)
        return "absent" if b is None else b.status

    def cohort_status(self) -> dict[CohortKey, bool]:
        """(model_version, dimension, cohort) -> True once its baseline is frozen."""
        return {key: b.frozen for key, b in self._baselines.items()}

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

    def __iter__(self) -> Iterator[CohortKey]:
        return iter(self._baselines)

    # -- persistence --------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """JSON-able state: every baseline and the pins (the rule comes from the config)."""
        return {
            "baselines": [[k.to_state(), b.to_state()] for k, b in self._baselines.items()],
            "pins": dict(self._pins),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], rule: ReferenceRule) -> BaselineStore:
        store = cls(rule)
        for k, b in state["baselines"]:
            store._baselines[CohortKey.from_state(k)] = Baseline.from_state(b)
        store._pins = {str(k): str(v) for k, v in state["pins"].items()}
        return store
