"""Served recommendations, judged: a model update that serves more concentrated lists is raised
(whichever items), one that serves *other* items as spread out is not, a stable version is not;
the served sketches and their verdict survive a checkpoint, and they are exported as the
item rows of layer "served"."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.drift.concentration import SERVED_LAYER
from monitor.drift.items import served_slots
from monitor.drift.judge import MODEL_UPDATE, WITHIN_VERSION, Judge, JudgeConfig
from monitor.drift.sample import Sample
from monitor.export.item_rows import ItemRows

CATALOGUE = np.arange(1000, 4000)
CONFIG = JudgeConfig(reference_seconds=0.0, reference_events=2000, reference_users=30, min_samples=200,
                     min_users=20)
SLOTS = 10


def lists(rng: np.random.Generator, n: int, catalogue: np.ndarray, pushed: np.ndarray | None = None,
          pushed_slots: int = 0) -> list[list[int]]:
    """``n`` served lists of ``SLOTS`` items drawn with a popularity skew from ``catalogue``;
    ``pushed_slots`` of each list filled from ``pushed`` (a promotion the model serves)."""
    weights = 1.0 / np.arange(1, catalogue.size + 1) ** 0.6
    weights /= weights.sum()
    out = []
    for _ in range(n):
        head = rng.choice(pushed, pushed_slots, replace=False).tolist() if pushed_slots else []
        rest = rng.choice(catalogue, SLOTS - len(head), replace=False, p=weights).tolist()
        out.append(head + rest)
    return out


def feed(judge: Judge, rng: np.random.Generator, version: str, now: float, served: list[list[int]],
         first_user: int) -> None:
    n = len(served)
    users = (np.arange(first_user, first_user + n) % 400 + 1).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    values = rng.beta(5, 2, (n, 1, 1))
    judge.observe_batch(version, "all", np.zeros(n, dtype=np.int64), ("all",), values, users,
                        judge.stratum_of(np.full(n, 60)), now, statistics=("entropy",), served=served_slots(served))


def update(seed: int, new_lists) -> list:
    """v1 serves spread-out lists, then v2 takes over serving ``new_lists(rng, n)``."""
    rng = np.random.default_rng(seed)
    judge = Judge(CONFIG)
    for t in range(5):
        feed(judge, rng, "v1", float(t), lists(rng, 500, CATALOGUE), 500 * t)
    for t in range(3):  # v1's recent traffic: the update's reference
        feed(judge, rng, "v1", 5.0 + t, lists(rng, 500, CATALOGUE), 500 * t)
        judge.judge(5.0 + t)
    judge.start_update("v2", "v1", at=9.0)
    reports = []
    for t in range(4):
        feed(judge, rng, "v2", 10.0 + t, new_lists(rng, 300), 300 * t)
        reports.append(judge.judge(10.0 + t))
    return reports


def served_rows(report, kind: str) -> list:
    return [i for i in report.items if i.layer == SERVED_LAYER and i.kind == kind and i.key.model_version == "v2"]


def test_served_slots_give_each_list_one_unit_and_skip_events_without_one() -> None:
    slots = served_slots([[7, 8], [], [7, 7, 9, 10]])
    assert slots is not None
    (ids, mass), = slots.by_cohort(np.zeros(3, dtype=np.int64), 1)
    assert dict(zip(ids.tolist(), mass[:, 0].tolist())) == pytest.approx({7: 1.0, 8: 0.5, 9: 0.25, 10: 0.25})
    assert served_slots([[], []]) is None


def test_an_update_serving_a_promoted_handful_is_raised() -> None:
    promoted = np.array([1111, 2222, 3333, 1234, 2345])
    reports = update(0, lambda rng, n: lists(rng, n, CATALOGUE, promoted, pushed_slots=3))
    rows = [served_rows(r, MODEL_UPDATE) for r in reports]
    assert all(len(r) == 1 for r in rows)
    assert rows[0][0].flagged and rows[1][0].drifting  # two flagged windows in a row
    last = rows[-1][0]
    assert last.ratio >= CONFIG.served_min_ratio and last.threshold == CONFIG.served_min_ratio
    assert {item for item, _, _ in last.top[:5]} == set(promoted.tolist())


def test_an_update_serving_other_items_as_spread_out_is_not_raised() -> None:
    # A retrain serves other items than its predecessor: every top item of the window is new
    # to the reference, which the attention test would read as narrowing.
    other = CATALOGUE[::-1]
    reports = update(1, lambda rng, n: lists(rng, n, other))
    rows = [served_rows(r, MODEL_UPDATE)[0] for r in reports]
    assert max(r.overlap for r in rows) < 0.5
    assert not any(r.flagged or r.drifting for r in rows)
    assert all(r.ratio < 1.5 for r in rows)


@pytest.mark.parametrize("seed", range(4))
def test_a_stable_version_is_not_raised(seed: int) -> None:
    rng = np.random.default_rng(seed)
    judge = Judge(CONFIG)
    rows = []
    for t in range(12):
        feed(judge, rng, "v1", float(t), lists(rng, 500, CATALOGUE), 500 * t)
        rows += [i for i in judge.judge(float(t)).items if i.layer == SERVED_LAYER]
    assert len(rows) >= 6 and all(r.kind == WITHIN_VERSION for r in rows)
    assert not any(r.flagged for r in rows)


def test_served_sketches_and_verdicts_survive_a_checkpoint() -> None:
    rng = np.random.default_rng(3)
    judge = Judge(CONFIG)
    for t in range(5):
        feed(judge, rng, "v1", float(t), lists(rng, 500, CATALOGUE), 500 * t)
    feed(judge, rng, "v1", 5.0, lists(rng, 300, CATALOGUE), 0)
    restored = Judge.from_state(json.loads(json.dumps(judge.to_state())))
    for j in (judge, restored):
        feed(j, np.random.default_rng(9), "v1", 6.0, lists(np.random.default_rng(9), 100, CATALOGUE), 300)
    a, b = judge.judge(7.0), restored.judge(7.0)
    served_a = [i for i in a.items if i.layer == SERVED_LAYER]
    assert served_a and served_a == [i for i in b.items if i.layer == SERVED_LAYER]


def test_samples_merge_and_reload_their_served_sketch_and_old_states_load() -> None:
    sample = Sample(1, 1, 2)
    counters = np.zeros((5, 256), dtype=np.int64)
    slots = served_slots([[5, 6], [5]])
    assert slots is not None
    (ids, mass), = slots.by_cohort(np.zeros(2, dtype=np.int64), 1)
    sample.add(np.array([[[2, 0]]]), np.zeros((1, 16, 2), dtype=np.int64), counters, events=2, served=(ids, mass))
    twin = sample.copy()
    assert twin == sample and twin.served is not None and twin.served.mass_total() == pytest.approx(2.0)
    state = sample.to_state()
    assert Sample.from_state(json.loads(json.dumps(state))) == sample
    del state["served"]  # a state written before served recommendations were judged
    assert Sample.from_state(state).served is None


def test_served_rows_are_exported_under_layer_served_and_reload() -> None:
    promoted = np.array([1111, 2222, 3333, 1234, 2345])
    reports = update(0, lambda rng, n: lists(rng, n, CATALOGUE, promoted, pushed_slots=3))
    rows = ItemRows(top_n=3)
    rows.update(reports[-1].items, alive={"v1", "v2"}, titles=lambda version, item: f"title {item}")
    exported = [r for r in rows.rows()["items"] if r["layer"] == "served"]
    assert len(exported) == 1 and exported[0]["narrowed"] == 1 and exported[0]["kind"] == MODEL_UPDATE
    again = ItemRows.from_state(json.loads(json.dumps(rows.to_state())), top_n=3)
    assert again.rows() == rows.rows()


def test_a_replica_partial_carries_the_served_slots_to_the_judge() -> None:
    from monitor.drift.baseline import CohortKey
    from monitor.drift.partial import Partial, PartialSink

    rng = np.random.default_rng(4)
    sink = PartialSink(CONFIG)
    sink.target = Partial(0, 0, 0, 0)
    served = lists(rng, 200, CATALOGUE)
    feed(sink, rng, "v1", 0.0, served, 0)
    partial = Partial.from_bytes(sink.target.to_bytes())  # as published and read back by the judge
    sample = partial.samples[CohortKey("v1", "all", "all")]
    assert sample.served is not None and sample.served.mass_total() == pytest.approx(len(served))
    judge = Judge(CONFIG)
    judge.observe_sample(CohortKey("v1", "all", "all"), partial.series[CohortKey("v1", "all", "all")], sample, 0.0)
    baseline = judge.baselines.get(CohortKey("v1", "all", "all"))
    assert baseline is not None and baseline.sample.served == sample.served
