"""Which offsets are safe to commit: one past the last record folded into state.

A record is *done* once it is folded into state, dead-lettered, or held in the state's
hold buffer (held events are checkpointed with the state, see ``monitor.stream.intake``),
so every record seen is done by the time the state that includes it is checkpointed.
The agent commits ``committable()`` only after that checkpoint.

>>> tracker = OffsetTracker()
>>> for offset in (10, 11, 12):
...     tracker.seen(("events", 0), offset)
>>> tracker.committable()  # one past the highest offset seen
{('events', 0): 13}
>>> tracker.restore({("events", 1): 500})  # resumed from a checkpoint
>>> tracker.forget([("events", 0)])  # the partition moved to another member
>>> tracker.committable()
{('events', 1): 500}
"""

from __future__ import annotations

TopicPartition = tuple[str, int]


class OffsetTracker:
    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}  # one past the highest offset seen

    def seen(self, tp: TopicPartition, offset: int) -> None:
        if offset + 1 > self._next.get(tp, -1):
            self._next[tp] = offset + 1

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the next offset a restarted consumer must read from."""
        return dict(self._next)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop partitions this member no longer owns (after a rebalance)."""
        for tp in partitions:
            self._next.pop(tp, None)

    def restore(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self._next[tp] = offset
