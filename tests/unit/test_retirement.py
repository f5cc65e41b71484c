"""Model versions retire: absent from the stream for ``pipeline.retire_after_s``, a version
is forgotten by the judge, the paired comparison, the update bookkeeping and /metrics;
its last-seen time survives a checkpoint; a version that comes back starts fresh."""

from __future__ import annotations

import json
import math
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.attention.registry import ModelRegistry
from monitor.drift.baseline import CohortKey
from monitor.drift.cohorts import CohortAssigner, CohortDimension
from monitor.drift.judge import Judge, JudgeConfig
from monitor.drift.paired import PairedComparison
from monitor.export.metrics import AgentMetrics, DriftCollector, UsageCollector
from monitor.settings import load_settings
from monitor.stream.config import PipelineConfig
from monitor.stream.pipeline import Pipeline
from monitor.stream.updates import ModelUpdates
from scaffold import Rec, catalog, publish_small

RETIRE_AFTER_S = 3_600.0
COHORTS = [CohortDimension(name="platform", max_values=3),
           CohortDimension(name="history_length", kind="history_length", edges=(5, 10))]


T0 = 1_764_000_000.0  # when the canary story starts (processing time)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Agentless:
    """A pipeline on a fake clock, its metrics registered as the agent registers them."""

    def __init__(self, root: Path, clock: Clock, *, max_loaded: int = 1) -> None:
        self.clock = clock
        self.registry = CollectorRegistry()
        self.metrics = AgentMetrics(self.registry)
        self.pipeline = Pipeline(
            ModelRegistry(root, max_loaded=max_loaded, retry_after_s=0.0),
            CohortAssigner(COHORTS),
            Judge(JudgeConfig(reference_events=50, min_samples=20)),
            PairedComparison(),
            self.metrics,
            lambda record, reason, detail: None,
            PipelineConfig(forward_processes=0, paired_fraction=1.0, retire_after_s=RETIRE_AFTER_S),
            clock=clock,
        )
        self.registry.register(DriftCollector(self.pipeline.drift_rows))
        self.registry.register(UsageCollector(self.pipeline.usage_rows))
        self._offset = 0

    def feed(self, version: str, at: float, events: int = 30) -> None:
        """``events`` events of ``version`` at ``at``: one unknown item inside each window, histories
        longer than the window (so the per-version unknown and truncated counters exist)."""
        self.clock.now = at
        ids = [int(i) for i in catalog().item_ids[1:40]]
        records = []
        for i in range(events):
            history = ids[i % 5: i % 5 + 25] + [999_999_999] + ids[:3]
            value = msgspec.json.encode({
                "event_id": f"e{self._offset}", "ts": int(at * 1000), "model_version": version, "user_id": "u",
                "history": history, "recommended": [], "context": {"platform": ("ios", "web")[i % 2]}})
            records.append(Rec("t", 0, self._offset, value))
            self._offset += 1
        assert self.pipeline.process(records) == events

    def judge(self, at: float) -> None:
        self.clock.now = at
        self.pipeline.run_judgement()

    def exposition(self) -> str:
        return generate_latest(self.registry).decode()

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


def judge_versions(judge: Judge) -> set[str]:
    state = judge.to_state()
    return ({key[0] for key, _ in state["cohorts"]} | {key[0] for key, _ in state["baselines"]["baselines"]}
            | set(judge.updates))


def paired_versions(paired: PairedComparison) -> set[str]:
    return {key[0] for key, *_ in paired.to_state()["cohorts"]}


@pytest.fixture()
def versions(tmp_path: Path) -> tuple[Path, str, str]:
    root = tmp_path / "checkpoints"
    return root, publish_small(root, seed=0, label="v1", max_len=20), publish_small(root, seed=1, label="v2", max_len=20)


def canary(root: Path, v1: str, v2: str) -> Agentless:
    """v1 serves; v2 replaces it briefly at T0 + 10 (an update, paired with v1) and stops."""
    h = Agentless(root, Clock())
    h.feed(v1, T0)
    h.feed(v2, T0 + 10)
    h.feed(v2, T0 + 11)
    h.judge(T0 + 12)
    h.feed(v1, T0 + 20)  # v1 serves on, and evicts v2 from memory (max_loaded 1)
    h.judge(T0 + 21)
    return h


def assert_holds(h: Agentless, version: str) -> None:
    assert version in judge_versions(h.pipeline.judge)
    assert version in h.pipeline._updates.last_seen
    assert f'model_version="{version}"' in h.exposition()


def assert_forgotten(h: Agentless, version: str) -> None:
    assert version not in judge_versions(h.pipeline.judge)
    assert version not in paired_versions(h.pipeline.paired)
    assert version not in h.pipeline._updates.versions_seen and version not in h.pipeline._updates.previous
    assert version not in h.pipeline._updates.last_seen
    assert version not in h.exposition()  # no series names it: histograms, drift rows, counters, update
    assert version not in json.dumps(h.pipeline.state())  # nor does the next checkpoint


def test_a_version_absent_for_retire_after_s_leaves_the_state_and_metrics(versions) -> None:
    root, v1, v2 = versions
    h = canary(root, v1, v2)
    # Before: v2 is everywhere, including the series only an update makes.
    assert v2 in paired_versions(h.pipeline.paired) and v2 in h.pipeline.judge.updates
    assert h.value("attnmon_model_update_timestamp_seconds", model_version=v2, previous_version=v1) == T0 + 10
    for name in ("attnmon_history_items_unknown_total", "attnmon_history_truncated_total"):
        assert h.value(name, model_version=v2) == 60
    assert h.value("attnmon_attention_entropy_ratio_count", model_version=v2, dimension="all", cohort="all",
                   layer="0") == 60
    assert h.value("attnmon_model_version_last_seen_timestamp_seconds", model_version=v2) == T0 + 11
    assert h.value("attnmon_model_versions_retired_total") == 0

    h.feed(v1, T0 + 11 + RETIRE_AFTER_S - 1)
    h.judge(T0 + 11 + RETIRE_AFTER_S - 1)
    assert_holds(h, v2)  # absent one second short of retire_after_s

    h.feed(v1, T0 + 11 + RETIRE_AFTER_S)
    h.judge(T0 + 11 + RETIRE_AFTER_S)
    assert_forgotten(h, v2)
    assert h.value("attnmon_model_versions_retired_total") == 1
    # v1, which kept serving, keeps everything.
    assert_holds(h, v1)
    assert h.value("attnmon_attention_entropy_ratio_count", model_version=v1, dimension="all", cohort="all",
                   layer="0") == 4 * 30


def test_a_replica_retires_its_own_series_and_leaves_the_count_to_its_judge(versions) -> None:
    """A replica's pipeline is never judged (``run_judgement``): its loop retires its own
    per-version series on their own, and only the judge's retirements are counted."""
    root, v1, v2 = versions
    h = canary(root, v1, v2)
    h.feed(v1, T0 + 11 + RETIRE_AFTER_S)
    assert h.pipeline.retire_absent(count=False) == [v2]
    # The series a replica exports of its own (its drift rows are its judge's, not these).
    for name in ("attnmon_history_items_unknown_total", "attnmon_history_truncated_total"):
        assert h.value(name, model_version=v2) is None
    assert h.value("attnmon_attention_entropy_ratio_count", model_version=v2, dimension="all", cohort="all",
                   layer="0") is None
    assert h.value("attnmon_model_version_last_seen_timestamp_seconds", model_version=v2) is None
    assert v2 not in judge_versions(h.pipeline.judge) and v2 not in h.pipeline._updates.last_seen
    assert h.value("attnmon_model_versions_retired_total") == 0
    assert_holds(h, v1)


def test_last_seen_survives_a_checkpoint_and_downtime_is_not_absence(versions) -> None:
    root, v1, v2 = versions
    before = canary(root, v1, v2)
    before.feed(v1, T0 + 1_000)  # v2 has been absent 989 s when the checkpoint is taken
    state = json.loads(json.dumps(before.pipeline.state()))

    down_for = 50_000.0
    after = Agentless(root, Clock())
    after.clock.now = T0 + 1_000 + down_for
    after.pipeline.restore(state, Judge.from_state(state["judge"]), PairedComparison.from_state(state["paired"]),
                           CohortAssigner.from_state(COHORTS, state["cohorts"]))
    assert after.pipeline._updates.last_seen == {v1: T0 + 1_000 + down_for, v2: T0 + 11 + down_for}
    assert v2 in paired_versions(after.pipeline.paired) and v2 in judge_versions(after.pipeline.judge)

    restart = T0 + 1_000 + down_for
    after.feed(v1, restart + RETIRE_AFTER_S - 989 - 1)
    after.judge(restart + RETIRE_AFTER_S - 989 - 1)
    assert v2 in judge_versions(after.pipeline.judge)  # the downtime did not count
    after.feed(v1, restart + RETIRE_AFTER_S - 989)
    after.judge(restart + RETIRE_AFTER_S - 989)
    assert_forgotten(after, v2)

    # Retired for good: a checkpoint taken now and restored again does not bring it back.
    again_state = json.loads(json.dumps(after.pipeline.state()))
    again = Agentless(root, Clock())
    again.pipeline.restore(again_state, Judge.from_state(again_state["judge"]),
                           PairedComparison.from_state(again_state["paired"]),
                           CohortAssigner.from_state(COHORTS, again_state["cohorts"]))
    assert v2 not in judge_versions(again.pipeline.judge) and v2 not in again.pipeline._updates.last_seen


def test_a_checkpoint_from_before_retirement_gives_every_version_a_full_period(versions) -> None:
    root, v1, v2 = versions
    before = canary(root, v1, v2)
    state = json.loads(json.dumps(before.pipeline.state()))
    del state["last_seen"]
    after = Agentless(root, Clock())
    after.clock.now += 10**6
    after.pipeline.restore(state, Judge.from_state(state["judge"]), PairedComparison.from_state(state["paired"]),
                           CohortAssigner.from_state(COHORTS, state["cohorts"]))
    assert after.pipeline._updates.last_seen == {v1: after.clock.now, v2: after.clock.now}


def test_a_quiet_stream_retires_nothing(versions) -> None:
    root, v1, v2 = versions
    h = canary(root, v1, v2)
    h.judge(h.clock.now + 100 * RETIRE_AFTER_S)  # no events at all meanwhile: nothing was seen missing
    assert_holds(h, v1)
    assert_holds(h, v2)


def test_a_version_still_in_memory_is_not_retired(versions) -> None:
    root, v1, v2 = versions
    h = Agentless(root, Clock(), max_loaded=2)
    h.feed(v1, T0)
    h.feed(v2, T0 + 10)
    h.feed(v1, T0 + 10 + 2 * RETIRE_AFTER_S)
    h.judge(T0 + 10 + 2 * RETIRE_AFTER_S)
    assert set(h.pipeline.registry.loaded_versions()) == {v1, v2}
    assert_holds(h, v2)


def test_a_retired_version_that_comes_back_starts_fresh_as_an_update(versions) -> None:
    root, v1, v2 = versions
    h = canary(root, v1, v2)
    back = T0 + 11 + RETIRE_AFTER_S
    h.feed(v1, back)
    h.judge(back)
    assert_forgotten(h, v2)

    h.feed(v2, back + 5, events=10)
    update = h.pipeline.judge.updates[v2]
    assert (update.previous_version, update.at) == (v1, back + 5)  # a new update, from the version serving
    assert h.value("attnmon_model_update_timestamp_seconds", model_version=v2, previous_version=v1) == back + 5
    baseline = h.pipeline.judge.baselines.get(CohortKey(v2, "all", "all"))
    assert baseline is not None and baseline.sample.events == 10  # its own baseline collects anew
    assert h.value("attnmon_history_truncated_total", model_version=v2) == 10  # counters restart


# -- ModelUpdates on its own ------------------------------------------------------------------


def test_a_replaced_version_counts_as_seen_when_it_was_replaced() -> None:
    """The new version's update is judged against the old one's baselines: a quiet hour between
    the two must not retire the old one the moment the new one appears."""
    updates = ModelUpdates(AgentMetrics(CollectorRegistry()), max_remembered=32)
    judge = Judge()
    updates.note("v1", 0.0, judge)
    updates.note("v2", 5_000.0, judge)
    assert updates.absent(RETIRE_AFTER_S) == {}
    updates.note("v2", 5_000.0 + RETIRE_AFTER_S - 1, judge)
    assert updates.absent(RETIRE_AFTER_S) == {}
    updates.note("v2", 5_000.0 + RETIRE_AFTER_S, judge)
    assert updates.absent(RETIRE_AFTER_S) == {"v1": RETIRE_AFTER_S}
    assert updates.absent(RETIRE_AFTER_S, in_use={"v1"}) == {}
    assert updates.forget("v1") is None and updates.forget("v2") == "v1"
    assert (updates.versions_seen, updates.previous, updates.last_seen) == ([], {}, {})


def test_a_retired_version_named_as_previous_stays_retired_after_a_restore() -> None:
    metrics = AgentMetrics(CollectorRegistry())
    updates, judge = ModelUpdates(metrics, max_remembered=32), Judge()
    updates.note("v1", 0.0, judge)
    updates.note("v2", 10.0, judge)
    updates.note("v2", 10.0 + RETIRE_AFTER_S, judge)
    assert list(updates.absent(RETIRE_AFTER_S)) == ["v1"]
    updates.forget("v1")
    judge.forget("v1")
    restored = ModelUpdates(metrics, max_remembered=32)
    restored.restore(json.loads(json.dumps(updates.state())), judge, now=10**6)
    assert restored.previous == {"v2": "v1"}  # v2's update happened, and is kept
    assert restored.last_seen == {"v2": 10**6}  # v1 is not tracked again


# -- the setting ------------------------------------------------------------------------------


def test_retire_after_s_defaults_to_a_day_and_is_validated() -> None:
    assert PipelineConfig().retire_after_s == 86_400.0
    assert PipelineConfig(retire_after_s=math.inf).retire_after_s == math.inf  # never retire
    for bad in (0.0, 299.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="retire_after_s"):
            PipelineConfig(retire_after_s=bad)
    assert load_settings(environ={"ATTNMON__PIPELINE__RETIRE_AFTER_S": "7200"}).pipeline.retire_after_s == 7200.0


def test_an_update_exports_its_paired_counters_at_zero_from_the_start(versions) -> None:
    """Dashboards plot the paired outcomes other than "paired" and the unknown items per side:
    before, those series did not exist until the first such event, so the panels showed no data."""
    root, v1, v2 = versions
    h = Agentless(root, Clock())
    h.feed(v1, T0)
    h.feed(v2, T0 + 10)
    labels = {"model_version": v2, "previous_version": v1}
    for outcome in ("previous_unreadable", "previous_unavailable"):
        assert h.value("attnmon_update_paired_events_total", outcome=outcome, **labels) == 0.0
    for side in ("previous", "new"):
        assert h.value("attnmon_update_paired_items_unknown_total", side=side, **labels) == 0.0
