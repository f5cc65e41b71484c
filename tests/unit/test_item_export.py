"""Attention mass per item from the pipeline to /metrics: the fold feeds the item sketches,
the judgement exports the top items with their titles, bounded."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from model import checkpoint
from model.data import load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.attention.registry import ModelRegistry
from monitor.attention.stats import attended_items
from monitor.drift.baseline import CohortKey
from monitor.drift.cohorts import CohortAssigner, CohortDimension
from monitor.drift.concentration import ItemResult
from monitor.drift.judge import Judge, JudgeConfig
from monitor.drift.paired import PairedComparison
from monitor.export.item_rows import ItemRows
from monitor.export.metrics import AgentMetrics, DriftCollector
from monitor.stream.pipeline import Pipeline, PipelineConfig
from scaffold import Rec


@pytest.fixture(scope="module")
def catalog():
    return load_movielens().catalog


def test_attended_items_are_the_head_averaged_rows_at_real_positions() -> None:
    rows = np.array([[[0.0, 0.25, 0.75], [0.0, 0.5, 0.5]], [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]], dtype=np.float32)
    index = np.array([[0, 7, 9], [4, 7, 7]])
    event, item, mass = attended_items(rows, index)
    assert event.tolist() == [0, 0, 1, 1, 1] and item.tolist() == [7, 9, 4, 7, 7]
    np.testing.assert_allclose(mass, [[0.25, 0.5], [0.75, 0.5], [0.2, 0.1], [0.3, 0.1], [0.5, 0.8]])


def test_the_pipeline_feeds_item_sketches_and_exports_top_items_with_titles(tmp_path: Path, catalog) -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=20, hidden=16, layers=2, heads=2))
    version = checkpoint.save(model, catalog, {}, tmp_path, label="a")
    pipeline = Pipeline(
        ModelRegistry(tmp_path, retry_after_s=0.0),
        CohortAssigner([CohortDimension(name="platform", max_values=3)]),
        Judge(JudgeConfig(reference_events=200, reference_users=30, reference_seconds=0.0, min_samples=100,
                          min_users=20)),
        PairedComparison(), AgentMetrics(CollectorRegistry()), lambda *_: None,
        PipelineConfig(forward_processes=0, items_exported=3),
    )
    rng = np.random.default_rng(0)
    known = [int(i) for i in catalog.item_ids[1:200]]
    offset = 0

    def batch(n: int) -> list[Rec]:
        nonlocal offset
        records = []
        for _ in range(n):
            history = [int(i) for i in rng.choice(known, int(rng.integers(3, 20)))]
            value = msgspec.json.encode({"event_id": "e", "ts": 1_764_259_200_000, "model_version": version,
                                         "user_id": f"u{offset}", "history": history, "recommended": [],
                                         "context": {"platform": "ios"}})
            records.append(Rec("t", 0, offset, value))
            offset += 1
        return records

    pipeline.process(batch(250))
    pipeline.flush()
    key = CohortKey(version, "platform", "ios")
    baseline = pipeline.judge.baselines.get(key)
    assert baseline is not None and baseline.sample.items is not None and baseline.sample.items.layers == 2
    # every event's row sums to 1 over its items: the sketch's total mass is the events
    assert baseline.sample.items.total == pytest.approx([baseline.sample.events] * 2, rel=1e-5)
    pipeline.process(batch(150))
    pipeline.flush()
    report, _ = pipeline.run_judgement()
    assert {(r.key.cohort, r.layer) for r in report.items} >= {("ios", 0), ("ios", 1)}
    registry = CollectorRegistry()
    registry.register(DriftCollector(pipeline.drift_rows))
    text = generate_latest(registry).decode()
    top_item = report.items[0].top[0][0]
    index = int(np.flatnonzero(catalog.item_ids == top_item)[0])
    assert f'attnmon_item_info{{item="{top_item}",title="{catalog.titles[index][:79]}' in text
    shares = [line for line in text.splitlines() if line.startswith("attnmon_item_attention_share_ratio{")]
    cohorts = {(r.kind, r.key.dimension, r.key.cohort, r.layer) for r in report.items}
    assert len(shares) == len(cohorts) * 3 * 2  # items_exported x (window, reference)


def _result(cohort: str, layer: int, top: list[tuple[int, float, float]]) -> ItemResult:
    return ItemResult(key=CohortKey("v2", "platform", cohort), layer=layer, kind="model_update",
                      reference_version="v1", score=0.4, js_raw=0.45, p_value=1e-9, p_adjusted=1e-8, threshold=0.1,
                      flagged=True, drifting=True, top_share=0.6, reference_top_share=0.1, effective_items=40.0,
                      reference_effective_items=300.0, overlap=0.2, samples=500, top=tuple(top), update_at=0.0)


def test_item_series_are_capped_and_titles_escaped() -> None:
    rows = ItemRows(top_n=2)
    titles = {1: 'Bad "quoted"\ntitle\\', 2: "x" * 500, 3: "Fine"}
    rows.update([_result("ios", 0, [(1, 0.3, 0.01), (2, 0.2, 0.02), (3, 0.1, 0.05)])], alive={"v2"},
                titles=lambda version, item: titles.get(item))
    registry = CollectorRegistry()
    registry.register(DriftCollector(rows.rows))
    text = generate_latest(registry).decode()
    per_cohort = [line for line in text.splitlines()
                  if line.startswith(("attnmon_items_", "attnmon_item_attention")) and 'cohort="ios"' in line]
    assert len(per_cohort) == 2 * 2 + 7  # 2 N + 7 per (kind, cohort, layer)
    info = [line for line in text.splitlines() if line.startswith("attnmon_item_info{")]
    assert len(info) == 2  # the exported items only (item 3 is beyond top_n)
    assert 'title="Bad \\"quoted\\" title\\\\"' in text  # newline removed, quotes and backslash escaped
    assert max(len(line) for line in info) < 140
    assert registry.get_sample_value("attnmon_item_attention_share_ratio", {
        "kind": "model_update", "model_version": "v2", "dimension": "platform", "cohort": "ios", "layer": "0",
        "rank": "1", "item": "1", "side": "reference"}) == pytest.approx(0.01)
    rows.update([], alive=set(), titles=lambda version, item: None)  # the version retired
    assert rows.rows() == {"items": [], "item_shares": [], "item_titles": []}
    with pytest.raises(ValueError):
        ItemRows(top_n=21)
