"""``_finish_join``: a rejoin round of kafka-python 3.0 is awaited in the call that started it,
and a round whose result the client would never read is redone (``monitor.stream.kafka``)."""

from __future__ import annotations

import logging

import pytest

from monitor.stream.kafka import _finish_join


class Coordinator:
    """The parts of kafka-python's ConsumerCoordinator that ``_finish_join`` uses."""

    def __init__(self, rejoin_needed: bool, join_task: object | None, joins: bool = True) -> None:
        self.rejoin_needed, self._join_task, self._joins = rejoin_needed, join_task, joins
        self.waited: list[tuple[bool, int]] = []  # (rejoin needed when called, timeout)

    def need_rejoin(self) -> bool:
        return self.rejoin_needed

    def request_rejoin(self) -> None:
        self.rejoin_needed = True

    def ensure_active_group(self, timeout_ms: int) -> bool:
        self.waited.append((self.rejoin_needed, timeout_ms))
        if self._joins:
            self.rejoin_needed, self._join_task = False, None
        return self._joins


class Consumer:
    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator


def test_a_member_not_rejoining_is_not_held_up() -> None:
    coordinator = Coordinator(rejoin_needed=False, join_task=None)
    _finish_join(Consumer(coordinator), 60_000)
    assert coordinator.waited == []


def test_a_round_the_poll_started_is_awaited_in_one_call() -> None:
    coordinator = Coordinator(rejoin_needed=True, join_task=object())
    _finish_join(Consumer(coordinator), 60_000)
    assert coordinator.waited == [(True, 60_000)]


def test_a_finished_round_no_longer_needed_is_redone_not_left_unread() -> None:
    """The leader's round after a metadata change: computing the assignment made the client
    stop counting the rejoin as needed, so no poll would read the round's result."""
    coordinator = Coordinator(rejoin_needed=False, join_task=object())
    _finish_join(Consumer(coordinator), 60_000)
    assert coordinator.waited == [(True, 60_000)]
    assert coordinator._join_task is None and not coordinator.rejoin_needed


def test_a_join_that_does_not_finish_in_time_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    coordinator = Coordinator(rejoin_needed=True, join_task=object(), joins=False)
    with caplog.at_level(logging.WARNING, logger="monitor.stream.kafka"):
        _finish_join(Consumer(coordinator), 5_000)
    assert "did not finish within 5 s" in caplog.text


def test_a_client_without_a_group_coordinator_is_left_alone() -> None:
    _finish_join(object(), 60_000)  # type: ignore[arg-type]  # no _coordinator: nothing to finish
