"""Version retirement on the scale-out judge (monitor.drift.rounds, monitor.stream.scale): a
version no merged window has held for ``retire_after_s`` of event time is forgotten, at a
window that depends on the partitions' logs alone (not on the split, nor on a takeover)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.drift.judge import CohortKey, Judge
from monitor.drift.paired import PairedComparison
from monitor.drift.partial import Partial, Partitions, PartialSink
from monitor.drift.rounds import Rounds
from monitor.stream.scale import JudgeRole, publish
from scale_log import (
    CONFIG,
    PARTITIONS,
    WIDTH_S,
    Election,
    MemoryTable,
    fold,
    judge_stream,
    make_log,
    verdicts,
)

RETIRE_AFTER_S = 20.0  # two windows of WIDTH_S
EXTRA_S = 30_000  # v2-only traffic appended after the base log (ms), so v1 stays absent long enough


@pytest.fixture(scope="module")
def log() -> list[dict[str, np.ndarray]]:
    """make_log (v1 until 60 s, some of its events late, then v2) with v2's events repeated
    EXTRA_S later: v1 is absent for longer than RETIRE_AFTER_S, v2 never."""
    out = []
    for data in make_log():
        tail = data["version"] == "v2"
        out.append({k: np.concatenate([v, v[tail]]) if k != "ts" else np.concatenate([v, v[tail] + EXTRA_S])
                    for k, v in data.items()})
    return out


def _streams(log, owners: tuple[tuple[tuple[int, ...], int], ...]) -> list[list[Partial]]:
    """Each partition's published partials, the partitions folded by the given (partitions, poll size) owners."""
    streams: dict[int, list[Partial]] = {}
    for owned, batch in owners:
        sink = PartialSink(CONFIG)
        parts = Partitions(sink, WIDTH_S)
        for p in owned:
            parts.assign(p)
            streams[p] = fold(sink, parts, p, log, 0, len(log[p]["ts"]), batch) + [parts.seal(p)]
    return [streams[p] for p in range(PARTITIONS)]


def _expected_window(streams: list[list[Partial]], version: str) -> int:
    """The first window with events more than ceil(retire_after_s / width) windows after the
    last partial holding an event of ``version`` (late events count in the partial they arrived in)."""
    last = max(q.window for s in streams for q in s if version in q.first_seen)
    windows = sorted({q.window for s in streams for q in s})
    return next(w for w in windows if w - last > math.ceil(RETIRE_AFTER_S / WIDTH_S))


def _versions_held(judge: Judge) -> set[str]:
    return {CohortKey.from_state(key).model_version for key, _ in judge.to_state()["cohorts"]}


def _row_versions(role: JudgeRole) -> set[str]:
    return {row["model_version"] for rows in role.rows().values() for row in rows if "model_version" in row}


def _windows(streams: list[list[Partial]]) -> list[int]:
    return sorted({q.window for s in streams for q in s})


def _publish_window(table: MemoryTable, streams: list[list[Partial]], window: int, last: bool) -> None:
    """Every partition's partial of ``window`` and its progress (idle after the last window)."""
    for p, stream in enumerate(streams):
        mine = [q for q in stream if q.window == window]
        publish(table, mine, p, window, mine[-1].end if mine else 0, idle=last)


def _run(streams, role: JudgeRole, table: MemoryTable, windows: list[int]) -> dict[int, tuple[list[str], set, set]]:
    """One window per step: what retired, the versions the judge holds, the versions in its rows."""
    seen = {}
    final = _windows(streams)[-1]
    if not role.judging:
        role.step()  # elected: restores the state; judging starts with the next step
    for w in windows:
        _publish_window(table, streams, w, last=w == final)
        role.step()
        assert role.rounds is not None and role.rounds.closed == w, "each step judges its window"
        seen[w] = (list(role.retired), _versions_held(role.judge), _row_versions(role))
    return seen


def test_a_version_absent_for_retire_after_s_of_event_time_retires_on_the_judge(log) -> None:
    streams = _streams(log, (((0, 1, 2, 3), 500),))
    at = _expected_window(streams, "v1")
    role = JudgeRole(Election(), MemoryTable(), MemoryTable(), PARTITIONS, WIDTH_S, CONFIG, retire_after_s=RETIRE_AFTER_S)
    table = role._partials
    seen = _run(streams, role, table, _windows(streams))  # type: ignore[arg-type]
    for w, (retired, held, rows) in seen.items():
        if w < at:
            assert retired == [] and "v1" in held, f"v1 held at window {w}"
        elif w == at:
            assert retired == ["v1"], f"v1 retires at window {at}"
        else:
            assert retired == []
        if w >= at:
            assert "v1" not in held and "v1" not in rows, "v1's windows, baselines and rows are gone"
            assert "v2" in held and "v2" in rows, "the version still served stays"
    assert "v1" in seen[max(w for w in seen if w < at)][2], "v1 had exported rows before it retired"
    assert role.rounds.versions == ["v2"] and role.rounds.counts["versions_retired"] == 1
    assert "v1" not in role.judge.updates and "v2" in role.judge.updates, "v2's update (from v1) is kept"


def test_no_retirement_without_retire_after_s(log) -> None:
    streams = _streams(log, (((0, 1, 2, 3), 500),))
    role = JudgeRole(Election(), MemoryTable(), MemoryTable(), PARTITIONS, WIDTH_S, CONFIG, retire_after_s=math.inf)
    seen = _run(streams, role, role._partials, _windows(streams))  # type: ignore[arg-type]
    assert all(not retired and "v1" in held for retired, held, _ in seen.values())


@pytest.mark.parametrize("takeover", [0, 1, 2])
def test_a_judge_that_takes_over_retires_at_the_same_window(log, takeover) -> None:
    """The judge is lost ``takeover`` windows before v1 would retire; the next one restores
    the state (with every version's last window) and reads the compacted partials topic."""
    streams = _streams(log, (((0, 1, 2, 3), 500),))
    windows = _windows(streams)
    at = _expected_window(streams, "v1")
    whole = JudgeRole(Election(), MemoryTable(), MemoryTable(), PARTITIONS, WIDTH_S, CONFIG, retire_after_s=RETIRE_AFTER_S)
    uninterrupted = _run(streams, whole, whole._partials, windows)  # type: ignore[arg-type]

    partials, state = MemoryTable(), MemoryTable()
    first = JudgeRole(Election(), partials, state, PARTITIONS, WIDTH_S, CONFIG, retire_after_s=RETIRE_AFTER_S)
    cut = windows.index(at) - takeover
    before = _run(streams, first, partials, windows[:cut])
    topic = MemoryTable()
    topic.log = partials.compacted()
    heir = JudgeRole(Election(), topic, state, PARTITIONS, WIDTH_S, CONFIG, retire_after_s=RETIRE_AFTER_S)
    after = _run(streams, heir, topic, windows[cut:])
    assert {**before, **after} == uninterrupted
    assert heir.rows() == whole.rows()
    assert heir.rounds.counts["versions_retired"] == 1  # the saved count carries over


def test_a_state_saved_before_retirement_gives_every_version_a_full_period(log) -> None:
    streams = _streams(log, (((0, 1, 2, 3), 500),))
    _, rounds, _ = judge_stream([s[: len(s) // 2] for s in streams], seed=None, finish=False)
    state = rounds.to_state()
    del state["last_seen"]
    restored = Rounds.from_state(state, retire_after_s=RETIRE_AFTER_S)
    assert restored.last_seen == {v: rounds.closed for v in rounds.versions}


@pytest.mark.parametrize("seed", [1, 2])
def test_retirement_does_not_depend_on_the_split(log, seed) -> None:
    """The same partitions folded by one replica or split between two (other poll sizes),
    read in random interleavings: the same rounds, verdicts and retirements."""
    one = _streams(log, (((0, 1, 2, 3), 500),))
    two = _streams(log, (((0, 2), 64), ((1, 3), 211)))
    reports_one, rounds_one, judge_one = judge_stream(one, seed=None, rounds=Rounds(PARTITIONS, WIDTH_S, RETIRE_AFTER_S))
    reports_two, rounds_two, judge_two = judge_stream(two, seed, rounds=Rounds(PARTITIONS, WIDTH_S, RETIRE_AFTER_S))
    assert verdicts(reports_two) == verdicts(reports_one)
    assert rounds_one.counts["versions_retired"] == rounds_two.counts["versions_retired"] == 1
    assert rounds_one.last_seen == rounds_two.last_seen and "v1" not in rounds_two.last_seen
    assert _versions_held(judge_one) == _versions_held(judge_two) == {"v2"}
    # Retirement changed what was judged: without it, v1's series stay in the last rounds.
    reports_kept, _, _ = judge_stream(one, seed=None)
    assert verdicts(reports_kept) != verdicts(reports_one)


def test_retiring_forgets_the_paired_comparison_too() -> None:
    """Rounds forgets a retired version in the paired comparison it judges with."""
    forgotten: list[str] = []

    class Paired(PairedComparison):
        def forget(self, new_version: str) -> None:
            forgotten.append(new_version)
            super().forget(new_version)

    rounds, judge, paired = Rounds(1, WIDTH_S, RETIRE_AFTER_S), Judge(CONFIG), Paired()
    for window, version in ((0, "v1"), (1, "v2"), (2, "v2"), (3, "v2"), (4, "v2")):
        partial = Partial(0, window, window, window + 1)
        partial.see(version, int(window * WIDTH_S * 1000))
        rounds.offer(partial)
        rounds.mark(0, window, idle=False)
        rounds.advance_paired(judge, paired)
    assert forgotten == ["v1"] and rounds.take_retired() == ["v1"] and rounds.versions == ["v2"]
