"""Key-cap exhaustion is visible: series in use against the judge's and the paired
comparison's limits, and the observations they refuse, are exported; so is the agent's
wiring of it (and of attnmon_model_info, which lists only versions in memory)."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from monitor.attention.registry import ModelRegistry
from monitor.drift.cohorts import CohortAssigner, CohortDimension
from monitor.drift.judge import Judge, JudgeConfig
from monitor.drift.paired import PairedComparison, PairedConfig
from monitor.export.metrics import AgentMetrics, UsageCollector
from monitor.settings import ModelSettings, Settings, StateSettings
from monitor.stream.config import PipelineConfig
from monitor.stream.memory import MemorySink, MemorySource
from monitor.stream.pipeline import Pipeline
from scaffold import Rec, catalog, publish_small

COHORTS = [CohortDimension(name="platform", max_values=3)]
SERIES_PER_COHORT = 7 * 2  # statistics x layers


def records(version: str, first: int, count: int = 30) -> list[Rec]:
    ids = [int(i) for i in catalog().item_ids[1:30]]
    return [Rec("t", 0, first + i, msgspec.json.encode({
        "event_id": f"e{i}", "ts": 1_764_259_200_000, "model_version": version, "user_id": "u",
        "history": ids[i % 7: i % 7 + 8], "recommended": [], "context": {"platform": "ios"}}))
        for i in range(count)]


class Capped:
    """A pipeline whose judge holds one version's series at most, with the usage exported."""

    def __init__(self, root: Path, judge: Judge | None = None, paired: PairedComparison | None = None) -> None:
        self.registry = CollectorRegistry()
        # 30 "ios" events: the first 4 count as "other" before "ios" is admitted, so the first
        # version has the cohorts all, platform=other and platform=ios.
        self.judge = judge or Judge(JudgeConfig(reference_events=50, min_samples=20, max_keys=3 * SERIES_PER_COHORT))
        self.paired = paired or PairedComparison(PairedConfig(max_keys=1))
        self.pipeline = Pipeline(
            ModelRegistry(root, retry_after_s=0.0), CohortAssigner(COHORTS), self.judge, self.paired,
            AgentMetrics(self.registry), lambda record, reason, detail: None,
            PipelineConfig(forward_processes=0, paired_fraction=1.0),
        )
        self.registry.register(UsageCollector(self.pipeline.usage_rows))

    def value(self, name: str, component: str) -> float | None:
        return self.registry.get_sample_value(name, {"component": component})


@pytest.fixture()
def two_versions(tmp_path: Path) -> tuple[Path, str, str]:
    root = tmp_path / "checkpoints"
    return root, publish_small(root, seed=0, label="a", max_len=20), publish_small(root, seed=1, label="b", max_len=20)


def test_a_full_judge_refuses_a_new_version_and_the_metrics_show_it(two_versions) -> None:
    root, v1, v2 = two_versions
    h = Capped(root)
    assert h.value("attnmon_drift_series", "judge") == 0
    assert h.value("attnmon_drift_series_limit", "judge") == 3 * SERIES_PER_COHORT
    assert h.value("attnmon_drift_series_limit", "paired") == 1

    h.pipeline.process(records(v1, 0))
    assert h.value("attnmon_drift_series", "judge") == 3 * SERIES_PER_COHORT  # full, nothing refused yet
    assert h.value("attnmon_drift_observations_refused_total", "judge") == 0

    h.pipeline.process(records(v2, 30))  # the update: every one of v2's series is refused
    refused = 30 * 2 * SERIES_PER_COHORT  # each event in all=all and platform=ios (admitted by now)
    assert h.judge.counts["refused_key_cap"] == refused
    assert h.value("attnmon_drift_observations_refused_total", "judge") == refused
    assert h.value("attnmon_drift_series", "judge") == 3 * SERIES_PER_COHORT
    # The paired comparison of the update: two cohorts, room for one.
    assert h.value("attnmon_drift_series", "paired") == 1
    assert h.value("attnmon_drift_observations_refused_total", "paired") == h.paired.counts["refused_key_cap"] > 0

    h.pipeline.judge.forget(v1)  # what retirement does: the in-use gauge follows
    assert h.value("attnmon_drift_series", "judge") == 0


def test_refusals_count_from_the_process_start_after_a_restore(two_versions) -> None:
    """Refusal counts are in the checkpoint; exported as they are, a restart from an older
    checkpoint would read as a counter reset, i.e. as fresh refusals."""
    root, v1, v2 = two_versions
    before = Capped(root)
    before.pipeline.process(records(v1, 0))
    before.pipeline.process(records(v2, 30))
    state = json.loads(json.dumps(before.pipeline.state()))

    judge, paired = Judge.from_state(state["judge"]), PairedComparison.from_state(state["paired"])
    assert judge.counts["refused_key_cap"] > 0
    after = Capped(root)
    after.pipeline.restore(state, judge, paired, CohortAssigner.from_state(COHORTS, state["cohorts"]))
    assert after.value("attnmon_drift_observations_refused_total", "judge") == 0
    assert after.value("attnmon_drift_observations_refused_total", "paired") == 0
    assert after.value("attnmon_drift_series", "judge") == 3 * SERIES_PER_COHORT  # the restored judge's
    assert after.value("attnmon_drift_series", "paired") == 1

    after.pipeline.process(records(v2, 60))
    assert after.value("attnmon_drift_observations_refused_total", "judge") == 30 * 2 * SERIES_PER_COHORT


def test_the_agent_exports_usage_and_lists_only_versions_in_memory(tmp_path: Path) -> None:
    from monitor.stream.agent import Agent

    root = tmp_path / "checkpoints"
    v1 = publish_small(root, seed=0, label="a", max_len=20)
    settings = Settings(models=ModelSettings(root=root, max_loaded=1), state=StateSettings(directory=tmp_path / "state"),
                        pipeline=PipelineConfig(forward_processes=0), judge=JudgeConfig(max_keys=123))
    source = lambda on_assigned, on_revoked: MemorySource(iter(()), 0, on_assigned, on_revoked)  # noqa: E731
    agent = Agent(settings, source, MemorySink())
    try:
        value = agent.registry.get_sample_value
        assert value("attnmon_drift_series_limit", {"component": "judge"}) == 123
        assert value("attnmon_drift_series", {"component": "paired"}) == 0
        assert value("attnmon_model_info", {"model_version": v1, "label": "a"}) == 1  # warmed at start
        v2 = publish_small(root, seed=1, label="b", max_len=20)
        agent.pipeline.process(records(v2, 0))
        assert value("attnmon_model_version_last_seen_timestamp_seconds", {"model_version": v2}) > 0
        assert value("attnmon_model_info", {"model_version": v2, "label": "b"}) == 1
        assert value("attnmon_model_info", {"model_version": v1, "label": "a"}) is None  # evicted: not in memory
    finally:
        agent.pipeline.close()
