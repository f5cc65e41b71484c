"""monitor.stream.updates.Pairing: each version on its own window, compared over the union of
positions, per layer; catalogue differences and unreadable events counted, not dropped."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from model import checkpoint
from model.data import load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.attention.registry import ModelRegistry
from monitor.attention.stats import paired_divergence
from monitor.drift.cohorts import CohortAssigner, CohortDimension
from monitor.drift.judge import Judge, JudgeConfig
from monitor.drift.paired import PairCohort, PairedComparison, PairedConfig
from monitor.export.metrics import AgentMetrics
from monitor.stream.pipeline import Pipeline, PipelineConfig
from scaffold import Rec

FAKE_RAW_ID = 900_000_000  # a raw id no event names: an item a catalogue "lacks" maps here


@pytest.fixture(scope="module")
def catalog():
    return load_movielens().catalog


def _publish(root: Path, catalog, seed: int, label: str, *, max_len: int = 20, lacks: tuple[int, ...] = ()) -> str:
    """A tiny random SASRec; ``lacks``: raw ids its catalogue does not hold (replaced by unused ids)."""
    if lacks:
        ids = catalog.item_ids.copy()
        for n, raw in enumerate(lacks):
            ids[int(np.flatnonzero(ids == raw)[0])] = FAKE_RAW_ID + n
        catalog = dataclasses.replace(catalog, item_ids=ids)
    torch.manual_seed(seed)
    model = SASRec(SASRecConfig(n_items=catalog.n_items, max_len=max_len, hidden=16, layers=2, heads=2))
    return checkpoint.save(model, catalog, {}, root, label=label)


def _event(version: str, history: list[int], user: str) -> bytes:
    return msgspec.json.encode({"event_id": "e", "ts": 1_764_259_200_000, "model_version": version, "user_id": user,
                                "history": history, "context": {"platform": "ios"}})


def _random_histories(catalog, seed: int, count: int, shortest: int, longest: int) -> list[list[int]]:
    """``count`` histories of distinct random raw ids, of lengths in [shortest, longest)."""
    rng = np.random.default_rng(seed)
    return [[int(i) for i in rng.choice(catalog.item_ids[1:], int(n), replace=False)]
            for n in rng.integers(shortest, longest, count)]


class RecordingPaired(PairedComparison):
    """Keeps what the pipeline folds for cohort ``all``: per-event JS [P, layers] and user hashes."""

    def __init__(self) -> None:
        super().__init__(PairedConfig(min_pairs=10, min_users=1))
        self.js: list[np.ndarray] = []
        self.statistics: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (old, new, lengths) of `all`
        self.lists: list[tuple[np.ndarray, np.ndarray]] = []  # (old, new) recomputed top lists of `all`

    def observe(self, cohort: PairCohort, js, overlap, users=None) -> str:
        if cohort.dimension == "all":
            self.js.append(np.asarray(js))
        return super().observe(cohort, js, overlap, users)

    def observe_statistics(self, cohort: PairCohort, old, new, lengths, users, priorities=None) -> None:
        if cohort.dimension == "all":
            self.statistics.append((np.asarray(old), np.asarray(new), np.asarray(lengths)))
        super().observe_statistics(cohort, old, new, lengths, users, priorities)

    def observe_served(self, cohort: PairCohort, previous, new, users) -> None:
        if cohort.dimension == "all":
            self.lists.append((np.asarray(previous), np.asarray(new)))
        super().observe_served(cohort, previous, new, users)


class Harness:
    def __init__(self, root: Path, lists_per_batch: int = 64, **registry) -> None:
        self.registry_metrics = CollectorRegistry()
        self.paired = RecordingPaired()
        self.pipeline = Pipeline(
            ModelRegistry(root, retry_after_s=0.0, **registry),
            CohortAssigner([CohortDimension(name="platform", max_values=3)]),
            Judge(JudgeConfig(reference_events=50, min_samples=20)),
            self.paired,
            AgentMetrics(self.registry_metrics),
            lambda record, reason, detail: None,
            PipelineConfig(forward_processes=0, paired_fraction=1.0, paired_lists_max_per_batch=lists_per_batch),
        )
        self.fed: list[tuple[str, list[np.ndarray]]] = []  # (version, histories) of every forward start
        start = self.pipeline._recompute.start

        def spy(served, histories, width):
            self.fed.append((served.version, [np.asarray(h).copy() for h in histories]))
            return start(served, histories, width)

        self.pipeline._recompute.start = spy

    def update(self, old: str, new: str, histories: list[list[int]]) -> None:
        """A batch of ``old``'s events, then the same histories under ``new`` (one user each)."""
        for offset, version in ((0, old), (len(histories), new)):
            self.pipeline.process([Rec("t", 0, offset + i, _event(version, h, f"user-{i}"))
                                   for i, h in enumerate(histories)])

    def value(self, name: str, **labels) -> float:
        return self.registry_metrics.get_sample_value(name, labels) or 0.0


def test_a_context_cut_is_compared_over_the_union_of_positions(tmp_path, catalog):
    """The new version reads 3 items, the old one 20: compared on the 3 both read (the old
    pairing) the rows look alike; over the union, the 17 positions the cut no longer reads
    carry the old row's mass against the new row's 0, and the rows are far apart."""
    old = _publish(tmp_path, catalog, 0, "old", max_len=20)
    new = _publish(tmp_path, catalog, 1, "cut", max_len=3)
    rng = np.random.default_rng(0)
    histories = [[int(i) for i in rng.choice(catalog.item_ids[1:], 20, replace=False)] for _ in range(40)]
    h = Harness(tmp_path)
    h.update(old, new, histories)
    js = np.concatenate(h.paired.js)  # [40, 2]: per event and layer
    assert js.shape == (40, 2)
    assert np.median(js, axis=0).min() > 0.6

    # The same events compared the old way, on the last three items both versions read.
    models = {v: checkpoint.load(tmp_path / v).model for v in (old, new)}
    index = h.pipeline.registry.get(old).to_indices(np.asarray(histories))  # [40, 20]
    with torch.inference_mode():
        rows_old = models[old].attention_rows(torch.from_numpy(index)).numpy().mean(axis=2)  # [40, 2, 20]
        rows_new = models[new].attention_rows(torch.from_numpy(index[:, -3:])).numpy().mean(axis=2)  # [40, 2, 3]
    narrow = [paired_divergence(rows_old[:, layer, -3:].copy(), rows_new[:, layer].copy(), np.full(40, 3))[0]
              for layer in range(2)]
    assert max(np.median(j) for j in narrow) < 0.3  # what the old pairing measured: a benign-looking move


def test_the_previous_version_reads_its_own_window(tmp_path, catalog):
    """The old version is fed the last 20 items *it* knows, not the new version's window
    (8 items, without the item the new catalogue lacks)."""
    ids = [int(i) for i in catalog.item_ids[1:31]]
    dropped = ids[25]
    old = _publish(tmp_path, catalog, 0, "old", max_len=20)
    new = _publish(tmp_path, catalog, 1, "new", max_len=8, lacks=(dropped,))
    histories = [ids[: 26 + i % 5] for i in range(12)]  # each holds `dropped` within its last 5 items
    h = Harness(tmp_path)
    h.update(old, new, histories)
    served_old, served_new = h.pipeline.registry.get(old), h.pipeline.registry.get(new)
    fed_old = [hs for version, hs in h.fed if version == old][-1]  # the pairing's pass of the old version
    fed_new = [hs for version, hs in h.fed if version == new][-1]
    expect_old = sorted(served_old.to_indices(np.asarray(x[-20:])).tolist() for x in histories)
    expect_new = sorted(served_new.to_indices(np.asarray([i for i in x if i != dropped][-8:])).tolist()
                        for x in histories)
    assert sorted(x.tolist() for x in fed_old) == expect_old
    assert sorted(x.tolist() for x in fed_new) == expect_new
    assert all(int(served_old.to_indices(np.asarray([dropped]))[0]) in x for x in fed_old)
    assert h.paired.counts["pairs"] == 12 * 2  # every event paired, in cohorts all and platform


def test_catalogue_differences_are_counted_and_unreadable_events_are_their_own_outcome(tmp_path, catalog):
    ids = [int(i) for i in catalog.item_ids[1:41]]
    lacked_by_old, lacked_by_new = ids[30:33], ids[5]
    old = _publish(tmp_path, catalog, 0, "old", max_len=20, lacks=tuple(lacked_by_old))
    new = _publish(tmp_path, catalog, 1, "new", max_len=20, lacks=(lacked_by_new,))
    paired_histories = [ids[:10], ids[20:34]]  # holds lacked_by_new (old knows it), holds the three old lacks
    unreadable = [lacked_by_old, lacked_by_old[:2]]  # the old version knows none of these items
    h = Harness(tmp_path)
    h.pipeline.process([Rec("t", 0, 0, _event(old, ids[:10], "user-a"))])
    h.pipeline.process([Rec("t", 0, 1 + i, _event(new, x, f"user-{i}"))
                        for i, x in enumerate(paired_histories + unreadable)])
    labels = {"model_version": new, "previous_version": old}
    assert h.value("attnmon_update_paired_events_total", outcome="paired", **labels) == 2
    assert h.value("attnmon_update_paired_events_total", outcome="previous_unreadable", **labels) == 2
    assert h.value("attnmon_update_paired_items_unknown_total", side="new", **labels) == 1
    assert h.value("attnmon_update_paired_items_unknown_total", side="previous", **labels) == 3
    js = np.concatenate(h.paired.js)
    assert js.shape == (2, 2) and np.isfinite(js).all()  # both mismatched events were paired, not dropped


def test_an_unavailable_previous_version_is_counted(tmp_path, catalog):
    ids = [int(i) for i in catalog.item_ids[1:20]]
    old = _publish(tmp_path, catalog, 0, "old")
    new = _publish(tmp_path, catalog, 1, "new")
    h = Harness(tmp_path, max_loaded=1)
    h.pipeline.process([Rec("t", 0, 0, _event(old, ids, "user-a"))])
    shutil.rmtree(tmp_path / old)  # unpublished while the new version serves; evicted from memory below
    h.pipeline.process([Rec("t", 0, 1 + i, _event(new, ids[: 5 + i], f"user-{i}")) for i in range(6)])
    assert h.value("attnmon_update_paired_events_total", model_version=new, previous_version=old,
                   outcome="previous_unavailable") == 6
    assert h.paired.counts["pairs"] == 0


def test_paired_series_are_exported_per_layer_with_their_users_and_share():
    from monitor.drift.users import hash_users
    from monitor.export.drift_rows import DriftRows
    from monitor.export.metrics import DriftCollector

    paired = PairedComparison(PairedConfig(min_users=1))
    cohort = PairCohort("v2", "platform", "ios")
    js = np.stack([np.full(120, 0.3), np.full(120, 0.95)], axis=1)  # [120, 2]: layer 1 moved
    paired.observe(cohort, js, 1.0 - js, hash_users([f"user-{i % 40}" for i in range(120)]))
    rows = DriftRows()
    rows.update(Judge().judge(0.0), paired.judge(0.0), previous={"v2": "v1"}, alive=["v1", "v2"], baselines={})
    registry = CollectorRegistry()
    registry.register(DriftCollector(rows.rows))
    labels = {"model_version": "v2", "previous_version": "v1", "dimension": "platform", "cohort": "ios"}
    for layer, share in (("0", 0.0), ("1", 1.0)):
        at = {**labels, "layer": layer}
        assert registry.get_sample_value("attnmon_update_paired_share_above", at) == share
        assert registry.get_sample_value("attnmon_update_paired_effective_users", at) == pytest.approx(40, rel=0.1)
        assert registry.get_sample_value("attnmon_update_paired_pairs", at) == 120
        # one flagged window: the moved layer's flag shows before the verdict (two in a row) does
        assert registry.get_sample_value("attnmon_update_paired_window_flagged", at) == float(layer == "1")
        assert registry.get_sample_value("attnmon_update_paired_verdict", at) == 0.0


def test_each_versions_statistics_are_paired_for_the_agreement_test(tmp_path, catalog):
    """The agreement test gets both versions' per-event statistics on the same events, each from
    its own window and computed as the main path computes them: the same weights under two
    version ids give identical statistics; another seed gives others."""
    twin_a = _publish(tmp_path, catalog, 0, "twin-a")
    twin_b = _publish(tmp_path, catalog, 0, "twin-b")
    other = _publish(tmp_path, catalog, 5, "other")
    histories = _random_histories(catalog, 3, 30, 12, 20)
    same, different = Harness(tmp_path), Harness(tmp_path)
    same.update(twin_a, twin_b, histories)
    different.update(twin_a, other, histories)
    old, new, lengths = (np.concatenate(parts) for parts in zip(*same.paired.statistics))
    assert old.shape == (30, 7, 2) and sorted(lengths.tolist()) == sorted(map(len, histories))
    np.testing.assert_allclose(old, new, atol=1e-6)
    old_d, new_d, _ = (np.concatenate(parts) for parts in zip(*different.paired.statistics))
    np.testing.assert_allclose(old_d, old, atol=1e-6)  # the previous version's side is the same model
    assert np.abs(new_d - old_d).max() > 0.05


def _served_list(model: SASRec, window: np.ndarray, ids: np.ndarray, slots: int = 10) -> list[int]:
    """What a producer serves after ``window`` (model indices): the top ``slots`` scores at
    full width (max_len), the window's own items excluded, as raw ids."""
    padded = torch.zeros((1, model.config.max_len), dtype=torch.int64)
    padded[0, -len(window):] = torch.from_numpy(window)
    with torch.inference_mode():
        scores = model.scores(padded)[0]
        scores[padded[0]] = float("-inf")
        return ids[torch.topk(scores, slots).indices.numpy()].tolist()


def test_each_version_recomputes_its_served_list_on_its_own_window(tmp_path, catalog):
    """The served-list test gets what each version would serve on the same event: its top 10
    after its own window, seen items excluded, exactly what a producer serving it computes.
    The same weights under two version ids serve the same lists; a context cut serves others."""
    old = _publish(tmp_path, catalog, 0, "old", max_len=20)
    twin = _publish(tmp_path, catalog, 0, "twin", max_len=20)
    cut = _publish(tmp_path, catalog, 0, "cut", max_len=3)
    histories = _random_histories(catalog, 5, 25, 4, 30)
    same, shorter = Harness(tmp_path), Harness(tmp_path)
    same.update(old, twin, histories)
    shorter.update(old, cut, histories)
    old_lists, new_lists = (np.concatenate(parts) for parts in zip(*same.paired.lists))
    assert old_lists.shape == (25, 10)
    np.testing.assert_array_equal(old_lists, new_lists)
    registry = same.pipeline.registry
    models = {v: registry.get(v) for v in (old, cut)}
    expected = {v: sorted(_served_list(m.checkpoint.model, m.to_indices(np.asarray(h))[-m.max_len:],
                                       m.checkpoint.catalog.item_ids) for h in histories)
                for v, m in models.items()}
    cut_old, cut_new = (np.concatenate(parts) for parts in zip(*shorter.paired.lists))
    assert sorted(old_lists.tolist()) == expected[old]
    assert sorted(cut_old.tolist()) == expected[old] and sorted(cut_new.tolist()) == expected[cut]
    assert sorted(cut_new.tolist()) != expected[old]
    seen = [set(h) for h in histories]
    assert not any(seen_items & set(row) for seen_items, row in zip(seen, map(set, old_lists.tolist())))


def test_served_lists_are_recomputed_for_the_lowest_hashes_up_to_the_cap(tmp_path, catalog):
    """paired_lists_max_per_batch bounds the scoring passes: past it, pairs keep their rows test
    and agreement but no lists (-1), and the ones listed are those with the lowest event hashes."""
    from monitor.drift.agreement import event_priorities

    old = _publish(tmp_path, catalog, 0, "old")
    new = _publish(tmp_path, catalog, 1, "new")
    rng = np.random.default_rng(6)
    histories = [[int(i) for i in rng.choice(catalog.item_ids[1:], 15, replace=False)] for _ in range(30)]
    h = Harness(tmp_path, lists_per_batch=7)
    h.update(old, new, histories)
    old_lists, new_lists = (np.concatenate(parts) for parts in zip(*h.paired.lists))
    listed = (old_lists >= 0).all(axis=1)
    assert listed.sum() == 7 and ((new_lists >= 0).all(axis=1) == listed).all()
    assert (old_lists[~listed] == -1).all() and np.concatenate(h.paired.js).shape == (30, 2)
    assert h.paired._cohorts[PairCohort(new, "all", "all")].served.lists == 7
    priorities = event_priorities([f"user-{i}" for i in range(30)], ["e"] * 30)
    assert sorted(np.argsort(priorities)[:7].tolist()) == np.flatnonzero(listed).tolist(), "rows in batch order"


def test_a_large_catalogue_scores_fewer_rows_at_once_with_the_same_lists(tmp_path, catalog, monkeypatch):
    """Item scores held at once are bounded (SCORES_HELD): a catalogue three times the budget per
    row scores three rows per chunk, and the lists are the same."""
    from monitor.stream import updates

    served = ModelRegistry(tmp_path).get(_publish(tmp_path, catalog, 0, "old"))
    rng = np.random.default_rng(8)
    histories = [served.to_indices(rng.choice(catalog.item_ids[1:], int(n), replace=False))
                 for n in rng.integers(3, 20, 20)]
    whole = updates.top_lists(served, histories, 10)
    rows_scored: list[int] = []
    model = served.checkpoint.model
    score = model.next_item_scores
    monkeypatch.setattr(model, "next_item_scores", lambda padded: rows_scored.append(len(padded)) or score(padded))
    monkeypatch.setattr(updates, "SCORES_HELD", 3 * len(catalog.item_ids))
    np.testing.assert_array_equal(updates.top_lists(served, histories, 10), whole)
    assert max(rows_scored) == 3 and sum(rows_scored) == 20
