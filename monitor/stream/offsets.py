"""Which offsets are safe to commit: everything before the oldest record not yet folded.

A record is *done* once it is folded into state or dead-lettered. Records held back
(waiting for their model version) keep their partition's committable offset at their
own offset, so a crash while they wait re-reads them instead of losing them.

>>> tracker = OffsetTracker()
>>> for offset in (10, 11, 12):
...     tracker.seen(("events", 0), offset)
>>> tracker.committable()  # one past the highest offset seen
{('events', 0): 13}
>>> tracker.hold(("events", 0), 13)  # offset 13 waits for its model version
>>> tracker.seen(("events", 0), 14)
>>> tracker.committable()  # a restart must re-read 13
{('events', 0): 13}
>>> tracker.release(("events", 0), 13)
>>> tracker.committable()
{('events', 0): 15}
"""

from __future__ import annotations

from collections import defaultdict

TopicPartition = tuple[str, int]


class OffsetTracker:
    def __init__(self) -> None:
        self._next: dict[TopicPartition, int] = {}  # one past the highest offset seen
        self._held: defaultdict[TopicPartition, set[int]] = defaultdict(set)

    def seen(self, tp: TopicPartition, offset: int) -> None:
        if offset + 1 > self._next.get(tp, -1):
            self._next[tp] = offset + 1

    def hold(self, tp: TopicPartition, offset: int) -> None:
        self.seen(tp, offset)
        self._held[tp].add(offset)

    def release(self, tp: TopicPartition, offset: int) -> None:
        self._held[tp].discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the next offset a restarted consumer must read from."""
        out = {}
        for tp, nxt in self._next.items():
            held = self._held.get(tp)
            out[tp] = min(held) if held else nxt
        return out

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop partitions this member no longer owns (after a rebalance)."""
        for tp in partitions:
            self._next.pop(tp, None)
            self._held.pop(tp, None)

    def restore(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            self._next[tp] = offset
