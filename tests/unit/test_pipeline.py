"""The Kafka-free core: records in, metrics/judge/dead letters/offsets out."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from model import checkpoint
from model.data import load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.drift.baseline import CohortKey
from monitor.drift.cohorts import CohortAssigner, CohortDimension
from monitor.stream.events import Reason
from monitor.drift.judge import Judge, JudgeConfig
from monitor.export.metrics import AgentMetrics, statistic_metric
from monitor.drift.paired import PairedComparison
from monitor.stream.pipeline import Pipeline, PipelineConfig
from monitor.stream.windows import window_histories
from monitor.attention.registry import ModelRegistry
from scaffold import Rec


@pytest.fixture(scope="module")
def catalog():
    return load_movielens().catalog


def _publish(root: Path, catalog, seed: int, label: str) -> str:
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=20, hidden=16, layers=2, heads=2))
    return checkpoint.save(model, catalog, {}, root, label=label)


def _event(version: str, history: list[int], platform: str = "ios", ts: int = 1_764_259_200_000,
           user_id: str = "u", **extra) -> bytes:
    return msgspec.json.encode({
        "event_id": "e", "ts": ts, "model_version": version, "user_id": user_id,
        "history": history, "recommended": [], "context": {"platform": platform}, **extra,
    })


class Harness:
    def __init__(self, root: Path, **config) -> None:
        self.registry_metrics = CollectorRegistry()
        self.metrics = AgentMetrics(self.registry_metrics)
        self.dead: list[tuple[int, Reason]] = []
        self.pipeline = Pipeline(
            ModelRegistry(root, retry_after_s=0.0),
            CohortAssigner([CohortDimension(name="platform", max_values=3),
                            CohortDimension(name="history_length", kind="history_length", edges=(5, 10))]),
            Judge(JudgeConfig(reference_events=50, min_samples=20)),
            PairedComparison(),
            self.metrics,
            lambda record, reason, detail: self.dead.append((record.offset, reason)),
            PipelineConfig(**{"forward_processes": 0, **config}),  # the process path: test_forward.py
        )

    def value(self, name: str, **labels) -> float:
        return self.registry_metrics.get_sample_value(name, labels) or 0.0


def test_valid_and_malformed_records_are_counted_by_outcome(tmp_path, catalog):
    version = _publish(tmp_path, catalog, 0, "a")
    h = Harness(tmp_path)
    items = [int(i) for i in catalog.item_ids[1:30]]
    records = [Rec("t", 0, i, _event(version, items[: 3 + i % 20])) for i in range(40)]
    records += [
        Rec("t", 0, 40, b"{not json"),
        Rec("t", 0, 41, _event(version, [])),
        Rec("t", 0, 42, _event(version, [999_999_999])),  # unknown item only -> unknown_items
        Rec("t", 1, 0, None),
    ]
    assert h.pipeline.process(records) == 40
    assert h.value("attnmon_events_total", outcome="processed", reason="ok") == 40
    assert h.value("attnmon_events_total", outcome="dead_lettered", reason="not_json") == 2
    assert h.value("attnmon_events_total", outcome="dead_lettered", reason="history_empty") == 1
    assert h.value("attnmon_events_total", outcome="dead_lettered", reason="unknown_items") == 1
    assert sorted(o for o, _ in h.dead) == [0, 40, 41, 42]
    assert h.pipeline.offsets.committable() == {("t", 0): 43, ("t", 1): 1}
    # Every event landed in the "all" cohort of every statistic and layer.
    for layer in ("0", "1"):
        assert h.value(statistic_metric("entropy") + "_count", model_version=version,
                       dimension="all", cohort="all", layer=layer) == 40
    # "ios" is admitted as a label once seen min_count (5) times; the first 4 count as "other".
    counts = {cohort: h.value(statistic_metric("gini") + "_count", model_version=version,
                              dimension="platform", cohort=cohort, layer="0") for cohort in ("ios", "other")}
    assert counts == {"ios": 36, "other": 4}


def test_unknown_items_are_dropped_and_counted(tmp_path, catalog):
    version = _publish(tmp_path, catalog, 0, "a")
    h = Harness(tmp_path)
    known = [int(i) for i in catalog.item_ids[1:6]]
    h.pipeline.process([Rec("t", 0, 0, _event(version, known + [999_999_999]))])
    assert h.value("attnmon_history_items_unknown_total", model_version=version) == 1
    assert h.value("attnmon_events_total", outcome="processed", reason="ok") == 1


def test_window_is_the_last_known_items_and_only_unknown_items_inside_it_count(tmp_path, catalog):
    version = _publish(tmp_path, catalog, 0, "a")  # max_len 20
    h = Harness(tmp_path)
    served = h.pipeline.registry.get(version)
    known = [int(i) for i in catalog.item_ids[1:41]]
    unknown = 999_999_999
    histories = [
        [unknown] + known,  # unknown long before the window: never read, not counted
        known[:30] + [unknown] + known[30:],  # unknown inside the tail: the window reaches one item further back
        [unknown] + known[:5] + [unknown],  # shorter than the window: both unknown items skipped
    ]
    records = [Rec("t", 0, offset, _event(version, history)) for offset, history in enumerate(histories)]
    items = [(record, event) for record, event in zip(records, h.pipeline.decode(records))]
    kept, windows, positions, skipped, truncated = window_histories(served, items, keep_positions=True,
                                                                    reject=h.pipeline._reject)
    expected_raw = [known[20:], known[20:], known[:5]]
    assert [p.tolist() for p in positions] == [list(range(21, 41)), list(range(20, 30)) + list(range(31, 41)),
                                               [1, 2, 3, 4, 5]]
    raw = [np.asarray(history)[p] for history, p in zip(histories, positions)]
    assert [w.tolist() for w in raw] == expected_raw
    assert [w.tolist() for w in windows] == [served.to_indices(np.asarray(r)).tolist() for r in expected_raw]
    assert kept == [event for _, event in items] and (skipped, truncated) == (1 + 2, 2)
    h.pipeline.process(records)
    assert h.value("attnmon_history_items_unknown_total", model_version=version) == 3
    assert h.value("attnmon_history_truncated_total", model_version=version) == 2
    assert h.value("attnmon_events_total", outcome="processed", reason="ok") == 3


def test_unknown_version_is_held_then_served_when_published(tmp_path, catalog):
    h = Harness(tmp_path, unknown_version_grace_s=60.0)
    torch.manual_seed(3)
    model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=20, hidden=16, layers=2, heads=2))
    staged = tmp_path / "staged"
    version = checkpoint.save(model, catalog, {}, staged, label="late")
    items = [int(i) for i in catalog.item_ids[1:8]]
    h.pipeline.process([Rec("t", 0, 0, _event(version, items)), Rec("t", 0, 1, _event(version, items))])
    assert h.value("attnmon_events_held") == 2
    # Held events are state: the checkpoint keeps them, so the offsets move past them.
    assert h.pipeline.offsets.committable() == {("t", 0): 2}
    assert [held[:3] for held in h.pipeline.state()["held"]] == [["t", 0, 0], ["t", 0, 1]]
    (staged / version).rename(tmp_path / version)  # the version is published while we run
    assert h.pipeline.retry_held() == 2
    assert h.value("attnmon_events_held") == 0
    assert h.pipeline.offsets.committable() == {("t", 0): 2}


def test_unknown_version_is_dead_lettered_after_the_grace_period(tmp_path, catalog):
    h = Harness(tmp_path, unknown_version_grace_s=0.0)
    h.pipeline.process([Rec("t", 0, 0, _event("sasrec-ffffffffffffffff", [int(catalog.item_ids[1])]))])
    assert h.pipeline.retry_held() == 0
    assert h.dead == [(0, Reason.UNKNOWN_MODEL_VERSION)]
    assert h.pipeline.offsets.committable() == {("t", 0): 1}


def test_a_second_version_starts_an_update_and_pairs_events(tmp_path, catalog):
    v1 = _publish(tmp_path, catalog, 0, "v1")
    v2 = _publish(tmp_path, catalog, 1, "v2")
    h = Harness(tmp_path, paired_fraction=1.0)
    rng = np.random.default_rng(0)
    ids = catalog.item_ids[1:]
    batch = lambda v, start: [Rec("t", 0, start + i, _event(v, [int(x) for x in rng.choice(ids, 8)])) for i in range(30)]
    h.pipeline.process(batch(v1, 0))
    h.pipeline.process(batch(v2, 30))
    assert v2 in h.pipeline.judge.updates and h.pipeline.judge.updates[v2].previous_version == v1
    assert h.value("attnmon_model_update_timestamp_seconds", model_version=v2, previous_version=v1) > 0
    h.pipeline.paired.judge(0.0)
    assert h.pipeline.paired.counts["pairs"] >= 30 * 3  # every event, once per cohort dimension


def test_per_head_statistics_are_exported_with_a_head_label_when_configured(tmp_path, catalog):
    from monitor.attention.stats import StatsConfig

    version = _publish(tmp_path, catalog, 0, "a")
    h = Harness(tmp_path, stats=StatsConfig(per_head=True))
    items = [int(i) for i in catalog.item_ids[1:12]]
    h.pipeline.process([Rec("t", 0, i, _event(version, items[: 2 + i])) for i in range(8)])
    name = statistic_metric("max_weight", per_head=True) + "_count"
    for layer in ("0", "1"):
        for head in ("0", "1"):
            assert h.value(name, model_version=version, dimension="all", cohort="all", layer=layer, head=head) == 8
    # The head-averaged series are there too, and the judge still sees head-averaged values only.
    assert h.value(statistic_metric("max_weight") + "_count", model_version=version, dimension="all",
                   cohort="all", layer="0") == 8


def test_decoding_elsewhere_and_parallel_forwards_change_nothing(tmp_path, catalog):
    """The agent decodes on its poll thread and runs forward passes on a pool: the
    outcome must equal decoding and recomputing inline, one pass at a time."""
    version = _publish(tmp_path, catalog, 0, "a")
    items = [int(i) for i in catalog.item_ids[1:60]]
    records = [Rec("t", 0, i, _event(version, items[: 1 + i % 50], platform=("ios", "web")[i % 2]))
               for i in range(300)]
    records.insert(17, Rec("t", 0, 300, b"{not json"))
    inline, pooled = Harness(tmp_path, forward_threads=1), Harness(tmp_path, forward_threads=2, max_batch=16)
    assert inline.pipeline.process(records) == 300
    with ThreadPoolExecutor(1) as poll_thread:
        decoded = poll_thread.submit(pooled.pipeline.decode, records).result()
    assert pooled.pipeline.process(records, decoded) == 300
    pooled.pipeline.close()
    assert inline.dead == pooled.dead == [(300, Reason.NOT_JSON)]
    for statistic in ("entropy", "max_weight", "recent_mass"):
        for cohort, dimension in (("all", "all"), ("ios", "platform"), ("web", "platform")):
            name = statistic_metric(statistic) + "_sum"
            labels = dict(model_version=version, dimension=dimension, cohort=cohort, layer="1")
            assert inline.value(name, **labels) == pytest.approx(pooled.value(name, **labels), rel=1e-6)
            assert inline.value(name, **labels) > 0


def _sums(h: Harness, version: str) -> dict[tuple[str, str, str], float]:
    return {(statistic, cohort, layer): h.value(statistic_metric(statistic) + "_sum", model_version=version,
                                                 dimension=dimension, cohort=cohort, layer=layer)
            for statistic in ("entropy", "max_weight", "recent_mass", "genre_entropy")
            for cohort, dimension in (("all", "all"), ("ios", "platform"), ("web", "platform"))
            for layer in ("0", "1")}


def test_forward_passes_in_a_child_process_change_nothing(tmp_path, catalog):
    """The agent's default runs the passes in a child process; the folded statistics must
    equal those of passes in this process, through an update with paired comparisons."""
    v1, v2 = _publish(tmp_path, catalog, 0, "a"), _publish(tmp_path, catalog, 1, "b")
    items = [int(i) for i in catalog.item_ids[1:60]]

    def batch(version: str, first: int) -> list[Rec]:
        return [Rec("t", 0, first + i, _event(version, items[: 1 + i % 50], platform=("ios", "web")[i % 2]))
                for i in range(120)]

    here, child = Harness(tmp_path, paired_fraction=1.0), Harness(tmp_path, paired_fraction=1.0, forward_processes=1)
    try:
        for h in (here, child):
            assert h.pipeline.process(batch(v1, 0)) == 120
            assert h.pipeline.process(batch(v2, 120)) == 120
        for version in (v1, v2):
            assert _sums(child, version) == pytest.approx(_sums(here, version), rel=1e-6)
            assert min(_sums(child, version).values()) > 0
        here.pipeline.paired.judge(0.0), child.pipeline.paired.judge(0.0)
        assert here.pipeline.paired.counts["pairs"] == child.pipeline.paired.counts["pairs"] == 64 * 3  # paired_max_per_batch
    finally:
        child.pipeline.close()


def test_a_deferred_batch_is_folded_by_the_next_call_or_flush(tmp_path, catalog):
    version = _publish(tmp_path, catalog, 0, "a")
    items = [int(i) for i in catalog.item_ids[1:40]]
    records = [Rec("t", 0, i, _event(version, items[: 2 + i % 30])) for i in range(90)]
    deferring, direct = Harness(tmp_path), Harness(tmp_path)
    count = lambda h: h.value("attnmon_events_total", outcome="processed", reason="ok")  # noqa: E731

    assert deferring.pipeline.process(records[:40], defer=lambda: True) == 0
    assert deferring.pipeline.has_pending() and count(deferring) == 0
    with pytest.raises(RuntimeError, match="deferred"):
        deferring.pipeline.state()  # its offsets are seen: a checkpoint now could lose it
    assert deferring.pipeline.process(records[40:70], defer=lambda: True) == 40  # folds the first
    assert deferring.pipeline.process(records[70:], defer=lambda: False) == 50  # folds both
    assert not deferring.pipeline.has_pending() and deferring.pipeline.flush() == 0
    assert deferring.pipeline.process(records[:10], defer=lambda: True) == 0
    assert deferring.pipeline.flush() == 10 and not deferring.pipeline.has_pending()
    deferring.pipeline.state()

    direct.pipeline.process(records)
    direct.pipeline.process(records[:10])
    assert count(deferring) == count(direct) == 100
    assert _sums(deferring, version) == pytest.approx(_sums(direct, version), rel=1e-6)


def test_held_events_survive_a_checkpoint_restore_without_refolding_later_events(tmp_path, catalog):
    """The old hole: a held offset kept the committable offset back while later events were
    folded and checkpointed; a restart re-read from the held offset and folded those twice."""
    v1 = _publish(tmp_path, catalog, 0, "v1")
    torch.manual_seed(3)
    late = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=20, hidden=16, layers=2, heads=2))
    staged = tmp_path / "staged"
    v2 = checkpoint.save(late, catalog, {}, staged, label="late")
    items = [int(i) for i in catalog.item_ids[1:8]]
    h = Harness(tmp_path, unknown_version_grace_s=600.0)
    h.pipeline.process([Rec("t", 0, 0, _event(v2, items))] + [Rec("t", 0, o, _event(v1, items)) for o in range(1, 40)])
    saved, offsets = h.pipeline.state(), h.pipeline.offsets.committable()
    assert offsets == {("t", 0): 40}  # a restart reads on after everything the state holds

    again = Harness(tmp_path, unknown_version_grace_s=600.0)
    again.pipeline.restore(saved, Judge.from_state(saved["judge"]), PairedComparison.from_state(saved["paired"]),
                           CohortAssigner.from_state(again.pipeline.assigner._dimensions, saved["cohorts"]))
    assert again.value("attnmon_events_held") == 1
    (staged / v2).rename(tmp_path / v2)
    assert again.pipeline.retry_held() == 1  # the held event is folded once, after the restart


def test_revoked_partitions_give_up_their_held_events(tmp_path, catalog):
    h = Harness(tmp_path, unknown_version_grace_s=600.0)
    unknown = "sasrec-ffffffffffffffff"
    item = [int(catalog.item_ids[1])]
    h.pipeline.process([Rec("t", 0, 0, _event(unknown, item)), Rec("t", 1, 0, _event(unknown, item))])
    assert h.pipeline.forget_held([("t", 1)]) == 1
    assert h.value("attnmon_events_held") == 1 and h.dead == [(0, Reason.UNKNOWN_MODEL_VERSION)]
    assert [held[:2] for held in h.pipeline.state()["held"]] == [["t", 0]]


def test_the_hold_buffer_is_bounded_in_bytes(tmp_path, catalog):
    h = Harness(tmp_path, unknown_version_grace_s=600.0, max_held_bytes=2_000)
    unknown = "sasrec-ffffffffffffffff"
    records = [Rec("t", 0, o, _event(unknown, [int(i) for i in catalog.item_ids[1:60]])) for o in range(10)]
    size = len(records[0].value)
    h.pipeline.process(records)
    assert h.value("attnmon_events_held") == 2_000 // size
    assert h.value("attnmon_events_held_bytes") <= 2_000
    assert len(h.dead) == 10 - 2_000 // size
def test_history_length_cohorts_and_strata_use_the_events_own_history_length(tmp_path, catalog):
    """A model reading 20 items sees every long history as 20 items; the cohort (and the
    judge's stratum) is what the user brought. Before, a 30-item history fell in 5-24."""
    version = _publish(tmp_path, catalog, 0, "a")  # max_len 20
    h = Harness(tmp_path)
    h.pipeline.assigner = CohortAssigner([CohortDimension(name="history_length", kind="history_length",
                                                          edges=(5, 25))])
    items = [int(i) for i in catalog.item_ids[1:40]]
    records = [Rec("t", 0, i, _event(version, items[:n], user_id=f"user-{i}"))
               for i, n in enumerate([3, 30, 30, 12])]
    assert h.pipeline.process(records) == 4
    count = lambda cohort: h.value(statistic_metric("entropy") + "_count", model_version=version,  # noqa: E731
                                   dimension="history_length", cohort=cohort, layer="0")
    assert (count("1-4"), count("5-24"), count("25+")) == (1, 1, 2)
    judge = h.pipeline.judge
    sample = judge.baselines.get(CohortKey(version, "history_length", "25+")).sample
    assert sample.events == 2 and sample.counts[:, judge.stratum_of(np.array([30]))[0]].sum() == 2 * sample.shape[0]
    assert sample.effective_users() == pytest.approx(2, abs=0.2)  # two users behind the two events


def test_a_judge_state_of_an_older_format_starts_the_judge_afresh(caplog):
    """A checkpoint from before user-clustered judging (per-series histograms, no users) cannot
    be read into the new judge: the agent starts it afresh from traffic instead of crash-looping."""
    from monitor.settings import Settings
    from monitor.stream.agent import Agent

    settings = Settings()
    judge = Agent._restore_judge({"format": 1, "config": {}, "series": [], "baselines": {}}, settings)
    assert len(judge) == 0 and judge.config == settings.judge
    assert "judge state not restored" in caplog.text
    with pytest.raises(ValueError, match="bins"):  # any other problem still stops the agent
        state = Judge(JudgeConfig(reference_seconds=0.0, bins=10)).to_state()
        Agent._restore_judge(state, settings)
