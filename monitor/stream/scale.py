"""Scale-out roles over compacted tables: a replica publishes partials, the elected judge
merges and judges them (docs/architecture.md, "Scale-out").

Kafka-free: a *table* is anything with ``put(key, value)``, ``flush()`` and
``read(start) -> (records, next)`` (``monitor.stream.kafka.CompactedTable`` on the broker),
an *election* anything with ``poll() -> bool`` (``JudgeElection``). Keys:

- ``partial/<partition>/<window>``: a sealed partial (``monitor.drift.partial``);
- ``progress/<partition>``: ``{"sealed", "next", "idle", "versions"}``, written after the
  partial it follows: the partition's watermark, the offset a new owner resumes from, and the
  partition's model versions in log order through there (what its events are paired with);
- ``judge`` (state table): the Judge, its Rounds, its paired comparison and its exported rows
  (the latest row of every series), written after every round.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from monitor.drift.judge import Judge, JudgeConfig, JudgeReport, StateFormatError
from monitor.drift.paired import PairedComparison, PairedConfig, PairedReport
from monitor.drift.partial import Partial
from monitor.drift.rounds import Rounds
from monitor.export.drift_rows import DriftRows
from monitor.export.item_rows import ItemRows, Titles

log = logging.getLogger(__name__)


class Table(Protocol):
    def put(self, key: str, value: bytes | None) -> None: ...
    def flush(self, timeout_s: float = 30.0) -> None: ...
    def read(self, start: int = 0, timeout_s: float = 30.0) -> tuple[list[tuple[str, bytes | None]], int]: ...


class Election(Protocol):
    def poll(self, timeout_ms: int = 100) -> bool: ...


def publish(table: Table, partials: list[Partial], partition: int, sealed: int, next_offset: int,
            idle: bool = False, versions: list[str] | None = None) -> None:
    """A replica's sealed partials of one partition, then its progress record (``versions``: the
    partition's version history through ``next_offset``; default: the last partial's)."""
    for partial in partials:
        table.put(partial.key, partial.to_bytes())
    if versions is None:
        versions = partials[-1].versions if partials else []
    record = {"sealed": sealed, "next": next_offset, "idle": idle, "versions": versions}
    table.put(f"progress/{partition}", json.dumps(record).encode())
    table.flush()


def progress(table: Table) -> dict[int, dict[str, Any]]:
    """Every partition's last progress record: where its next owner resumes."""
    records, _ = table.read(0)
    out: dict[int, dict[str, Any]] = {}
    for key, value in records:
        if key.startswith("progress/") and value is not None:
            out[int(key.split("/")[1])] = json.loads(value)
    return out


class JudgeRole:
    """Judges while elected: restores the last state, reads the partials table from its start
    (compacted: the last value of each key; replays of folded windows are ignored), judges
    closed windows and writes its state after each step that judged."""

    def __init__(self, election: Election, partials: Table, state: Table, partitions: int, width_s: float,
                 config: JudgeConfig, keep: int | None = None, paired_config: PairedConfig | None = None,
                 items_exported: int = 5, titles: Titles = lambda version, item: None,
                 retire_after_s: float | None = None) -> None:
        self._election, self._partials, self._state = election, partials, state
        self._retire_after_s = retire_after_s  # versions absent that long in event time retire (Rounds)
        self.retired: list[str] = []  # versions retired by the last step's rounds (the caller counts them)
        self._partitions, self._width_s, self._config = partitions, width_s, config
        self._paired_config = paired_config or PairedConfig()
        self._items_exported = items_exported
        self._titles = titles  # an item's catalogue title (the replica's loaded versions), for the item rows
        # What the judge exports: the latest row of every series, kept in its state, since a
        # series keeps its last row until a round judges it again (a judge that took over and
        # started empty would export only the series its own rounds judged).
        self.drift_rows = DriftRows()
        self.item_rows = ItemRows(items_exported)
        self.judge: Judge | None = None
        self.rounds: Rounds | None = None
        self.paired: PairedComparison | None = None
        self._position = 0
        self._keep = keep
        self._live: dict[str, tuple[int, int]] = {}  # partial keys read with a value -> (partition, window)
        self._saved: dict[int, int] = {}  # partition -> last window folded in the saved state
        self.tombstoned = 0
        self.reports: list[JudgeReport] = []  # this term's rounds, the last ``keep`` (None: all)
        self.paired_reports: list[PairedReport] = []  # their paired comparisons, alike

    @property
    def judging(self) -> bool:
        return self.judge is not None

    def step(self, timeout_ms: int = 100) -> list[tuple[JudgeReport, PairedReport]]:
        """One turn: keep the membership, and judge what closed if elected; each round's reports."""
        self.retired = []  # a step that judges nothing retires nothing
        if not self._election.poll(timeout_ms):
            if self.judge is not None:
                log.warning("no longer the judge: dropping the judge's state (the next judge resumes it)")
            self.judge = self.rounds = self.paired = None
            self.drift_rows, self.item_rows = DriftRows(), ItemRows(self._items_exported)
            return []
        resuming = self.judge is None
        started = time.monotonic()
        if resuming:
            self._resume()
        assert self.judge is not None and self.rounds is not None and self.paired is not None
        records, self._position = self._partials.read(self._position)
        # Only each key's last record, in its place: what a compacted read gives. Until the broker
        # compacts the table (segment.ms), a new judge reads every partial since the last
        # compaction, nearly all of them replaced by a tombstone; parsing those delayed a
        # takeover by seconds (docs/architecture.md, "Scale-out").
        last = {key: i for i, (key, _) in enumerate(records)}
        for i, (key, value) in enumerate(records):
            if last[key] != i:
                continue
            if value is None:
                self._live.pop(key, None)
                continue
            if key.startswith("partial/"):
                partial = Partial.from_bytes(value)
                self._live[key] = (partial.partition, partial.window)
                self.rounds.offer(partial)
            elif key.startswith("progress/"):
                p = json.loads(value)
                self.rounds.mark(int(key.split("/")[1]), int(p["sealed"]), bool(p["idle"]))
        if resuming:
            # Elected and holding the state: the judge has taken over. The rounds that closed
            # meanwhile are judged from the next step on, so the handover is not held up by
            # the backlog (how long it takes to judge grows with the time without a judge).
            log.warning("judging: state restored, %d partials-table records read (%d keys) in %.1f s",
                        len(records), len(last), time.monotonic() - started)
            return []
        rounds = self.rounds.advance_paired(self.judge, self.paired)
        self.retired = self.rounds.take_retired()  # forgotten by the rounds; their rows leave in _export
        if rounds:
            self._export(rounds)
            self._state.put("judge", json.dumps({
                "judge": self.judge.to_state(), "rounds": self.rounds.to_state(), "paired": self.paired.to_state(),
                "rows": {"drift": self.drift_rows.to_state(), "items": self.item_rows.to_state()}}).encode())
            self._state.flush()
            self._saved = dict(self.rounds.folded)
            self.reports += [report for report, _ in rounds]
            self.paired_reports += [paired for _, paired in rounds]
            if self._keep is not None:
                del self.reports[: -self._keep]
                del self.paired_reports[: -self._keep]
        self._tombstone()
        return rounds

    def _export(self, rounds: list[tuple[JudgeReport, PairedReport]]) -> None:
        """The rounds' verdicts into the exported rows, as the single agent's (``Pipeline.run_judgement``)."""
        assert self.judge is not None and self.rounds is not None
        alive = list(self.rounds.versions)
        previous = {v: u.previous_version for v, u in self.judge.updates.items()}
        for report, paired in rounds:
            self.drift_rows.update(report, paired, previous=previous, alive=alive,
                                   baselines=self.judge.baselines.cohort_status())
            self.item_rows.update(report.items, alive=alive, titles=self._titles)

    def rows(self) -> dict[str, list[dict]]:
        """The rows the judge exports (``metrics.DriftCollector``): replaced each round, never mutated."""
        return {**self.drift_rows.rows(), **self.item_rows.rows()}

    def _tombstone(self) -> None:
        """Delete the partials the saved state has folded (replays included): compaction then
        drops them, so the partials topic holds only what no judge has folded yet."""
        done = [k for k, (p, w) in self._live.items() if w <= self._saved.get(p, -1)]
        for key in done:
            self._partials.put(key, None)
            del self._live[key]
        if done:
            self._partials.flush()
            self.tombstoned += len(done)

    def _resume(self) -> None:
        records, _ = self._state.read(0)
        saved = [v for k, v in records if k == "judge" and v is not None]
        self.judge, self.rounds = Judge(self._config), Rounds(self._partitions, self._width_s, self._retire_after_s)
        self.paired = PairedComparison(self._paired_config)
        if saved:
            state = json.loads(saved[-1])
            try:
                judge = Judge.from_state(state["judge"], self._config)
                rounds = Rounds.from_state(state["rounds"], self._partitions, self._retire_after_s)
                # A state saved before the judge paired: the comparison starts with the next round.
                paired = (PairedComparison.from_state(state["paired"], self._paired_config) if "paired" in state
                          else PairedComparison(self._paired_config))
                saved_rows = state.get("rows")  # absent: saved before the rows were; the next rounds fill them
                drift_rows = DriftRows.from_state(saved_rows["drift"]) if saved_rows else DriftRows()
                item_rows = (ItemRows.from_state(saved_rows["items"], self._items_exported) if saved_rows
                             else ItemRows(self._items_exported))
                self.judge, self.rounds, self.paired = judge, rounds, paired
                self.drift_rows, self.item_rows = drift_rows, item_rows
            except (StateFormatError, ValueError, KeyError) as error:
                log.error("judge state not restored (%s): judging starts again from the partials", error)
        self._position = 0
        self._live, self._saved = {}, dict(self.rounds.folded)
        log.warning("judging from round %d (window %d)", self.rounds.closed + 1 if self.rounds else 0,
                    self.rounds.closed if self.rounds else -1)
