"""What the agent needs from a source of records and a dead-letter sink, without Kafka.

``monitor.stream.kafka`` implements these over kafka-python, ``monitor.stream.memory``
in-process; the agent loop knows only this module, so it never imports a Kafka client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Partition = tuple[str, int]  # (topic, partition)


class SourceError(Exception):
    """Kafka refused or could not be reached. ``retriable``: trying again may work."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class CommitFailed(SourceError):
    """The group rebalanced (or evicted this member) before the commit landed.

    The partitions' new owner starts from the last successful commit, so nothing
    is lost; the records since then will be processed again there.
    """


class Source(Protocol):
    def poll(self, max_records: int, timeout_ms: int) -> list: ...
    def commit(self, next_offsets: dict[Partition, int]) -> None: ...
    def committed(self, partitions: list[Partition]) -> dict[Partition, int]: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def assignment(self) -> list[Partition]: ...
    def lag(self) -> dict[Partition, int]: ...
    def close(self) -> None: ...


class Sink(Protocol):
    def send(self, record, reason: str, detail: str) -> None: ...
    def flush(self, timeout_s: float = 30.0) -> None: ...
    def close(self, timeout_s: float = 30.0) -> None: ...


# (on_assigned, on_revoked) -> a source that calls them around rebalances
SourceFactory = Callable[[Callable[[list[Partition]], dict[Partition, int]], Callable[[list[Partition]], None]], Source]
