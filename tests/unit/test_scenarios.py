"""Scenario models and streams: idempotent publishing, head-permutation symmetry, cohort shifts.

Tiny real models (trained for a second on a slice of MovieLens) stand in for the
scenario families, so this runs on a fresh clone without the cached ``var/models``.
"""

from __future__ import annotations

import dataclasses
import json

import msgspec
import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from model import checkpoint
from model.data import load_movielens
from monitor.drift.judge import MODEL_UPDATE, JudgeConfig
from monitor.drift.paired import PairedConfig
from monitor.attention.recompute import recompute
from monitor.tools.replay import EventFactory, context_of, serving_traffic, timeline_steps
from bench.scenarios import (
    Recipe,
    ScenarioRun,
    build_scenario,
    cohort_shift,
    label_of,
    load_models,
    permute_heads,
    scenario_names,
    train_scenario_models,
)
from monitor.attention.stats import STATISTICS, StatsConfig, compute

TINY = Recipe("base", (("max_len", 20), ("hidden", 16), ("layers", 2), ("heads", 2), ("dropout", 0.0)),
              tail=0, lr=1e-2, max_epochs=2, eval_every=1, patience=2)
TINY_RECIPES = {"base": TINY, "harmful": dataclasses.replace(TINY, family="harmful", model=(("max_len", 3),) + TINY.model[1:])}
USERS = 150  # training slice: ~22k interactions, about a second per epoch at this size


@pytest.fixture(scope="module")
def data():
    return load_movielens()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data):
    """(root, role -> version, the models reported) for tiny versions of the three scenario models."""
    root = tmp_path_factory.mktemp("scenario-models")
    subset = dataclasses.replace(data, user_ids=data.user_ids[:USERS], sequences=data.sequences[:USERS],
                                 timestamps=data.timestamps[:USERS])
    reported = {}
    versions = train_scenario_models(root, data=subset, recipes=TINY_RECIPES,
                                     on_model=lambda role, m: reported.__setitem__(role, m))
    return root, versions, reported, subset


def test_scenario_models_are_published_with_labels_and_reused(tiny):
    root, versions, reported, subset = tiny
    assert set(versions) == {"base", "benign", "harmful"}
    assert len(set(versions.values())) == 3
    assert {r: m.label for r, m in reported.items()} == {
        "base": label_of("base", 0), "benign": label_of("base", 1), "harmful": label_of("harmful", 0)}
    assert not any(m.reused for m in reported.values())
    for role, version in versions.items():
        manifest = json.loads((root / version / checkpoint.MANIFEST).read_text())
        assert manifest["label"] == reported[role].label  # the label is part of the hash
        assert 0.0 <= reported[role].test["hr10"] <= 1.0
    assert reported["harmful"].config["max_len"] == 3 and reported["base"].config["max_len"] == 20

    again = {}
    assert train_scenario_models(root, data=subset, recipes=TINY_RECIPES,
                                 on_model=lambda role, m: again.__setitem__(role, m)) == versions
    assert all(m.reused for m in again.values())
    # Another recipe under the same label is not "the same model": it is trained anew.
    changed = {**TINY_RECIPES, "harmful": dataclasses.replace(TINY_RECIPES["harmful"], max_epochs=1)}
    assert train_scenario_models(root, data=subset, recipes=changed)["harmful"] != versions["harmful"]


def test_scenario_builders(tiny):
    _, versions, _, _ = tiny
    assert set(scenario_names()) == {"benign_update", "harmful_update", "cohort_shift", "item_burst",
                                     "item_burst_during_update"}
    assert build_scenario("benign_update", versions, at=10).versions == ((0, versions["base"]), (10, versions["benign"]))
    assert build_scenario("harmful_update", versions, at=10).versions == ((0, versions["base"]), (10, versions["harmful"]))
    shift = build_scenario("cohort_shift", versions, at=10)
    assert shift.versions == ((0, versions["base"]),)
    assert (shift.shift.field, shift.shift.value, shift.shift.genre, shift.shift.start) == ("platform", "android", "Horror", 10)
    burst = build_scenario("item_burst", versions, at=10)
    assert burst.versions == ((0, versions["base"]),) and burst.shift is None
    assert (burst.burst.field, burst.burst.value, burst.burst.start, burst.burst.share) == ("platform", "android", 10, 1.0)
    during = build_scenario("item_burst_during_update", versions, at=10)
    assert during.versions == ((0, versions["base"]), (10, versions["benign"])) and during.burst.start == 10
    with pytest.raises(ValueError, match="unknown scenario"):
        build_scenario("nope", versions)


def test_serving_traffic_interleaves_users_and_keeps_each_timeline(data):
    steps = timeline_steps(serving_traffic(data, seed=0))
    window_users = [len(np.unique(steps[i : i + 2000, 0])) for i in range(0, 20_000, 2000)]
    assert min(window_users) > 300  # raw MovieLens time order: ~27 users per 2,000 events
    assert sorted(map(tuple, steps.tolist())) == sorted(map(tuple, timeline_steps(data).tolist()))
    # Stationary: the share of short histories is the same early and late in the stream.
    short = steps[:, 1] < 10
    assert abs(short[:20_000].mean() - short[-20_000:].mean()) < 0.01


# -- head permutation: a retrain's symmetry --------------------------------------------------------


def _per_event_stats(model, histories, catalog, per_head):
    genre = catalog.genre_matrix()
    out = np.empty((len(histories), len(STATISTICS), model.config.layers) + ((model.config.heads,) if per_head else ()),
                   dtype=np.float32)
    for chunk in recompute(model, histories, max_len=model.config.max_len):
        out[chunk.rows] = compute(chunk.weights, chunk.lengths, chunk.item_index, genre, StatsConfig(per_head=per_head))
    return out


def _update_run(root, data, v1, v2, seed=3):
    run = ScenarioRun(root, judge_config=JudgeConfig(reference_events=300, min_samples=100, reference_seconds=0.0),
                      paired_config=PairedConfig(min_pairs=50, min_users=20), seed=seed)
    factory = EventFactory(serving_traffic(data, seed), load_models(root, [v1, v2]),
                           build_scenario("benign_update", {"base": v1, "benign": v2}, at=2500), seed=seed, batch=250)
    return run.run(factory, 4000, judge_every=250)


def test_head_permutation_changes_nothing_the_agent_compares_across_versions(tiny, data):
    root, versions, _, _ = tiny
    loaded = checkpoint.load(root / versions["base"])
    model = loaded.model
    swapped = permute_heads(model, [[1, 0], [1, 0]])
    histories = [seq[: 5 + i % 40] for i, seq in enumerate(data.sequences[:600])]
    padded = torch.from_numpy(np.stack([np.pad(h[-20:], (20 - len(h[-20:]), 0)) for h in histories]))

    with torch.inference_mode():
        torch.testing.assert_close(swapped.scores(padded), model.scores(padded), rtol=1e-5, atol=1e-5)
        rows, rows_swapped = model.attention_rows(padded), swapped.attention_rows(padded)
    torch.testing.assert_close(rows_swapped, rows[:, :, [1, 0]], rtol=1e-5, atol=1e-6)

    # Head-averaged statistics (what crosses versions) are the same; per-head ones are not.
    averaged = _per_event_stats(model, histories, loaded.catalog, per_head=False)
    np.testing.assert_allclose(_per_event_stats(swapped, histories, loaded.catalog, per_head=False), averaged, atol=1e-5)
    heads = _per_event_stats(model, histories, loaded.catalog, per_head=True)  # [B, S, layers, heads]
    heads_swapped = _per_event_stats(swapped, histories, loaded.catalog, per_head=True)
    np.testing.assert_allclose(heads_swapped, heads[..., [1, 0]], atol=1e-5)
    naive = [scipy_stats.ks_2samp(heads[:, s, layer, h], heads_swapped[:, s, layer, h]).pvalue
             for s in range(len(STATISTICS)) for layer in range(2) for h in range(2)]
    assert sum(p < 0.05 for p in naive) >= 4  # a naive per-head comparison "sees" a new model

    # Through the pipeline: an update to the permuted model is judged exactly like an update to an
    # identical copy -- same windows, same scores, same (absent) verdicts -- and pairs see no change.
    permuted_version = checkpoint.save(swapped, loaded.catalog, {}, root, label="tiny-heads-swapped")
    copy_version = checkpoint.save(model, loaded.catalog, {}, root, label="tiny-copy")
    permuted = _update_run(root, data, versions["base"], permuted_version)
    copied = _update_run(root, data, versions["base"], copy_version)
    judged = paired_judged = 0
    for a, b in zip(permuted, copied, strict=True):
        ra = {(r.key.dimension, r.key.cohort, r.key.statistic, r.key.layer): r for r in a.report.results if r.kind == MODEL_UPDATE}
        rb = {(r.key.dimension, r.key.cohort, r.key.statistic, r.key.layer): r for r in b.report.results if r.kind == MODEL_UPDATE}
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key].samples == rb[key].samples and ra[key].flagged == rb[key].flagged
            assert ra[key].score == pytest.approx(rb[key].score, abs=0.02)
        judged += len(ra)
        assert [(v.cohort, v.kind, v.drifting) for v in a.report.cohorts] == [(v.cohort, v.kind, v.drifting) for v in b.report.cohorts]
        assert a.paired.model_caused == () and all(r.mean_js < 1e-3 for r in a.paired.results)
        paired_judged += len(a.paired.results)
    assert judged > 100 and paired_judged > 0


def test_cohort_shift_alters_only_the_chosen_cohort_after_start(tiny, data):
    root, versions, _, _ = tiny
    models = load_models(root, [versions["base"]])
    traffic = serving_traffic(data, seed=1)
    start, count = 600, 1500
    plain = build_scenario("benign_update", {"base": versions["base"], "benign": versions["base"]}, at=count)
    shifted = cohort_shift(versions, start=start, field="platform", value="android", genre="Horror", strength=0.7)
    decode = msgspec.json.Decoder()
    a = [decode.decode(e) for b in EventFactory(traffic, models, plain, seed=5).events(count) for e in b]
    b = [decode.decode(e) for b in EventFactory(traffic, models, shifted, seed=5).events(count) for e in b]
    catalog = data.catalog
    horror = {int(catalog.item_ids[i]) for i, g in enumerate(catalog.item_genres) if "Horror" in g}
    changed = horror_before = horror_after = 0
    for index, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x["context"] == y["context"] == context_of(int(x["user_id"]))
        assert len(x["history"]) == len(y["history"])
        chosen = x["context"]["platform"] == "android"
        if index < start or not chosen:
            assert x["history"] == y["history"] and x["recommended"] == y["recommended"]
        else:
            changed += x["history"] != y["history"]
            horror_before += sum(i in horror for i in x["history"])
            horror_after += sum(i in horror for i in y["history"])
    android_after = sum(e["context"]["platform"] == "android" for e in a[start:])
    assert changed >= 0.95 * android_after > 100
    assert horror_after > 5 * horror_before
