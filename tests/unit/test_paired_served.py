"""The paired served-list test: what each version would serve on the same events. A retrain
that piles its lists onto a promoted handful is a model-caused change although its attention
rows move like a benign retrain's; one that serves other items, as spread, is not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.drift.paired import PairCohort, PairedComparison, PairedConfig, PairKey
from monitor.drift.served_pairs import ServedPairs, judge_lists
from monitor.drift.users import hash_users

COHORT = PairCohort("v2", "platform", "ios")
CONFIG = PairedConfig(min_pairs=100, min_users=30.0, served_min_lists=200)


def _lists(rng: np.random.Generator, n: int, catalogue: np.ndarray, promoted: np.ndarray | None = None,
           share: float = 0.0) -> np.ndarray:
    """n lists of 10 titles from ``catalogue``, popular ones more often (Zipf-like, as served lists
    are); with ``promoted``, each slot is one of them with probability ``share``."""
    weights = 1.0 / np.arange(1, len(catalogue) + 1) ** 0.8
    lists = rng.choice(catalogue, (n, 10), p=weights / weights.sum())
    if promoted is not None:
        lists = np.where(rng.random((n, 10)) < share, rng.choice(promoted, (n, 10)), lists)
    return lists


def _update(seed: int, new_lists, windows: int = 4, n: int = 150) -> list:
    """A comparison fed ``windows`` windows of n benign-looking pairs (rows moved like a retrain's)
    whose new lists come from ``new_lists(rng, n)``; the last layer's result of each round."""
    rng = np.random.default_rng(seed)
    paired = PairedComparison(CONFIG)
    out = []
    for t in range(windows):
        users = hash_users([f"user-{u}" for u in rng.integers(0, 400, n)])
        js = rng.beta(2, 8, (n, 2))
        paired.observe(COHORT, js, 1.0 - js, users)
        paired.observe_served(COHORT, _lists(rng, n, np.arange(1, 3001)), new_lists(rng, n), users)
        out.append({r.key.layer: r for r in paired.judge(float(t)).results})
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lists_piled_on_a_promoted_handful_are_a_model_caused_change(seed: int) -> None:
    rounds = _update(seed, lambda rng, n: _lists(rng, n, np.arange(1, 3001), np.arange(1, 6), 0.4))
    last = rounds[-1][1]
    assert [r[1].served_flagged for r in rounds] == [False, True, True, True]  # 150 lists, then 300, ...
    assert [r[1].model_caused for r in rounds] == [False, False, True, True]
    assert not any(r[0].flagged or r[1].rows_flagged for r in rounds), "the rows moved like a retrain's"
    assert last.served_ratio == pytest.approx(last.served_share / last.served_previous_share)
    assert last.served_ratio > 2.5 and 0.1 < last.served_previous_share < 0.2, "Zipf-like lists: ~16 % on the top 10"
    assert last.served_lists == 600 and rounds[-1][0].served_ratio is None, "judged on the last layer only"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lists_of_other_items_as_spread_are_not(seed: int) -> None:
    """A re-seed serves other titles than its predecessor (top-10 overlap ~0), as spread: the
    attention-style test ("the new top items gained share") would flag it; this one does not."""
    rounds = _update(seed, lambda rng, n: _lists(rng, n, np.arange(3001, 6001)))
    assert not any(r[1].served_flagged or r[1].model_caused for r in rounds)
    assert 0.5 < rounds[-1][1].served_ratio < 1.5


def test_a_twice_as_concentrated_version_below_the_floor_is_not_flagged() -> None:
    """Significant but under served_min_ratio: a retrain may sharpen its lists somewhat."""
    rng = np.random.default_rng(7)
    lists = ServedPairs()
    users = rng.integers(0, 2**63, 4000).astype(np.uint64)
    previous = _lists(rng, 4000, np.arange(1, 201))
    new = _lists(rng, 4000, np.arange(1, 121))
    lists.add(previous, new, users)
    out = judge_lists([lists], top_k=10)
    assert out.test.p_value[0] < 1e-6 and 1.2 < out.ratio[0] < 2.0


def test_a_heavy_users_repeated_lists_do_not_make_a_verdict() -> None:
    """20 users, each served the same concentrated list 30 times: 600 lists, 20 users' evidence.
    Their items are on top in one half of the users only, so the cross-fitted share stays low,
    and the design effect divides the counts."""
    rng = np.random.default_rng(8)
    lists = ServedPairs()
    own = rng.choice(np.arange(1, 3001), (20, 10))
    users = hash_users([f"heavy-{u}" for u in np.repeat(np.arange(20), 30)])
    lists.add(_lists(rng, 600, np.arange(1, 3001)), np.repeat(own, 30, axis=0), users)
    assert lists.users.design_effect() > 20
    out = judge_lists([lists], top_k=10)
    assert out.test.p_value[0] > 0.01


def test_empty_lists_are_left_out_and_shapes_checked() -> None:
    lists = ServedPairs()
    full = np.arange(1, 11)[None, :].repeat(3, axis=0)
    empty = np.full((3, 10), -1)
    lists.add(np.r_[full, empty[:1]], np.r_[full, full[:1]], np.arange(4, dtype=np.uint64))
    assert lists.lists == 3
    with pytest.raises(ValueError, match="lists must be"):
        lists.add(full, full[:2], np.arange(3, dtype=np.uint64))


def test_served_lists_survive_a_checkpoint_and_old_states_load() -> None:
    rng = np.random.default_rng(9)
    paired = PairedComparison(CONFIG)
    users = hash_users([f"user-{u}" for u in rng.integers(0, 400, 300)])
    js = rng.beta(2, 8, (300, 2))
    paired.observe(COHORT, js, 1.0 - js, users)
    paired.observe_served(COHORT, _lists(rng, 300, np.arange(1, 3001)),
                          _lists(rng, 300, np.arange(1, 3001), np.arange(1, 6), 0.3), users)
    state = json.loads(json.dumps(paired.to_state()))
    restored = PairedComparison.from_state(state)
    a = {r.key: r for r in paired.judge(1.0).results}
    b = {r.key: r for r in restored.judge(1.0).results}
    assert a == b and a[PairKey(*COHORT, 1)].served_flagged
    state["format"] = 4
    for entry in state["cohorts"]:
        del entry[6]
    old = PairedComparison.from_state(state)
    assert old._cohorts[COHORT].served is None
    assert all(r.served_ratio is None for r in old.judge(1.0).results)


def test_served_settings_are_checked() -> None:
    for bad in ({"served_min_ratio": 1.0}, {"served_slots": 0}, {"served_min_lists": 0}):
        with pytest.raises(ValueError, match="served"):
            PairedConfig(**bad)
