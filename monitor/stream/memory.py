"""An in-process stand-in for Kafka: the demo and benchmarks feed the same agent code.

``MemorySource`` hands out pre-made or generated records from one partition and
behaves like ``KafkaSource`` where the agent can tell (assignment callback on the
first poll, pause/resume, commit, lag). ``MemorySink`` keeps dead letters in a bounded
buffer and counts them all.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

Partition = tuple[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryRecord:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp_ms: int = -1


class MemorySource:
    def __init__(
        self,
        batches: Iterator[list[bytes]],
        total: int | None,
        on_assigned: Callable[[list[Partition]], dict[Partition, int]],
        on_revoked: Callable[[list[Partition]], None],
        *,
        topic: str = "attnmon.demo",
        rate_per_s: float | None = None,
    ) -> None:
        self._batches = batches
        self._total = sys.maxsize if total is None else total  # None: endless (until the generator ends)
        self._endless = total is None
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._partition = (topic, 0)
        self._rate = rate_per_s
        self._buffer: deque[bytes] = deque()
        self._position = 0
        self._assigned = False
        self._paused = False
        self._started = time.monotonic()
        self.commits: dict[Partition, int] = {}  # what the agent committed (a group's committed offsets)

    def poll(self, max_records: int, timeout_ms: int) -> list[MemoryRecord]:
        if not self._assigned:
            self._assigned = True
            seek = self._on_assigned([self._partition]).get(self._partition)
            if seek is not None:
                self._skip_to(seek)
        if self._paused or self._position >= self._total:
            time.sleep(min(timeout_ms, 50) / 1000)
            return []
        allowed = max_records
        if self._rate is not None:  # pace the stream like a producer at a fixed rate
            due = int((time.monotonic() - self._started) * self._rate) - self._position
            if due <= 0:
                time.sleep(min(timeout_ms / 1000, 1 / self._rate))
                return []
            allowed = min(allowed, due)
        out = []
        while len(out) < allowed and self._position < self._total:
            if not self._buffer:
                try:
                    self._buffer.extend(next(self._batches))
                except StopIteration:
                    self._total = self._position
                    break
            out.append(MemoryRecord(self._partition[0], 0, self._position, self._buffer.popleft()))
            self._position += 1
        return out

    def _skip_to(self, offset: int) -> None:
        """Seek forward to ``offset``; past the end of the stream, stop at the end and say so."""
        if offset > self._total and not self._endless:
            log.warning("asked to resume at offset %d, past the end of this %d-event stream: nothing to replay",
                        offset, self._total)
        while self._position < min(offset, self._total):
            if not self._buffer:
                try:
                    self._buffer.extend(next(self._batches))
                except StopIteration:  # the generator ran out early: its end is the stream's end
                    self._total = self._position
                    return
            self._buffer.popleft()
            self._position += 1

    @property
    def exhausted(self) -> bool:
        return self._position >= self._total

    @property
    def position(self) -> int:
        """The next offset this source hands out (records handed out so far, seeks included)."""
        return self._position

    def set_rate(self, rate_per_s: float | None) -> None:
        """Pace from now on at ``rate_per_s`` (None: as fast as the agent polls)."""
        self._rate = rate_per_s
        if rate_per_s is not None:
            self._started = time.monotonic() - self._position / rate_per_s

    def commit(self, next_offsets: dict[Partition, int]) -> None:
        self.commits.update(next_offsets)

    def committed(self, partitions: list[Partition]) -> dict[Partition, int]:
        return {p: self.commits[p] for p in partitions if p in self.commits}

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def assignment(self) -> list[Partition]:
        return [self._partition] if self._assigned else []

    def lag(self) -> dict[Partition, int]:
        if not self._assigned:
            return {}
        return {self._partition: len(self._buffer) if self._endless else self._total - self._position}

    def close(self) -> None:
        if self._assigned:
            self._on_revoked([self._partition])
            self._assigned = False


class MemorySink:
    """Dead letters kept in memory: all counted by reason, the last ``keep`` retained."""

    def __init__(self, keep: int = 1000) -> None:
        self.by_reason: Counter[str] = Counter()
        self.recent: deque[tuple[int, str, str]] = deque(maxlen=keep)

    def send(self, record, reason: str, detail: str) -> None:
        self.by_reason[reason] += 1
        self.recent.append((record.offset, reason, detail))

    def flush(self, timeout_s: float = 30.0) -> None:
        return None

    def close(self, timeout_s: float = 30.0) -> None:
        return None
