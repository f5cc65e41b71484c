"""Update families of the detection bench: the training-data incidents, the recipes that use
them, the update pairing, and the bench's own measurement of the events it sent.

Tiny real models (trained for a second on a slice of MovieLens) stand in for the
families, so this runs on a fresh clone without the cached ``var/models``.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bench.detection import update_pairs
from bench.event_tape import Tape, TapedFactory, measure
from bench.incidents import (
    DataIncident,
    campaign_flood,
    campaign_items,
    popular_items_only,
    popularity_order,
    vocabulary_by_popularity,
)
from bench.scenarios import (
    BENIGN,
    FAMILIES,
    HARMFUL,
    UPDATE_FAMILIES,
    Recipe,
    ScenarioRun,
    load_models,
    scenario_cohorts,
    train_family_model,
)
from model import checkpoint
from model.data import load_movielens
from monitor.attention.registry import ServedModel
from monitor.attention.stats import STATISTICS
from monitor.drift.baseline import SeriesKey
from monitor.drift.judge import Judge, JudgeConfig
from monitor.tools.replay import EventFactory, Scenario, serving_traffic

TINY = Recipe("base", (("max_len", 20), ("hidden", 16), ("layers", 2), ("heads", 2), ("dropout", 0.0)),
              tail=0, lr=1e-2, max_epochs=1, eval_every=1, patience=1)
USERS = 120


@pytest.fixture(scope="module")
def data():
    return load_movielens()


@pytest.fixture(scope="module")
def subset(data):
    return dataclasses.replace(data, user_ids=data.user_ids[:USERS], sequences=data.sequences[:USERS],
                               timestamps=data.timestamps[:USERS])


@pytest.fixture(scope="module")
def clean(tmp_path_factory, subset):
    """(root, the tiny base model published there), trained once for this module."""
    root = tmp_path_factory.mktemp("family-models")
    return root, train_family_model(root, "base", 0, data=subset, recipe=TINY)


def test_vocabulary_by_popularity_relabels_every_item_once_by_interaction_count(data):
    moved = vocabulary_by_popularity(data)
    counts = np.bincount(np.concatenate(data.sequences), minlength=data.catalog.n_items + 1)
    most = int(np.argmax(counts[1:])) + 1
    assert moved.catalog is data.catalog  # the catalogue the checkpoint is published with is untouched
    for before, after in zip(data.sequences, moved.sequences, strict=True):
        assert len(before) == len(after)
        assert ((before == most) == (after == 1)).all()  # the most interacted item is index 1 in the job
    # One relabelling of the whole vocabulary: same multiset of counts, items still 1..n, most indices moved.
    moved_counts = np.bincount(np.concatenate(moved.sequences), minlength=data.catalog.n_items + 1)
    assert sorted(moved_counts[1:]) == sorted(counts[1:])
    assert (np.diff(moved_counts[1:]) <= 0).all()  # the job's index order is the popularity order
    relabelled = np.concatenate(moved.sequences) != np.concatenate(data.sequences)
    assert relabelled.mean() > 0.9
    assert sorted(popularity_order(data).tolist()) == list(range(1, data.catalog.n_items + 1))


def test_campaign_flood_puts_the_campaign_in_recent_histories_and_keeps_held_out_items(data):
    flooded = campaign_flood(data, seed=3, items=5, share=0.6, recent=20)
    promoted = campaign_items(data, 3, 5, 100, 500)
    assert len(set(promoted.tolist())) == 5
    hit = 0
    for before, after, stamps in zip(data.sequences, flooded.sequences, flooded.timestamps, strict=True):
        assert len(after) == len(stamps) and (np.diff(stamps) >= 0).all()
        assert (after[-2:] == before[-2:]).all()  # the job's validation and test targets are real
        added = len(after) - len(before)
        if added == 0:
            assert (after == before).all()
            continue
        hit += 1
        missing = promoted[~np.isin(promoted, before)]
        assert added == len(missing)
        assert sorted(np.setdiff1d(after, before).tolist()) == sorted(missing.tolist())
        # inserted among the last `recent` training items, the rest in order
        head = after[:-2]
        keep = ~np.isin(head, missing)
        assert (head[keep] == before[:-2]).all()
        assert np.flatnonzero(~keep).min() >= len(before) - 2 - 20
    assert 0.5 < hit / len(data.sequences) < 0.7
    # Another seed is another campaign; the same seed is the same data.
    assert set(campaign_items(data, 4, 5, 100, 500)) != set(promoted)
    again = campaign_flood(data, seed=3, items=5, share=0.6, recent=20)
    assert all((a == b).all() for a, b in zip(again.sequences, flooded.sequences, strict=True))


def test_popular_items_only_keeps_the_most_interacted_items_in_order_and_drops_short_timelines(data):
    kept = popular_items_only(data, keep=300)
    head = set(popularity_order(data)[:300].tolist())
    assert kept.catalog is data.catalog  # published with the serving catalogue
    assert set(np.concatenate(kept.sequences).tolist()) == head  # every kept item still occurs
    users = {int(u): k for k, u in enumerate(data.user_ids)}
    for user, seq, stamps in zip(kept.user_ids, kept.sequences, kept.timestamps, strict=True):
        before = data.sequences[users[int(user)]]
        mask = np.isin(before, list(head))
        assert len(seq) >= 3 and (seq == before[mask]).all()  # the user's own order, nothing else
        assert (stamps == data.timestamps[users[int(user)]][mask]).all()
    dropped = sum(int(np.isin(s, list(head)).sum()) < 3 for s in data.sequences)
    assert 0 < dropped == len(data.sequences) - len(kept.sequences)
    with pytest.raises(ValueError):
        popular_items_only(data, keep=0)


def test_update_families_cover_benign_and_harmful_recipes():
    kinds = {f.name: f.kind for f in UPDATE_FAMILIES}
    assert kinds == {"reseed": BENIGN, "hidden48": BENIGN, "context_cut": HARMFUL, "vocab_misaligned": HARMFUL,
                     "one_epoch": HARMFUL, "campaign_flood": HARMFUL, "popular_only": HARMFUL}
    base = FAMILIES["base"]
    for family in UPDATE_FAMILIES:
        recipe = FAMILIES[family.recipe]
        differs = {name for name in ("model", "max_epochs", "incident", "tail", "lr", "batch_size", "eval_every")
                   if getattr(recipe, name) != getattr(base, name)}
        assert len(differs) <= 1, (family.name, differs)  # each family changes one thing of base, or nothing
    # The trained families run all their epochs (an early stop in the validation dip publishes epoch 1).
    for name in ("hidden48", "vocab_misaligned", "campaign_flood", "popular_only"):
        recipe = FAMILIES[name]
        assert recipe.patience >= recipe.max_epochs == base.max_epochs and recipe.time_budget_s > base.time_budget_s
    assert FAMILIES["harmful"].model_config()["max_len"] == 3
    assert FAMILIES["one_epoch"].max_epochs == 1
    assert FAMILIES["hidden48"].model_config()["hidden"] == 48


def test_update_pairs_start_from_base_and_cycle_through_every_combination():
    base, new = ["b0", "b1", "b2"], ["n0", "n1", "n2"]
    reseed = update_pairs(base, base, 10, reseed=True)
    assert all(p != n for p, n in reseed)
    assert len(set(reseed[:6])) == 6 and reseed[6:] == reseed[:4]  # every ordered pair before a repeat
    other = update_pairs(base, new, 10, reseed=False)
    assert all(p in base and n in new for p, n in other)
    assert len(set(other[:9])) == 9 and other[9] == other[0]
    with pytest.raises(ValueError):
        update_pairs(["b0"], ["b0"], 3, reseed=True)


def test_a_data_incident_is_part_of_the_recipe_and_the_model_is_published_with_the_serving_catalogue(clean, subset):
    root, plain = clean
    incident = DataIncident("vocabulary_by_popularity")
    shuffled_recipe = dataclasses.replace(TINY, incident=incident)
    shuffled = train_family_model(root, "base", 0, data=subset, recipe=shuffled_recipe)
    assert not shuffled.reused and shuffled.version != plain.version  # same label, another recipe: trained anew
    assert train_family_model(root, "base", 0, data=subset, recipe=shuffled_recipe).reused
    assert train_family_model(root, "base", 0, data=subset, recipe=TINY).version == plain.version
    metrics = json.loads((root / shuffled.version / checkpoint.METRICS).read_text())
    assert metrics["data_incident"] == {"name": "vocabulary_by_popularity"}
    assert "data_incident" not in json.loads((root / plain.version / checkpoint.METRICS).read_text())
    loaded = checkpoint.load(root / shuffled.version)
    assert (loaded.catalog.item_ids == subset.catalog.item_ids).all()
    # The job trained on popularity indices: the serving catalogue's row 1 holds the most popular item's embedding,
    # so the clean and the misaligned model disagree on what they recommend from the same histories.
    clean_model = checkpoint.load(root / plain.version).model
    histories = np.stack([np.pad(s[-20:], (20 - len(s[-20:]), 0)) for s in subset.sequences[:50]])
    with torch.inference_mode():
        top_clean = clean_model.scores(torch.from_numpy(histories)).topk(10).indices
        top_shuffled = loaded.model.scores(torch.from_numpy(histories)).topk(10).indices
    assert (top_clean != top_shuffled).float().mean() > 0.5
    with pytest.raises(ValueError, match="unknown data incident"):
        DataIncident("nope")


class _Recorder(Judge):
    """Keeps every value the pipeline hands the judge, per series."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        super().__init__(config)
        self.values: dict = {}

    def observe_batch(self, version, dimension, codes, labels, values, *args, **kwargs):
        statistics = kwargs["statistics"]
        for code in np.unique(codes).tolist():
            for i, statistic in enumerate(statistics):
                for layer in range(values.shape[2]):
                    key = SeriesKey(version, dimension, labels[code], statistic, layer)
                    self.values.setdefault(key, []).append(np.asarray(values[codes == code, i, layer]).copy())
        return super().observe_batch(version, dimension, codes, labels, values, *args, **kwargs)


def test_the_bench_measures_the_events_it_sent_as_the_pipeline_does(clean, data):
    root, plain = clean
    version = plain.version
    judge = _Recorder()
    run = ScenarioRun(root, judge=judge, seed=2)
    tape = Tape()
    factory = TapedFactory(EventFactory(serving_traffic(data, 2), load_models(root, [version]),
                                        Scenario(versions=((0, version),)), seed=2, batch=250), tape)
    run.run(factory, 1200, judge_every=600)
    assert len(tape) == 1200
    values = measure(tape, ServedModel.from_checkpoint(checkpoint.load(root / version)), scenario_cohorts())
    assert len(values.positions) == 1200 and values.per_head.shape[-1] == 2
    checked = 0
    for key, observed in judge.values.items():
        rows = values.members(key.dimension, key.cohort)
        expected = values.averaged[rows, STATISTICS.index(key.statistic), key.layer]
        np.testing.assert_allclose(np.concatenate(observed), expected, atol=1e-6)
        checked += 1
    cohorts = {(d, c) for d, labels in values.cohorts.items() for c in set(labels.tolist())}
    assert {(k.dimension, k.cohort) for k in judge.values} == cohorts
    assert checked == len(STATISTICS) * 2 * len(cohorts) and len(cohorts) >= 10
