"""Cohort assignment with bounded label cardinality.

Every event belongs to one cohort per dimension. Dimension 0 is always
``"all"`` (cohort ``"all"``); the configured ones follow in order:

- ``kind="context"``: the value of a context field. Values are untrusted, so
  each dimension exports at most ``max_values`` admitted labels plus
  ``"other"`` (a value outside the admitted set) and ``"unknown"`` (field
  missing, null, empty or not a scalar; counts against nothing).
- ``kind="history_length"``: the history length bucketed by ``edges``, e.g.
  ``(10, 50, 200)`` -> ``"1-9", "10-49", "50-199", "200+"``.

Admission (context dimensions):

- with a pinned ``allowlist``, exactly those labels are admitted, at start;
- otherwise by volume: a Misra-Gries heavy-hitter sketch of
  ``sketch_factor * max_values`` counters sees every value not yet admitted,
  and a value is admitted when a slot is free and its counter reaches
  ``min_count``. Misra-Gries counters never overestimate, so a flood of
  one-off values can never be admitted however long it runs, while a value
  more frequent than 1/(capacity+1) of the non-admitted traffic keeps a
  growing counter. Once admitted a label keeps its slot for the life of the
  process (and across restarts via :meth:`CohortAssigner.state`): no eviction,
  so no Prometheus series churn. When all slots are taken the sketch is
  dropped and every new value is ``"other"``. The first ``min_count - 1``
  events of a value that is later admitted are counted under ``"other"``.
  Under a flood, a legitimate value is still admitted while its share of the
  not-yet-admitted traffic exceeds 1/(capacity + 1); the sketch's work is
  amortised O(1) per event (a decrement-all empties the one-off counters).

Values are sanitised before anything else: truncated to ``max_label_len`` and
every character outside ``[A-Za-z0-9_.:-]`` replaced by ``_``; the literal
values ``"other"`` / ``"unknown"`` map to those reserved cohorts. Non-string
scalars are rendered as text (``true``/``false`` for booleans).

Output is int-coded for fast bulk folding: :meth:`CohortAssigner.assign`
returns codes [B, n_dims] int32 where column j indexes
``labels()[dimensions[j]]``. Codes are append-only for the life of the
assigner, so a caller may cache one metric child per (column, code). Not
thread-safe: one assigner per consumer loop.

>>> assigner = CohortAssigner([
...     CohortDimension("platform", allowlist=("ios", "android")),
...     CohortDimension("length", kind="history_length", edges=(10, 50)),
... ])
>>> codes = assigner.assign([{"platform": "ios"}, {"platform": "web"}, {}], np.array([3, 12, 80]))
>>> [[assigner.label(j, c) for j, c in enumerate(row)] for row in codes.tolist()]
[['all', 'ios', '1-9'], ['all', 'other', '10-49'], ['all', 'unknown', '50+']]

Admission by volume: a value needs ``min_count`` sightings, one-offs never get in:

>>> regions = CohortAssigner([CohortDimension("region", max_values=2, min_count=2)])
>>> seen = ["eu", "eu", "na", "x1", "x2", "na"]
>>> [regions.label(1, c) for c in regions.assign([{"region": r} for r in seen], np.ones(6, int))[:, 1].tolist()]
['other', 'eu', 'other', 'other', 'other', 'na']
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = ["ALL", "OTHER", "UNKNOWN", "CohortAssigner", "CohortDimension", "sanitise"]

ALL: Final = "all"
UNKNOWN: Final = "unknown"  # code 0 of every context dimension
OTHER: Final = "other"  # code 1 of every context dimension
_RESERVED: Final = {UNKNOWN: 0, OTHER: 1}
_STATE_VERSION: Final = 1
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.:-]")
_NAME: Final = re.compile(r"[a-z_][a-z0-9_]*")


def sanitise(value: object, max_len: int = 64) -> str:
    """Render an untrusted scalar as a safe label value ("" for null, empty or non-scalar).

    >>> sanitise("eu-west 1/a"), sanitise(True), sanitise(None), sanitise("x" * 100, max_len=3)
    ('eu-west_1_a', 'true', '', 'xxx')
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = str(value)
    else:
        return ""
    return _UNSAFE.sub("_", text[:max_len])


@dataclass(frozen=True)
class CohortDimension:
    """One cohort dimension (validated on construction)."""

    name: str  # label value of the "dimension" label: [a-z_][a-z0-9_]*, not "all"
    kind: Literal["context", "history_length"] = "context"
    field: str | None = None  # context key to read (default: name); context only
    edges: tuple[int, ...] = ()  # history_length only: strictly increasing, >= 2
    max_values: int = 10  # admitted labels at most (besides "other" / "unknown")
    allowlist: tuple[str, ...] | None = None  # pinned labels instead of volume admission
    min_count: int = 5  # sketch count that admits a value
    sketch_factor: int = 4  # sketch capacity = sketch_factor * max_values
    max_label_len: int = 64

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name) or self.name == ALL:
            raise ValueError(f"cohort dimension name must match [a-z_][a-z0-9_]* and not be 'all': {self.name!r}")
        for attr in ("max_values", "min_count", "sketch_factor", "max_label_len"):
            value = getattr(self, attr)
            if type(value) is not int or value < 1:
                raise ValueError(f"{self.name}: {attr} must be a positive int, got {value!r}")
        if self.kind == "history_length":
            edges = self.edges
            if not edges or any(type(e) is not int for e in edges) or edges[0] < 2:
                raise ValueError(f"{self.name}: history_length needs int edges >= 2, got {edges!r}")
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ValueError(f"{self.name}: edges must be strictly increasing, got {edges!r}")
            if self.field is not None or self.allowlist is not None:
                raise ValueError(f"{self.name}: field/allowlist apply to context dimensions only")
        elif self.kind == "context":
            if self.edges:
                raise ValueError(f"{self.name}: edges apply to history_length dimensions only")
            if self.field is not None and (not isinstance(self.field, str) or not self.field):
                raise ValueError(f"{self.name}: field must be a non-empty string")
            if self.allowlist is not None:
                allow = tuple(self.allowlist)
                if len(set(allow)) != len(allow) or len(allow) > self.max_values:
                    raise ValueError(f"{self.name}: allowlist must be unique and at most max_values long")
                for label in allow:
                    if sanitise(label, self.max_label_len) != label or not label or label in _RESERVED:
                        raise ValueError(f"{self.name}: allowlist entry {label!r} is not a valid label")
                object.__setattr__(self, "allowlist", allow)
        else:
            raise ValueError(f"{self.name}: kind must be 'context' or 'history_length', got {self.kind!r}")

    @property
    def key(self) -> str:
        """The context key this dimension reads."""
        return self.field or self.name

    def bucket_labels(self) -> tuple[str, ...]:
        """Labels of the history-length buckets, in code order."""
        lows = (1, *self.edges)
        highs = tuple(e - 1 for e in self.edges)
        return tuple(f"{lo}-{hi}" for lo, hi in zip(lows, highs)) + (f"{self.edges[-1]}+",)


class _MisraGries:
    """Bounded frequency sketch: counters are lower bounds of true counts."""

    __slots__ = ("capacity", "counts")

    def __init__(self, capacity: int, counts: Mapping[str, int] | None = None) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        for key, count in (counts or {}).items():
            if len(self.counts) < capacity and type(count) is int and count > 0:
                self.counts[key] = count

    def add(self, key: str) -> int:
        """Count one occurrence; return the key's counter afterwards (0 if not kept)."""
        counts = self.counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + 1
            return count + 1
        if len(counts) < self.capacity:
            counts[key] = 1
            return 1
        self.counts = {k: c - 1 for k, c in counts.items() if c > 1}  # decrement all, drop zeros
        return 0


class _ContextCohort:
    """Admitted labels of one context dimension and the sketch that admits more."""

    __slots__ = ("dim", "labels", "codes", "fast", "sketch")

    def __init__(self, dim: CohortDimension) -> None:
        self.dim = dim
        self.labels: list[str] = [UNKNOWN, OTHER]  # index = code
        self.codes: dict[str, int] = dict(_RESERVED)  # sanitised label -> code
        self.fast: dict[object, int] = {None: 0}  # raw str value -> code, bounded
        self.sketch: _MisraGries | None = None
        if dim.allowlist is not None:
            for label in dim.allowlist:
                self._admit(label)
        else:
            self.sketch = _MisraGries(dim.sketch_factor * dim.max_values)

    def _admit(self, label: str) -> int:
        code = len(self.labels)
        self.labels.append(label)
        self.codes[label] = code
        if self.sketch is not None:
            self.sketch.counts.pop(label, None)
            if len(self.labels) - 2 >= self.dim.max_values:
                self.sketch = None  # all slots taken: admission is over for this run
        return code

    def code(self, raw: object) -> int:
        """Code of one raw context value, admitting it if the rule says so."""
        try:
            code = self.fast.get(raw)
        except TypeError:  # unhashable junk from a lenient caller
            code = None
        if code is not None:
            return code
        label = sanitise(raw, self.dim.max_label_len)
        if not label:
            return 0
        code = self.codes.get(label)
        if code is None:
            sketch = self.sketch
            if sketch is None or sketch.add(label) < self.dim.min_count:
                return 1
            code = self._admit(label)
        if type(raw) is str and len(self.fast) < 4 * self.dim.max_values + 16:
            self.fast[raw] = code
        return code


class CohortAssigner:
    """Maps events to int-coded cohorts, one column per dimension ("all" first)."""

    def __init__(self, dimensions: Sequence[CohortDimension]) -> None:
        names = [d.name for d in dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate cohort dimension names: {names}")
        self._dimensions = tuple(dimensions)
        self.dimensions: tuple[str, ...] = (ALL, *names)
        self._context: list[tuple[int, _ContextCohort]] = []
        self._buckets: list[tuple[int, npt.NDArray[np.int64], tuple[str, ...]]] = []
        for column, dim in enumerate(dimensions, start=1):
            if dim.kind == "context":
                self._context.append((column, _ContextCohort(dim)))
            else:
                self._buckets.append((column, np.asarray(dim.edges, dtype=np.int64), dim.bucket_labels()))

    def assign(
        self, contexts: Sequence[Mapping[str, Any]], lengths: npt.NDArray[np.integer]
    ) -> npt.NDArray[np.int32]:
        """Cohort codes of a batch.

        Args:
            contexts: [B] event context mappings (values: JSON scalars).
            lengths: [B] history lengths (>= 1) for history_length dimensions.

        Returns:
            [B, len(dimensions)] int32; ``labels()[dimensions[j]][codes[b, j]]``
            is event b's cohort in dimension j. Column 0 ("all") is all zeros.
        """
        batch = len(contexts)
        lengths = np.asarray(lengths)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), got {lengths.shape}")
        if batch and self._buckets and lengths.min() < 1:
            raise ValueError("history lengths must be >= 1")
        codes = np.zeros((batch, len(self.dimensions)), dtype=np.int32)
        for column, cohort in self._context:
            key, code = cohort.dim.key, cohort.code
            codes[:, column] = [code(ctx.get(key)) for ctx in contexts]
        for column, edges, _ in self._buckets:
            codes[:, column] = np.searchsorted(edges, lengths, side="right")
        return codes

    def label(self, column: int, code: int) -> str:
        """Label of one code in one column."""
        return self._labels_of(column)[code]

    def labels(self) -> dict[str, tuple[str, ...]]:
        """Every label value per dimension, index = code (append-only)."""
        return {name: self._labels_of(column) for column, name in enumerate(self.dimensions)}

    def _labels_of(self, column: int) -> tuple[str, ...]:
        if column == 0:
            return (ALL,)
        for col, cohort in self._context:
            if col == column:
                return tuple(cohort.labels)
        for col, _, bucket_labels in self._buckets:
            if col == column:
                return bucket_labels
        raise IndexError(f"no cohort column {column}")

    def state(self) -> dict[str, Any]:
        """JSON-serialisable admitted labels and sketches of volume-admitted dimensions."""
        dims: dict[str, Any] = {}
        for _, cohort in self._context:
            if cohort.dim.allowlist is None:
                dims[cohort.dim.name] = {
                    "admitted": cohort.labels[2:],
                    "sketch": dict(cohort.sketch.counts) if cohort.sketch is not None else {},
                }
        return {"version": _STATE_VERSION, "dimensions": dims}

    @classmethod
    def from_state(cls, dimensions: Sequence[CohortDimension], state: Mapping[str, Any]) -> CohortAssigner:
        """Rebuild an assigner whose admitted labels (and codes) match a saved state.

        Labels are re-admitted in saved order up to the current ``max_values``
        (a lowered cap keeps the oldest ones); dimensions absent from the state
        start empty, saved dimensions no longer configured are ignored.
        """
        version = state.get("version") if isinstance(state, Mapping) else None
        if version != _STATE_VERSION:
            raise ValueError(f"unsupported cohort state version: {version!r}")
        assigner = cls(dimensions)
        saved_dims = state.get("dimensions") or {}
        for _, cohort in assigner._context:
            saved = saved_dims.get(cohort.dim.name)
            if cohort.dim.allowlist is not None or not isinstance(saved, Mapping):
                continue
            for label in saved.get("admitted") or ():
                clean = sanitise(label, cohort.dim.max_label_len)
                if cohort.sketch is None:
                    break
                if clean and clean not in cohort.codes:
                    cohort._admit(clean)
            if cohort.sketch is not None:
                max_len = cohort.dim.max_label_len
                counts = {sanitise(k, max_len): v for k, v in (saved.get("sketch") or {}).items()}
                counts = {k: v for k, v in counts.items() if k and k not in cohort.codes}
                cohort.sketch = _MisraGries(cohort.sketch.capacity, counts)
        return assigner
