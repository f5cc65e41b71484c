"""Kafka in and out: the one module that imports the Kafka client (kafka-python 3.x).

Everything else in the agent sees plain values: a ``Record`` is bytes plus where
they came from, a partition is a ``(topic, partition)`` tuple, offsets are ints,
and errors are ``SourceError`` / ``CommitFailed``.

``KafkaSource`` is a consumer-group member with auto-commit off. The agent owns
the offsets: it commits the next offsets of what it has folded into its state
(and checkpointed), nothing more.

Rebalances, and the threads they run on (kafka-python 3 drives the group
protocol on its own IO thread; a listener that blocks there would stall
heartbeats, and one that calls a blocking client API there fails):

* ``on_assigned(partitions) -> {partition: next_offset}`` runs on the caller's
  thread, inside ``poll()``, before any record of those partitions is returned.
  Newly assigned partitions are held paused until it has run, so the offsets it
  returns (from the agent's checkpoint) are where consumption starts;
  partitions it leaves out start at the group's committed offset, else at
  ``auto_offset_reset``.
* ``on_revoked(partitions)`` runs before the group takes partitions away (and in
  ``close()``), on a worker thread while the caller's thread is blocked inside
  ``poll()`` / ``close()``, so the two never run at once. The IO loop keeps
  heartbeating meanwhile, and ``commit()`` works from inside it: this is where
  the agent flushes its micro-batch and commits. It may call ``commit()``; it
  must not call ``poll()``.
* ``on_lost(partitions)`` (optional, defaults to ``on_revoked``) runs instead
  when the member was already evicted (session or poll-interval timeout): a
  commit made there fails with ``CommitFailed``, which the source logs and
  swallows; the new owner re-reads from the last successful commit.

An exception raised by a callback is re-raised by the next ``poll()`` or by
``close()``. The default assignors (range, round-robin) use the eager protocol:
every rebalance revokes all partitions, then assigns.

Record batches the client cannot decode (a codec it lacks, a corrupt or hostile batch)
never stop the agent: ``poll()`` finds the partition whose next batch fails, with a
throw-away probe consumer outside the group, searches for the first offset after it that
decodes, seeks there, and returns one marker ``Record`` whose ``skipped`` says which
offsets were passed over and why. The agent dead-letters it like any bad record, so the
skipped range is counted, reported and committed past (no crash loop).

``pause()`` / ``resume()`` act on every assigned partition (and on partitions
assigned while paused): the agent keeps calling ``poll()``, which returns
nothing but keeps the member within ``max_poll_interval_ms``, while a slow
forward pass runs.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import kafka.errors as kafka_errors
from kafka import (
    AsyncConsumerRebalanceListener,
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.admin import MemberToRemove
from kafka.structs import OffsetAndMetadata

from monitor.settings import KafkaSettings
from monitor.stream.source import CommitFailed, Partition, SourceError

log = logging.getLogger(__name__)


# Group-membership errors: the commit was refused because the partitions moved.
_MEMBERSHIP_ERRORS = (
    kafka_errors.CommitFailedError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.FencedInstanceIdError,
)


# Errors of reaching the cluster, not of the data: poll() reports these as SourceError.
_CONNECTION_ERRORS = (
    kafka_errors.RetriableError,  # connections, timeouts, leaders moving
    kafka_errors.IllegalStateError,
    kafka_errors.AuthorizationError,
    kafka_errors.OffsetOutOfRangeError,
    *_MEMBERSHIP_ERRORS,
)


# The longest one call waits for a rebalance to finish (``_finish_join``): the broker answers a
# JoinGroup within the group's rebalance timeout (max.poll.interval.ms), usually in seconds;
# capped well inside the main loop's stall limit (``intervals.stall_s``).
JOIN_WAIT_MS = 60_000


def _join_wait_ms(settings: KafkaSettings) -> int:
    """How long ``_finish_join`` waits: the group's rebalance timeout plus a margin, capped."""
    return min(JOIN_WAIT_MS, settings.max_poll_interval_ms + 5_000)


def _finish_join(consumer: KafkaConsumer, wait_ms: int) -> None:
    """If the member is rejoining its group, wait for the join to finish, in one call.

    kafka-python 3.0 (3.0.12; its main branch too) runs a JoinGroup/SyncGroup round as a
    task that ``poll()`` awaits only until its own timeout, and reads the round's result
    (the assignment) at a later poll. Two ways that result is lost (docs/architecture.md,
    "Kafka client (rejoins)"):

    - a poll that finds the round finished starts a new one before reading it: a member
      polled with short timeouts and busy in between never holds an assignment, and as the
      group's leader restarts the group's rebalance over and over;
    - a leader's round started because the topics' metadata changed stops being "needed"
      once the leader has computed the assignment, so no later poll reads it: the member
      keeps its old assignment (often none) for good, heartbeats stay off, and the broker
      drops it while it believes it is a member.

    So a round in flight, or finished and unread, is awaited here, right after the poll that
    started it; a round whose result would no longer be read is redone (one extra rebalance).
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None:
        return
    stranded = getattr(coordinator, "_join_task", None) is not None
    if not (stranded or coordinator.need_rejoin()):
        return
    if not coordinator.need_rejoin():
        coordinator.request_rejoin()
    started = time.monotonic()
    if not coordinator.ensure_active_group(timeout_ms=wait_ms):
        log.warning("rejoining the group did not finish within %.0f s; polling on", wait_ms / 1000)
    elif time.monotonic() - started > 1.0:
        log.info("rejoined the group in %.1f s", time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class Skipped:
    """Offsets ``first_offset`` .. the marker record's ``offset`` could not be decoded."""

    first_offset: int
    error: str  # what the client raised, for the dead letter's detail

    def count(self, last_offset: int) -> int:
        return last_offset - self.first_offset + 1


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as the agent sees it. A null value (tombstone) reads as b"".

    A record with ``skipped`` set is a marker, not a record from the log: its ``offset`` is
    the last of a range that could not be decoded (see ``Skipped``), its value is empty.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int  # the record's timestamp (create or log-append time); -1 if none
    headers: tuple[tuple[str, bytes], ...] = ()
    skipped: Skipped | None = None


def _client_config(settings: KafkaSettings) -> dict[str, Any]:
    """The connection and security part of every client's configuration."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_list,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "bootstrap_timeout_ms": settings.connect_timeout_ms,
    }
    if settings.security_protocol.startswith("SASL_"):
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = settings.sasl_password
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(settings, name) is not None:
            config[name] = getattr(settings, name)
    return config


def _source_error(what: str, error: Exception) -> SourceError:
    if isinstance(error, _MEMBERSHIP_ERRORS):
        return CommitFailed(f"{what}: {error}")
    return SourceError(f"{what}: {error}", retriable=bool(getattr(error, "retriable", False)))


def _tp(partition: Partition) -> TopicPartition:
    return TopicPartition(partition[0], partition[1])


def _sorted(partitions: Iterable[TopicPartition]) -> list[Partition]:
    return sorted((tp.topic, tp.partition) for tp in partitions)


class KafkaSource:
    """A member of the agent's consumer group on ``settings.topic``; offsets committed by hand."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        on_assigned: Callable[[list[Partition]], dict[Partition, int]],
        on_revoked: Callable[[list[Partition]], None],
        on_lost: Callable[[list[Partition]], None] | None = None,
        end_offsets_ttl_s: float = 1.0,
    ) -> None:
        self._settings = settings
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost or on_revoked
        self._end_offsets_ttl_s = end_offsets_ttl_s
        self._join_wait_ms = _join_wait_ms(settings)
        self._end_offsets: dict[TopicPartition, int] = {}
        self._end_offsets_at = float("-inf")
        self._paused = False
        self._closed = False
        # Shared with the IO thread's listener.
        self._lock = threading.Lock()
        self._pending: set[TopicPartition] = set()  # assigned, on_assigned not yet run
        self._delivered: set[TopicPartition] = set()  # on_assigned has run for these
        self._callback_error: BaseException | None = None
        self._batch_probe: _BatchProbe | None = None  # created on the first undecodable batch
        try:
            self._consumer = KafkaConsumer(
                **_client_config(settings),
                group_id=settings.group_id,
                enable_auto_commit=False,
                auto_offset_reset=settings.auto_offset_reset,
                max_poll_records=settings.max_poll_records,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
                max_poll_interval_ms=settings.max_poll_interval_ms,
                metadata_max_age_ms=settings.metadata_max_age_ms,
                group_instance_id=settings.group_instance_id,
            )
        except kafka_errors.KafkaError as error:
            raise _source_error(f"cannot join Kafka at {settings.bootstrap_servers}", error) from error
        self._consumer.subscribe([settings.topic], listener=_Listener(self))

    # -- consuming ---------------------------------------------------------

    def poll(self, max_records: int, timeout_ms: int) -> list[Record]:
        """Up to ``max_records`` records, waiting at most about ``timeout_ms`` for the first.

        Records come grouped by partition, in offset order within each. Also
        runs heartbeats and rebalances (and so ``on_assigned`` / ``on_revoked``).
        """
        if self._closed:
            raise SourceError("poll() on a closed KafkaSource")
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
            if not batches:  # a poll that starts a rebalance returns nothing; one with records did not
                _finish_join(self._consumer, self._join_wait_ms)
        except _CONNECTION_ERRORS as error:
            self._raise_callback_error()
            raise _source_error("poll failed", error) from error
        except Exception as error:  # noqa: BLE001 -- parsing fetched data: codecs raise their own types
            self._raise_callback_error()
            return self._skip_undecodable(error)
        self._raise_callback_error()
        records: list[Record] = []
        early: dict[TopicPartition, int] = {}  # records of undelivered partitions (not expected)
        with self._lock:
            pending = set(self._pending)
        for tp, batch in batches.items():
            if tp in pending:
                early[tp] = batch[0].offset
                continue
            for r in batch:
                records.append(
                    Record(
                        topic=r.topic,
                        partition=r.partition,
                        offset=r.offset,
                        key=r.key,
                        value=b"" if r.value is None else r.value,
                        timestamp_ms=r.timestamp if r.timestamp is not None else -1,
                        headers=tuple(r.headers) if r.headers else (),
                    )
                )
        if pending:
            self._deliver_assignment(early)
        return records

    def _skip_undecodable(self, error: Exception) -> list[Record]:
        """``poll()`` raised while parsing fetched data: seek every partition whose next
        batch does not decode past that batch, and return a marker record for each.

        Raises ``SourceError`` if no partition's next batch fails on its own (then the error
        was not about the data).
        """
        log.warning("poll could not decode fetched data (%s: %s); looking for the batch", type(error).__name__, error)
        with self._lock:
            delivered = sorted(self._delivered & set(self._consumer.assignment() or ()))
        try:
            ends = self._consumer.end_offsets(delivered, timeout_ms=10_000) if delivered else {}
        except kafka_errors.KafkaError as lookup_error:
            raise _source_error("poll failed, and end offsets are unavailable", lookup_error) from error
        markers: list[Record] = []
        probe = self._probe()
        for tp in delivered:
            position = self._consumer.position(tp, timeout_ms=5_000)
            end = ends.get(tp)
            if position is None or end is None or position >= end:
                continue
            failure = probe.failure_at(tp, position)
            if failure is None:
                continue
            resume_at = probe.first_decodable_after(tp, position, end)
            self._consumer.seek(tp, resume_at)
            detail = f"{type(failure).__name__}: {failure}"[:500]
            log.error("skipping offsets %d..%d of %s[%d]: the batch cannot be decoded (%s)",
                      position, resume_at - 1, tp.topic, tp.partition, detail)
            markers.append(Record(tp.topic, tp.partition, resume_at - 1, None, b"", -1,
                                  skipped=Skipped(position, detail)))
        if not markers:
            raise SourceError(f"poll failed: {type(error).__name__}: {error}") from error
        return markers

    def _probe(self) -> _BatchProbe:
        if self._batch_probe is None:
            self._batch_probe = _BatchProbe(self._settings)
        return self._batch_probe

    def _deliver_assignment(self, early: dict[TopicPartition, int]) -> None:
        """Runs ``on_assigned`` for newly assigned partitions, seeks, and un-holds them."""
        with self._lock:
            pending = sorted(self._pending)
        if not pending:
            return
        seeks = self._on_assigned(_sorted(pending))
        pending_set = set(pending)
        for partition, offset in seeks.items():
            tp = _tp(partition)
            if tp not in pending_set:
                raise ValueError(f"on_assigned returned an offset for {partition}, which it was not given")
            if not isinstance(offset, int) or offset < 0:
                raise ValueError(f"on_assigned returned offset {offset!r} for {partition}")
            self._consumer.seek(tp, offset)
        for tp, first_offset in early.items():
            if (tp.topic, tp.partition) not in seeks:
                self._consumer.seek(tp, first_offset)  # hand them out again, after on_assigned
        with self._lock:
            # A rebalance that revoked some of them meanwhile has removed them from _pending.
            ready = [tp for tp in pending if tp in self._pending]
            self._pending.difference_update(ready)
            self._delivered.update(ready)
        if ready and not self._paused:
            self._consumer.resume(*ready)
        if seeks:
            log.info("resuming %s from the agent's offsets %s", _sorted(ready), seeks)

    def committed(self, partitions: list[Partition]) -> dict[Partition, int]:
        """The group's committed offsets of these partitions (those that have one).

        Blocks on the group coordinator: call it on the caller's thread, e.g. from
        ``on_assigned``, not from ``on_revoked``.
        """
        out: dict[Partition, int] = {}
        for partition in partitions:
            try:
                offset = self._consumer.committed(_tp(partition), timeout_ms=10_000)
            except kafka_errors.KafkaError as error:
                raise _source_error(f"committed offset of {partition} unavailable", error) from error
            if offset is not None:
                out[partition] = int(offset)
        return out

    def commit(self, next_offsets: dict[Partition, int]) -> None:
        """Commits exactly these offsets (the next offset to read, per partition), synchronously.

        Raises ``CommitFailed`` if the partitions moved to another member first.
        """
        if not next_offsets:
            return
        assigned = self._consumer.assignment() or set()
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition, offset in next_offsets.items():
            tp = _tp(partition)
            if tp not in assigned:
                raise CommitFailed(f"cannot commit {partition}: not assigned to this member")
            if not isinstance(offset, int) or offset < 0:
                raise ValueError(f"commit offset for {partition} must be an int >= 0, got {offset!r}")
            offsets[tp] = OffsetAndMetadata(offset, "", -1)
        try:
            self._consumer.commit(offsets)
        except kafka_errors.KafkaError as error:
            raise _source_error(f"commit of {next_offsets} failed", error) from error

    # -- flow control and introspection -----------------------------------------

    def pause(self) -> None:
        """Stop fetching from every assigned partition; ``poll()`` returns nothing until ``resume()``."""
        self._paused = True
        self._consumer.pause(*(self._consumer.assignment() or ()))

    def resume(self) -> None:
        """Fetch again (partitions still waiting for ``on_assigned`` stay held)."""
        self._paused = False
        with self._lock:
            held = set(self._pending)
        self._consumer.resume(*(tp for tp in (self._consumer.assignment() or ()) if tp not in held))

    @property
    def paused(self) -> bool:
        return self._paused

    def assignment(self) -> list[Partition]:
        """The partitions this member owns now, sorted."""
        return _sorted(self._consumer.assignment() or ())

    def lag(self) -> dict[Partition, int]:
        """Records not yet returned by ``poll()``, per assigned partition with a known position.

        End offsets are cached for ``end_offsets_ttl_s`` (1 s) so this is cheap to call often.
        """
        assigned = sorted(self._consumer.assignment() or ())
        if not assigned:
            return {}
        now = time.monotonic()
        if now - self._end_offsets_at > self._end_offsets_ttl_s or not set(assigned) <= set(self._end_offsets):
            try:
                self._end_offsets = dict(self._consumer.end_offsets(assigned, timeout_ms=5_000))
                self._end_offsets_at = now
            except kafka_errors.KafkaError as error:
                log.warning("end offsets unavailable, lag from stale values: %s", error)
        lag: dict[Partition, int] = {}
        for tp in assigned:
            end = self._end_offsets.get(tp)
            if end is None:
                continue
            try:
                position = self._consumer.position(tp, timeout_ms=1_000)
            except kafka_errors.KafkaError:  # IllegalStateError: revoked meanwhile
                continue
            if position is not None:
                lag[(tp.topic, tp.partition)] = max(0, end - position)
        return lag

    def close(self) -> None:
        """Leaves the group (running ``on_revoked`` for owned partitions first). Idempotent.

        A static member (``group_instance_id``) is removed from the group explicitly when
        ``leave_group_on_shutdown`` is set: kafka-python, like the Java client, sends no
        LeaveGroup for one, so its partitions would wait for the session timeout.
        """
        if self._closed:
            return
        self._closed = True
        if self._batch_probe is not None:
            self._batch_probe.close()
        try:
            self._consumer.close(autocommit=False)
        except kafka_errors.KafkaError as error:
            log.warning("closing the consumer: %s", error)
        if self._settings.group_instance_id is not None and self._settings.leave_group_on_shutdown:
            self._leave_as_static_member()
        self._raise_callback_error()

    def _leave_as_static_member(self) -> None:
        instance = self._settings.group_instance_id
        try:
            admin = _admin(self._settings)
        except SourceError as error:
            log.warning("could not leave group %s as %s: %s", self._settings.group_id, instance, error)
            return
        try:
            outcome = admin.remove_group_members(self._settings.group_id, [MemberToRemove(group_instance_id=instance)])
            log.info("left group %s as static member %s: %s", self._settings.group_id, instance,
                     {k: v.__name__ for k, v in outcome.items()})
        except kafka_errors.KafkaError as error:  # the session timeout removes it anyway
            log.warning("could not leave group %s as %s: %s", self._settings.group_id, instance, error)
        finally:
            admin.close()

    def __enter__(self) -> KafkaSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rebalance plumbing (called from the listener on kafka-python's IO thread) --

    def _raise_callback_error(self) -> None:
        with self._lock:
            error, self._callback_error = self._callback_error, None
        if error is not None:
            raise error

    def _record_callback_error(self, error: BaseException) -> None:
        log.error("rebalance callback failed: %r", error)
        with self._lock:
            if self._callback_error is None:
                self._callback_error = error

    def _hold_assigned(self, assigned: set[TopicPartition]) -> None:
        """IO thread: new partitions wait, paused, until ``poll()`` has run ``on_assigned``."""
        if assigned:
            self._consumer.pause(*assigned)
        with self._lock:
            self._pending.update(assigned)

    def _take_revoked(self, revoked: set[TopicPartition]) -> list[Partition]:
        """IO thread: forget the partitions; returns those the agent had been told about."""
        with self._lock:
            self._pending.difference_update(revoked)
            told = revoked & self._delivered
            self._delivered.difference_update(revoked)
        return _sorted(told)

    def _lost(self, partitions: list[Partition]) -> None:
        """``on_lost``; a commit refused inside it is the expected outcome, not an error."""
        try:
            self._on_lost(partitions)
        except CommitFailed as error:
            log.warning("partitions %s were lost (member evicted); their commit was refused: %s", partitions, error)

    async def _call_off_loop(self, callback: Callable[[list[Partition]], None], partitions: list[Partition]) -> None:
        """Runs a blocking callback on a worker thread while the IO loop keeps going.

        The loop has to stay free: heartbeats run on it, and so does the commit
        that the callback makes. kafka-python awaits our coroutine, so yielding
        to its loop with its own sleep is how we wait.
        """
        done = threading.Event()

        def run() -> None:
            try:
                callback(partitions)
            except BaseException as error:  # noqa: BLE001 -- re-raised by poll()/close()
                self._record_callback_error(error)
            finally:
                done.set()

        sleep = getattr(getattr(self._consumer, "_net", None), "sleep", None)
        if sleep is None:  # a kafka-python without the IO loop we know: run inline
            run()
            return
        threading.Thread(target=run, name="attnmon-rebalance", daemon=True).start()
        while not done.is_set():
            await sleep(0.005)


class _BatchProbe:
    """A consumer outside the group that tells whether fetching from an offset decodes.

    Kafka returns a whole record batch for any offset inside it, so a fetch from an
    offset in an undecodable batch fails, and one from the offset after the batch's last
    succeeds: the first offset that decodes is where consumption can resume.
    """

    def __init__(self, settings: KafkaSettings, *, wait_s: float = 5.0) -> None:
        self._wait_s = wait_s
        try:
            self._consumer = KafkaConsumer(**_client_config(settings), group_id=None, enable_auto_commit=False,
                                           fetch_max_wait_ms=100, max_poll_records=1)
        except kafka_errors.KafkaError as error:
            raise _source_error(f"cannot reach Kafka at {settings.bootstrap_servers}", error) from error

    def failure_at(self, tp: TopicPartition, offset: int) -> Exception | None:
        """What fetching from ``offset`` raises, or None if it decodes (or has nothing yet)."""
        self._consumer.assign([tp])
        self._consumer.seek(tp, offset)
        deadline = time.monotonic() + self._wait_s
        while time.monotonic() < deadline:
            try:
                if self._consumer.poll(timeout_ms=200, max_records=1):
                    return None
            except _CONNECTION_ERRORS as error:
                raise _source_error("probing an undecodable batch failed", error) from error
            except Exception as error:  # noqa: BLE001 -- the decoding failure we are looking for
                return error
        return None

    def first_decodable_after(self, tp: TopicPartition, failing: int, end: int) -> int:
        """The smallest offset in (failing, end] from which fetching decodes: the offset
        after the undecodable batch. Doubling steps, then bisection: O(log batch size) fetches."""
        low, step = failing, 1  # low always fails
        while True:
            candidate = min(failing + step, end)
            if candidate >= end or self.failure_at(tp, candidate) is None:
                high = candidate
                break
            low, step = candidate, step * 2
        while high - low > 1:
            middle = (low + high) // 2
            if self.failure_at(tp, middle) is None:
                high = middle
            else:
                low = middle
        return high

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except kafka_errors.KafkaError as error:
            log.warning("closing the batch probe: %s", error)


class _Listener(AsyncConsumerRebalanceListener):
    """kafka-python's rebalance hooks, forwarded to the ``KafkaSource`` (see the module docstring)."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source._hold_assigned(set(assigned))

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        told = self._source._take_revoked(set(revoked))
        if told:
            await self._source._call_off_loop(self._source._on_revoked, told)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        told = self._source._take_revoked(set(lost))
        if told:
            await self._source._call_off_loop(self._source._lost, told)


class _Producer:
    """A KafkaProducer (acks=all, idempotent) whose send errors surface at ``flush()``."""

    def __init__(self, settings: KafkaSettings, *, linger_ms: int, compression_type: str | None = None,
                 max_request_size: int = 1024 * 1024) -> None:
        self._error: BaseException | None = None
        self._failed = 0
        self._lock = threading.Lock()
        try:
            self._producer = KafkaProducer(
                **_client_config(settings),
                acks="all",
                enable_idempotence=True,
                linger_ms=linger_ms,
                compression_type=compression_type,
                max_request_size=max_request_size,
            )
        except kafka_errors.KafkaError as error:
            raise _source_error(f"cannot reach Kafka at {settings.bootstrap_servers}", error) from error

    def _send(self, topic: str, **kwargs: Any) -> None:
        try:
            future = self._producer.send(topic, **kwargs)
        except kafka_errors.KafkaError as error:
            raise _source_error(f"send to {topic} failed", error) from error
        future.add_errback(self._on_error)

    def _on_error(self, error: BaseException) -> None:  # producer's sender thread
        with self._lock:
            self._failed += 1
            if self._error is None:
                self._error = error

    def flush(self, timeout_s: float = 30.0) -> None:
        """Waits until everything sent has been acknowledged; raises if anything failed."""
        try:
            self._producer.flush(timeout=timeout_s)
        except kafka_errors.KafkaError as error:
            raise _source_error("flush failed", error) from error
        with self._lock:
            error, failed = self._error, self._failed
            self._error, self._failed = None, 0
        if error is not None:
            raise SourceError(f"{failed} record(s) were not written: {error}") from error

    def close(self, timeout_s: float = 30.0) -> None:
        self._producer.close(timeout=timeout_s)


class DeadLetterSink(_Producer):
    """Writes records the agent cannot use to ``settings.dead_letter_topic``, with the reason.

    Value: JSON ``{"reason", "detail", "topic", "partition", "offset",
    "original_b64", "original_size"}``; headers ``reason``, ``source_topic``,
    ``source_partition``, ``source_offset``; key: the original key. Originals
    over ``max_original_bytes`` are cut (``original_size`` keeps the real size).
    ``flush()`` before committing the offsets of dead-lettered records.
    """

    MAX_DETAIL_CHARS = 2_000

    def __init__(self, settings: KafkaSettings, *, max_original_bytes: int = 256 * 1024) -> None:
        super().__init__(settings, linger_ms=5)
        self._topic = settings.dead_letter_topic
        self._max_original_bytes = max_original_bytes

    def send(self, record: Record, reason: str, detail: str) -> None:
        original = record.value[: self._max_original_bytes]
        payload = {
            "reason": reason,
            "detail": detail[: self.MAX_DETAIL_CHARS],
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "original_b64": base64.b64encode(original).decode("ascii"),
            "original_size": len(record.value),
        }
        headers = [
            ("reason", reason.encode()),
            ("source_topic", record.topic.encode()),
            ("source_partition", str(record.partition).encode()),
            ("source_offset", str(record.offset).encode()),
        ]
        self._send(
            self._topic,
            value=json.dumps(payload, separators=(",", ":")).encode(),
            key=record.key,
            headers=headers,
        )


class EventProducer(_Producer):
    """Writes prediction events (raw bytes) to a topic; ``attnmon replay`` and tests use it."""

    def __init__(self, settings: KafkaSettings, *, topic: str | None = None, linger_ms: int = 20,
                 compression_type: str | None = None) -> None:
        """``compression_type``: None, "gzip", "snappy", "lz4" or "zstd" (batches as a producer sends them)."""
        super().__init__(settings, linger_ms=linger_ms, compression_type=compression_type)
        self._topic = topic or settings.topic

    def send(
        self,
        value: bytes,
        key: bytes | None = None,
        timestamp_ms: int | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queues one record; ``partition`` None lets the key pick it. Errors surface at ``flush()``."""
        self._send(self._topic, value=value, key=key, timestamp_ms=timestamp_ms, partition=partition,
                   headers=headers)


# -- scale-out: partials, judge election, judge state (docs/architecture.md, "Scale-out") ------

MAX_TABLE_RECORD = 64 * 1024 * 1024  # a judge state holds every baseline: far above Kafka's 1 MiB default


class CompactedTable:
    """A one-partition compacted topic used as a table: ``put(key, value)`` (None deletes),
    ``read()`` the records from an offset to the end, in order. The partials and their
    progress records, and the judge's state, live in such topics: a key written again
    replaces its value once the log is compacted, and a reader keeps the last value per key
    meanwhile. One partition, so a partial always precedes the progress record after it."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self._settings = settings
        self.topic = topic
        self._tp = TopicPartition(topic, 0)
        self._producer = _Producer(settings, linger_ms=5, compression_type="gzip",
                                   max_request_size=MAX_TABLE_RECORD)
        try:
            self._reader = KafkaConsumer(**_client_config(settings), group_id=None, enable_auto_commit=False,
                                         max_partition_fetch_bytes=MAX_TABLE_RECORD, fetch_max_bytes=MAX_TABLE_RECORD)
        except kafka_errors.KafkaError as error:
            raise _source_error(f"cannot reach Kafka at {settings.bootstrap_servers}", error) from error
        self._reader.assign([self._tp])

    def put(self, key: str, value: bytes | None) -> None:
        self._producer._send(self.topic, key=key.encode(), value=value, partition=0)

    def flush(self, timeout_s: float = 30.0) -> None:
        self._producer.flush(timeout_s)

    def end(self) -> int:
        return int(self._reader.end_offsets([self._tp])[self._tp])

    def read(self, start: int = 0, timeout_s: float = 30.0) -> tuple[list[tuple[str, bytes | None]], int]:
        """Records ``[start, end)`` as (key, value), and ``end``: the next offset to read from."""
        end = self.end()
        out: list[tuple[str, bytes | None]] = []
        if start >= end:
            return out, max(start, end)
        self._reader.seek(self._tp, start)
        deadline = time.monotonic() + timeout_s
        position = start
        while position < end:
            if time.monotonic() > deadline:
                raise SourceError(f"reading {self.topic} [{start}, {end}) timed out at {position}")
            for records in self._reader.poll(timeout_ms=500).values():
                for r in records:
                    if r.offset < end and r.key is not None:
                        out.append((r.key.decode(), r.value))
            position = self._reader.position(self._tp)
        return out, end

    def close(self) -> None:
        self._producer.close(10.0)
        self._reader.close()


class JudgeElection:
    """Who judges: the member of ``group_id`` assigned partition 0 of the one-partition
    ``topic`` (the Faust pattern). Failover is an ordinary rebalance: when the judge's
    session times out (kill -9) or it leaves, another member is assigned the partition.

    The membership is kept on a thread of its own, which polls the group and waits out its
    rebalances (``_finish_join``), so that neither the events' loop nor this group's joins
    wait on the other (on one thread, a replica in one group's join could not answer the
    other group's). ``poll()`` reads whether this member judges now, and is how the agent
    says it is alive: when it has not asked for ``max_poll_interval_ms``, the thread stops
    polling and the client leaves the group, so a stuck agent does not stay the judge.
    Two members may both believe they judge for the length of one rebalance: everything
    the judge writes is keyed (its state) or idempotent."""

    POLL_MS = 500

    def __init__(self, settings: KafkaSettings, topic: str, group_id: str) -> None:
        self.changes = 0
        self._leader = threading.Event()
        self._stop = threading.Event()
        self._join_wait_ms = _join_wait_ms(settings)
        self._max_silence_s = settings.max_poll_interval_ms / 1000
        self._asked = time.monotonic()  # when the agent last called poll()
        try:
            self._consumer = KafkaConsumer(
                **_client_config(settings), group_id=group_id, enable_auto_commit=False,
                session_timeout_ms=settings.session_timeout_ms, heartbeat_interval_ms=settings.heartbeat_interval_ms,
                max_poll_interval_ms=settings.max_poll_interval_ms)
        except kafka_errors.KafkaError as error:
            raise _source_error(f"cannot join Kafka at {settings.bootstrap_servers}", error) from error
        self._consumer.subscribe([topic], listener=_ElectionListener(self))
        self._thread = threading.Thread(target=self._keep_membership, name="attnmon-judge-election", daemon=True)
        self._thread.start()

    @property
    def leader(self) -> bool:
        return self._leader.is_set()

    def _set(self, leader: bool) -> None:
        """From the membership thread (the listener), or ``close()`` once it has stopped."""
        if leader != self.leader:
            if leader:
                self._leader.set()
            else:
                self._leader.clear()
            self.changes += 1
            log.info("judge election: this member %s", "judges" if leader else "does not judge")

    def _keep_membership(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._asked > self._max_silence_s:
                # The agent is stuck: unpolled, the client leaves the group and another member
                # judges. Should the agent come back, its next poll here tells it (a rebalance).
                self._stop.wait(self.POLL_MS / 1000)
                continue
            try:
                self._consumer.poll(timeout_ms=self.POLL_MS)
                _finish_join(self._consumer, self._join_wait_ms)
            except _CONNECTION_ERRORS as error:
                # Still a member until the session times out; if it does, the group's next
                # rebalance tells this member (on_partitions_lost) and another one judges.
                log.warning("judge election: %s", error)
                self._stop.wait(1.0)
            except Exception:  # noqa: BLE001 -- the thread must outlive any one poll
                log.exception("judge election: polling the group failed; retrying")
                self._stop.wait(1.0)

    def poll(self, timeout_ms: int = 0) -> bool:
        """Whether this member judges now (``timeout_ms`` is unused: the thread polls)."""
        self._asked = time.monotonic()
        return self.leader

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.POLL_MS / 1000 + self._join_wait_ms / 1000 + 5)
        self._set(False)
        self._consumer.close()


class _ElectionListener(ConsumerRebalanceListener):
    def __init__(self, election: JudgeElection) -> None:
        self._election = election

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._election._set(any(tp.partition == 0 for tp in assigned))

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._election._set(False)

    def on_partitions_lost(self, lost: Any) -> None:
        self._election._set(False)


def ensure_compacted_topic(settings: KafkaSettings, topic: str) -> None:
    """A one-partition compacted topic whose records may hold a judge's state."""
    admin = _admin(settings)
    try:
        try:
            # Segments roll every 10 minutes, so deleted partials (tombstones) and replaced states
            # are compacted away within about that, not when a 1 GiB segment fills.
            admin.create_topics({topic: {"num_partitions": 1, "configs": {
                "cleanup.policy": "compact", "max.message.bytes": str(MAX_TABLE_RECORD),
                "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1"}}}, timeout_ms=10_000)
        except kafka_errors.TopicAlreadyExistsError:
            pass
        admin.wait_for_topics([topic], timeout_ms=15_000)
    except kafka_errors.KafkaError as error:
        raise _source_error(f"cannot create topic {topic}", error) from error
    finally:
        admin.close()


def partition_count(settings: KafkaSettings, topic: str) -> int:
    """How many partitions ``topic`` has (the judge waits for every one's watermark)."""
    admin = _admin(settings)
    try:
        described = [d for d in admin.describe_topics([topic]) if d.get("name") == topic]
        return len(described[0]["partitions"]) if described else 0
    except kafka_errors.KafkaError as error:
        raise _source_error(f"cannot describe topic {topic}", error) from error
    finally:
        admin.close()


def scale_parts(settings: KafkaSettings, scale: Any) -> Any:
    """What a replica (``monitor.stream.replica``) needs from Kafka: the partials and state
    tables (created compacted if missing), the judge election, and the events topic's
    partition count. ``scale`` is the ``scale`` settings section."""
    from monitor.stream.replica import ScaleParts  # replica imports agent (torch): only in replica mode

    ensure_compacted_topic(settings, scale.partials_topic)
    ensure_compacted_topic(settings, scale.state_topic)
    ensure_topic(settings, scale.control_topic, 1)
    partitions = partition_count(settings, settings.topic)
    if partitions < 1:
        raise SourceError(f"topic {settings.topic} does not exist: a replica needs its partition count")
    partials = CompactedTable(settings, scale.partials_topic)
    state = CompactedTable(settings, scale.state_topic)
    election = JudgeElection(settings, scale.control_topic, scale.judge_group_id)

    def close() -> None:
        election.close()
        partials.close()
        state.close()

    return ScaleParts(partials=partials, state=state, election=election, partitions=partitions, close=close)


# -- administration (tests, replay) --------------------------------------------------


def _admin(settings: KafkaSettings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**_client_config(settings), request_timeout_ms=10_000)
    except kafka_errors.KafkaError as error:
        raise _source_error(f"cannot reach Kafka at {settings.bootstrap_servers}", error) from error


def ensure_topic(settings: KafkaSettings, topic: str, partitions: int) -> None:
    """Creates the topic with ``partitions`` partitions (the broker's default
    replication factor) and waits until every partition has a leader.

    An existing topic with at least that many partitions is left alone; one with
    fewer is an error (adding partitions would move keys between them).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    admin = _admin(settings)
    try:
        try:
            admin.create_topics({topic: {"num_partitions": partitions}}, timeout_ms=10_000)
        except kafka_errors.TopicAlreadyExistsError:
            pass
        admin.wait_for_topics([topic], timeout_ms=15_000)
        existing = [d for d in admin.describe_topics([topic]) if d.get("name") == topic]
        have = len(existing[0]["partitions"]) if existing else 0
        if have < partitions:
            raise SourceError(f"topic {topic} exists with {have} partition(s), fewer than {partitions}")
    except kafka_errors.KafkaError as error:
        raise _source_error(f"cannot create topic {topic}", error) from error
    finally:
        admin.close()


def delete_topic(settings: KafkaSettings, topic: str) -> None:
    """Deletes the topic; a topic that does not exist is fine."""
    admin = _admin(settings)
    try:
        admin.delete_topics([topic], timeout_ms=10_000)
    except kafka_errors.UnknownTopicOrPartitionError:
        pass
    except kafka_errors.KafkaError as error:
        raise _source_error(f"cannot delete topic {topic}", error) from error
    finally:
        admin.close()
