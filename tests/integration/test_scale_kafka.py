"""Scale-out on the real broker: replicas publish partials to a compacted topic, two judge
candidates are elected through a one-partition control topic, the judge leaves mid-stream
and the other resumes its state from the state topic: the verdicts are one process's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from monitor.drift.partial import Partitions, PartialSink
from monitor.settings import KafkaSettings
from monitor.stream.kafka import CompactedTable, JudgeElection, delete_topic, ensure_compacted_topic, ensure_topic
from monitor.stream.scale import JudgeRole, progress, publish
from scale_log import CONFIG, PARTITIONS, WIDTH_S, fold, make_log, one_process, verdicts


@pytest.fixture
def topics(kafka_settings: KafkaSettings) -> Iterator[dict[str, str]]:
    names = {n: f"attnmon-scale-{n}-{uuid.uuid4().hex[:8]}" for n in ("partials", "state", "control")}
    ensure_compacted_topic(kafka_settings, names["partials"])
    ensure_compacted_topic(kafka_settings, names["state"])
    ensure_topic(kafka_settings, names["control"], 1)
    yield names
    for name in names.values():
        delete_topic(kafka_settings, name)


def candidate(settings: KafkaSettings, topics: dict[str, str]) -> tuple[JudgeRole, JudgeElection, list]:
    election = JudgeElection(settings, topics["control"], f"{settings.group_id}-judge")
    tables = [CompactedTable(settings, topics["partials"]), CompactedTable(settings, topics["state"])]
    return JudgeRole(election, tables[0], tables[1], PARTITIONS, WIDTH_S, CONFIG), election, tables


def until(predicate, timeout_s: float, *roles: JudgeRole) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, "timed out"
        for role in roles:
            role.step(50)
    return time.monotonic() - started


def test_two_replicas_and_a_failed_over_judge_give_one_process_verdicts(kafka_settings, topics) -> None:
    log = make_log(seed=7)
    single = one_process(log)
    writer = CompactedTable(kafka_settings, topics["partials"])
    first, first_election, first_tables = candidate(kafka_settings, topics)
    second, second_election, second_tables = candidate(kafka_settings, topics)
    try:
        until(lambda: first.judging or second.judging, 30.0, first, second)
        judge, standby = (first, second) if first.judging else (second, first)
        judge_election, judge_tables = (first_election, first_tables) if judge is first else (
            second_election, second_tables)
        assert not standby.judging, "exactly one judge"

        # Two replicas, two partitions each; each publishes its partials in halves.
        replicas = []
        for owned in ((0, 2), (1, 3)):
            sink = PartialSink(CONFIG)
            parts = Partitions(sink, WIDTH_S)
            for p in owned:
                parts.assign(p, sealed=progress(writer).get(p, {}).get("sealed", -1))
            replicas.append((parts, owned))

        def run(part: int, start: int, stop: int, final: bool) -> None:
            parts, _ = next(r for r in replicas if part in r[1])
            sealed = fold(parts.sink, parts, part, log, start, stop, 300)
            if final:
                sealed.append(parts.seal(part))
            if sealed:
                publish(writer, sealed, part, parts.sealed(part), sealed[-1].end, idle=final)

        for p in range(PARTITIONS):
            run(p, 0, len(log[p]["ts"]) // 2, final=False)
        until(lambda: judge.reports and judge.rounds is not None and judge.rounds.closed >= 3, 30.0, judge, standby)
        judged_before = list(judge.reports)

        # The judge is lost; the other candidate takes over within the session timeout.
        judge_election.close()
        for table in judge_tables:
            table.close()
        takeover = until(lambda: standby.judging, 15.0, standby)
        assert takeover < 15.0

        for p in range(PARTITIONS):
            run(p, len(log[p]["ts"]) // 2, len(log[p]["ts"]), final=True)
        last_window = int(single[-2][1] / WIDTH_S) - 1  # the single process's last round ended there
        until(lambda: standby.rounds is not None and standby.rounds.closed >= last_window, 30.0, standby)
        assert standby.reports[0].round == judged_before[-1].round + 1, "no round judged twice, none lost"
        assert verdicts(judged_before + standby.reports) == single
    finally:
        writer.close()
        for election, tables in ((first_election, first_tables), (second_election, second_tables)):
            try:
                election.close()
                for table in tables:
                    table.close()
            except Exception:  # noqa: BLE001 -- already closed above
                pass
