"""Intake: a polled batch decoded into one outcome per record and grouped by model version;
events whose version is not published yet wait in a bounded hold buffer.

Everything that drops a record goes through :class:`Rejects`, so each dead letter is also
counted by reason.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

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
    since: float  # time.monotonic() when first held


class HoldBuffer:
    """Events waiting for their model version to be published, at most ``max_held``.

    A held event's offset is held back from commit; once its version appears the event is
    handed back for folding, and after ``grace_s`` without it the event is dead-lettered.
    """

    def __init__(self, offsets: OffsetTracker, metrics: AgentMetrics, reject: Rejects, *,
                 max_held: int, grace_s: float) -> None:
        self._offsets = offsets
        self._metrics = metrics
        self._reject = reject
        self._max_held = max_held
        self._grace_s = grace_s
        self._held: deque[_Held] = deque()

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, items: list[Item]) -> None:
        """Hold events of an unknown version; beyond ``max_held`` they are dead-lettered at once."""
        now = time.monotonic()
        for record, event in items:
            if len(self._held) >= self._max_held:
                self._reject(record, Reason.UNKNOWN_MODEL_VERSION, f"{event.model_version!r}: hold buffer full")
                continue
            self._held.append(_Held(record, event, now))
            self._offsets.hold((record.topic, record.partition), record.offset)
        self._metrics.held.set(len(self._held))

    def take_ready(self, known: Callable[[str], object]) -> dict[str, list[Item]]:
        """Release the held events whose version ``known`` now finds (not None), by version;
        dead-letter those out of time; keep holding the rest."""
        if not self._held:
            return {}
        now = time.monotonic()
        waiting: deque[_Held] = deque()
        ready: dict[str, list[Item]] = {}
        for held in self._held:
            self._offsets.release((held.record.topic, held.record.partition), held.record.offset)
            version = held.event.model_version
            if version in ready or known(version) is not None:
                ready.setdefault(version, []).append((held.record, held.event))
            elif now - held.since > self._grace_s:
                self._reject(held.record, Reason.UNKNOWN_MODEL_VERSION,
                             f"no model version {version!r} within {self._grace_s:.0f}s")
            else:
                waiting.append(held)
                self._offsets.hold((held.record.topic, held.record.partition), held.record.offset)
        self._held = waiting
        self._metrics.held.set(len(waiting))
        return ready
