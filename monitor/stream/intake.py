"""Intake: a polled batch decoded into one outcome per record and grouped by model version;
events whose version is not published yet wait in a bounded hold buffer.

Everything that drops a record goes through :class:`Rejects`, so each dead letter is also
counted by reason.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from monitor.export.metrics import AgentMetrics
from monitor.stream.events import Event, EventLimits, InvalidEvent, Reason, decode
from monitor.stream.offsets import OffsetTracker


class RecordLike(Protocol):
    topic: str
    partition: int
    offset: int
    value: bytes | None


DeadLetter = Callable[[RecordLike, Reason, str], None]
Item = tuple[RecordLike, Event]  # a record and the event decoded from it


class Rejects:
    """Dead-letters a record and counts it by reason (every stage that drops an event)."""

    def __init__(self, dead_letter: DeadLetter, metrics: AgentMetrics) -> None:
        self._dead_letter = dead_letter
        self._metrics = metrics

    def __call__(self, record: RecordLike, reason: Reason, detail: str) -> None:
        self._dead_letter(record, reason, detail)
        self._metrics.events.labels("dead_lettered", reason.value).inc()


def decode_records(records: Sequence[RecordLike], limits: EventLimits,
                   metrics: AgentMetrics) -> list[Event | InvalidEvent]:
    """One outcome per record: its event, or why it is unusable. Never raises.

    A record carrying a ``skipped`` marker stands for a batch the source could not decode
    (codec, corruption): its offsets are counted and it becomes one undecodable-batch outcome.
    """
    started = time.perf_counter()
    decoded: list[Event | InvalidEvent] = []
    for record in records:
        skipped = getattr(record, "skipped", None)  # a source's marker for an undecodable batch
        if skipped is not None:
            count = skipped.count(record.offset)
            metrics.skipped_offsets.inc(count)
            decoded.append(InvalidEvent(Reason.UNDECODABLE_BATCH, f"offsets {skipped.first_offset}..{record.offset}"
                                        f" ({count}) of partition {record.partition}: {skipped.error}"))
            continue
        try:
            decoded.append(decode(record.value, limits))  # type: ignore[arg-type]
        except InvalidEvent as err:
            decoded.append(err)
        except Exception as exc:  # a decoder bug must not stop the batch; keep it visible in detail
            decoded.append(InvalidEvent(Reason.NOT_JSON, f"unexpected {type(exc).__name__}: {exc}"))
    metrics.observe_stage("decode", time.perf_counter() - started)
    return decoded


def group_by_version(records: Sequence[RecordLike], decoded: Sequence[Event | InvalidEvent],
                     offsets: OffsetTracker, reject: Rejects) -> dict[str, list[Item]]:
    """Each record's offset marked seen; invalid ones dead-lettered, the events grouped by
    model version (in order of first appearance)."""
    by_version: dict[str, list[Item]] = {}
    for record, outcome in zip(records, decoded, strict=True):
        offsets.seen((record.topic, record.partition), record.offset)
        if isinstance(outcome, InvalidEvent):
            reject(record, outcome.reason, outcome.detail)
            continue
        by_version.setdefault(outcome.model_version, []).append((record, outcome))
    return by_version


@dataclasses.dataclass
class _Held:
    record: RecordLike
    event: Event
    since: float  # wall-clock seconds when first held (survives a restart in the checkpoint)


@dataclasses.dataclass(frozen=True, slots=True)
class HeldRecord:
    """A held event's record as the checkpoint keeps it (and as it is re-read at restore)."""

    topic: str
    partition: int
    offset: int
    value: bytes


class HoldBuffer:
    """Events waiting for their model version to be published, bounded by count and bytes.

    Held events are part of the agent's state: they go into the checkpoint with the offsets,
    which move past them like past any folded event, so a crash neither loses a held event
    nor re-reads (and folds twice) the events after it. When its version appears an event is
    handed back for folding; after ``grace_s`` without it, or when its partition moves to
    another member, it is dead-lettered with the reason.
    """

    def __init__(self, metrics: AgentMetrics, reject: Rejects, *, max_held: int, max_bytes: int,
                 grace_s: float, limits: EventLimits, clock: Callable[[], float] = time.time) -> None:
        self._metrics = metrics
        self._reject = reject
        self._max_held = max_held
        self._max_bytes = max_bytes
        self._grace_s = grace_s
        self._limits = limits
        self._clock = clock
        self._held: deque[_Held] = deque()
        self._bytes = 0

    def __bool__(self) -> bool:
        return bool(self._held)

    def __len__(self) -> int:
        return len(self._held)

    @property
    def bytes(self) -> int:
        """Record bytes held now (at most ``max_bytes``)."""
        return self._bytes

    def hold(self, items: list[Item]) -> None:
        """Hold events of an unknown version; beyond ``max_held`` events or ``max_bytes`` they
        are dead-lettered at once."""
        now = self._clock()
        for record, event in items:
            size = len(record.value or b"")
            if len(self._held) >= self._max_held or self._bytes + size > self._max_bytes:
                self._reject(record, Reason.UNKNOWN_MODEL_VERSION, f"{event.model_version!r}: hold buffer full")
                continue
            self._held.append(_Held(record, event, now))
            self._bytes += size
        self._export()

    def take_ready(self, known: Callable[[str], object]) -> dict[str, list[Item]]:
        """Release the held events whose version ``known`` now finds (not None), by version;
        dead-letter those out of time; keep holding the rest."""
        if not self._held:
            return {}
        now = self._clock()
        ready: dict[str, list[Item]] = {}

        def keep(held: _Held) -> bool:
            version = held.event.model_version
            if version in ready or known(version) is not None:
                ready.setdefault(version, []).append((held.record, held.event))
                return False
            if now - held.since > self._grace_s:
                self._reject(held.record, Reason.UNKNOWN_MODEL_VERSION,
                             f"no model version {version!r} within {self._grace_s:.0f}s")
                return False
            return True

        self._retain(keep)
        return ready

    def forget(self, partitions: Sequence[tuple[str, int]]) -> int:
        """Dead-letter the events held for partitions this member no longer owns; their new
        owner reads on after the committed offset, past them. Returns how many."""
        gone = set(partitions)
        dropped = 0

        def keep(held: _Held) -> bool:
            nonlocal dropped
            if (held.record.topic, held.record.partition) not in gone:
                return True
            self._reject(held.record, Reason.UNKNOWN_MODEL_VERSION,
                         f"{held.event.model_version!r}: partition revoked while the event waited for its version")
            dropped += 1
            return False

        self._retain(keep)
        return dropped

    def _retain(self, keep: Callable[[_Held], bool]) -> None:
        self._held = deque(h for h in self._held if keep(h))
        self._bytes = sum(len(h.record.value or b"") for h in self._held)
        self._export()

    def _export(self) -> None:
        self._metrics.held.set(len(self._held))
        self._metrics.held_bytes.set(self._bytes)

    # -- state ----------------------------------------------------------------------------
    def to_state(self) -> list[list[Any]]:
        """[[topic, partition, offset, value (base64), since], ...]: what a restart holds again."""
        return [[h.record.topic, h.record.partition, h.record.offset,
                 base64.b64encode(h.record.value or b"").decode("ascii"), h.since] for h in self._held]

    def restore(self, state: list[list[Any]]) -> None:
        """Hold the checkpoint's events again (decoded anew: the decoder is pure)."""
        self._held.clear()
        for topic, partition, offset, value, since in state:
            record = HeldRecord(str(topic), int(partition), int(offset), base64.b64decode(value, validate=True))
            try:
                event = decode(record.value, self._limits)
            except InvalidEvent as error:  # the limits changed since: now a bad record like any other
                self._reject(record, error.reason, error.detail)
                continue
            self._held.append(_Held(record, event, float(since)))
        self._retain(lambda held: True)
