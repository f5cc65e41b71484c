"""Histogram, Sample and BaselineStore: bounded, collecting -> frozen (events, users, time), pinnable,
persistent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.drift.baseline import BaselineStore, CohortKey, ReferenceRule
from monitor.drift.histogram import Histogram
from monitor.drift.sample import SKETCH_DEPTH, SKETCH_WIDTH, USER_GROUPS, Sample, bin_batch
from monitor.drift.users import group_counters, sketch_cells, user_groups

KEY = CohortKey("v1", "platform", "ios")


def roundtrip(state: dict) -> dict:
    return json.loads(json.dumps(state))


# -- Histogram ---------------------------------------------------------------------


def test_histogram_bins_edges_clipping_and_nan() -> None:
    h = Histogram(bins=20)
    added = h.add(np.array([0.0, 0.049999, 0.05, 0.5, 0.999, 1.0, -3.0, 2.0, np.inf, np.nan, np.nan]))
    assert added == 9
    assert h.total == 9 and h.nan == 2 and h.clipped == 3
    assert h.counts[0] == 3  # 0.0, 0.049999, -3.0
    assert h.counts[1] == 1  # 0.05 starts bin 1
    assert h.counts[10] == 1
    assert h.counts[19] == 4  # 0.999, 1.0, 2.0, inf
    assert h.counts.sum() == h.total


def test_histogram_accepts_any_shape_and_empty() -> None:
    h = Histogram(4)
    assert h.add(np.empty(0)) == 0
    assert h.add(np.full((2, 3), 0.3)) == 6
    assert h.counts.tolist() == [0, 6, 0, 0]
    assert h.add(np.array([np.nan])) == 0 and h.nan == 1


def test_histogram_merge_reset_and_state() -> None:
    rng = np.random.default_rng(0)
    a, b = Histogram(), Histogram()
    x, y = rng.beta(2, 5, 1000), rng.beta(5, 2, 500)
    a.add(x)
    b.add(y)
    both = Histogram()
    both.add(np.concatenate([x, y]))
    a.merge(b)
    assert a == both and a.total == 1500
    restored = Histogram.from_state(roundtrip(a.to_state()))
    assert restored == a and restored.total == 1500
    a.reset()
    assert a.total == 0 and a.counts.sum() == 0
    with pytest.raises(ValueError):
        a.merge(Histogram(10))


def test_histogram_quantile_and_mean_are_bin_accurate() -> None:
    rng = np.random.default_rng(1)
    x = rng.beta(2, 5, 50_000)
    h = Histogram()
    h.add(x)
    for q in (0.1, 0.5, 0.9):
        assert abs(h.quantile(q) - np.quantile(x, q)) < 0.05
    assert abs(h.mean() - x.mean()) < 0.025
    assert np.isnan(Histogram().quantile(0.5))


@pytest.mark.parametrize("bins", [0, 1, 100_000])
def test_histogram_rejects_bad_bins(bins: int) -> None:
    with pytest.raises(ValueError):
        Histogram(bins)


def test_histogram_state_is_validated() -> None:
    with pytest.raises(ValueError):
        Histogram.from_state({"bins": 4, "counts": [1, 2, 3]})
    with pytest.raises(ValueError):
        Histogram.from_state({"bins": 3, "counts": [1, -2, 3]})


# -- BaselineStore -----------------------------------------------------------------


def sample_of(values: np.ndarray, users: np.ndarray | None = None) -> Sample:
    """A one-series, one-stratum sample of ``values`` (each its own user unless ``users``)."""
    sample = Sample(1, 1, 20)
    hashes = np.arange(len(values), dtype=np.uint64) if users is None else users
    one = np.zeros(len(values), int)
    binned = bin_batch(values[:, None], one, one, 1, 1, 20, user_groups(hashes, USER_GROUPS))
    cells, signs = sketch_cells(hashes, SKETCH_WIDTH, SKETCH_DEPTH)
    sample.add(binned.counts[0], binned.by_group[0], group_counters(cells, signs, one, 1, SKETCH_WIDTH)[0],
               len(values), int(binned.nan[0]), int(binned.clipped[0]))
    return sample


def collect(store: BaselineStore, key: CohortKey, values: np.ndarray, now: float | None = None,
            users: np.ndarray | None = None) -> tuple[int, bool]:
    """What the judge does with a batch for a collecting baseline: (events taken, froze)."""
    if store.get(key) is None:
        store.start(key, (1, 1, 20), now)
    taken = store.take(key, len(values), now)
    store.get(key).sample.merge(sample_of(values[:taken], None if users is None else users[:taken]))
    return taken, store.settle(key, now)


def test_collecting_then_frozen_on_count_splits_the_crossing_batch() -> None:
    store = BaselineStore(ReferenceRule(events=100, users=10, seconds=0))
    assert collect(store, KEY, np.full(60, 0.2), now=0.0) == (60, False)
    assert store.status(KEY) == "collecting" and store.reference(KEY) is None
    assert collect(store, KEY, np.full(70, 0.8), now=1.0) == (40, True)  # 40 complete it; 30 are the caller's
    assert store.status(KEY) == "frozen"
    ref = store.reference(KEY)
    assert ref is not None and ref.events == 100
    assert store.get(KEY).frozen_at == 1.0 and store.collecting() == 0


def test_freezing_also_waits_for_reference_seconds() -> None:
    store = BaselineStore(ReferenceRule(events=100, users=10, seconds=60.0))
    collect(store, KEY, np.full(150, 0.3), now=0.0)
    assert store.status(KEY) == "collecting"  # enough events, not long enough
    collect(store, KEY, np.full(50, 0.3), now=30.0)
    assert store.status(KEY) == "collecting" and store.get(KEY).sample.events == 200
    assert store.freeze_due(59.0) == []
    assert store.freeze_due(60.0) == [KEY]
    assert store.status(KEY) == "frozen" and store.get(KEY).frozen_at == 60.0
    # Long enough but too few events: keeps collecting.
    other = KEY._replace(cohort="android")
    collect(store, other, np.full(10, 0.3), now=0.0)
    assert store.freeze_due(1000.0) == []
    assert collect(store, other, np.full(200, 0.3), now=1000.0) == (90, True)


def test_freezing_also_waits_for_enough_users() -> None:
    """Events of few users repeat each other: 300 events of 4 users are not a reference."""
    store = BaselineStore(ReferenceRule(events=100, users=20, seconds=0))
    few = np.arange(300, dtype=np.uint64) % 4
    assert collect(store, KEY, np.full(300, 0.3), users=few) == (300, False)
    assert store.freeze_due(10.0) == [] and store.status(KEY) == "collecting"
    # A batch that brings the users is taken whole: whether it does is known once it is counted.
    assert collect(store, KEY, np.full(500, 0.3)) == (500, True)
    assert store.get(KEY).sample.events == 800


def test_pinned_version_uses_the_known_good_baseline() -> None:
    store = BaselineStore(ReferenceRule(events=50, users=1, seconds=0))
    good = KEY
    collect(store, good, np.full(50, 0.1))
    store.pin("v2", "v1")
    v2 = KEY.with_version("v2")
    assert v2 not in store  # a pinned version collects nothing of its own
    assert store.status(v2) == "pinned"
    assert store.resolve(v2) == good
    assert store.reference(v2) is store.reference(good)
    # Chains resolve, loops are refused.
    store.pin("v3", "v2")
    assert store.resolve(KEY.with_version("v3")) == good
    with pytest.raises(ValueError):
        store.pin("v1", "v3")
    with pytest.raises(ValueError):
        store.pin("v1", "v1")
    # Pinned to a version whose baseline is not ready: no reference.
    store.pin("v4", "v9")
    assert store.reference(KEY.with_version("v4")) is None
    store.unpin("v2")
    assert store.status(v2) == "absent"


def test_forget_drops_a_versions_baselines_and_pin() -> None:
    store = BaselineStore(ReferenceRule(events=10, users=1, seconds=0))
    for i in range(3):
        collect(store, KEY._replace(cohort=f"c{i}"), np.full(4, 0.5))
    collect(store, KEY.with_version("v0"), np.full(4, 0.5))
    store.pin("v1", "v0")
    assert store.forget("v1") == 3 and len(store) == 1 and store.pinned_to("v1") is None


def test_store_state_round_trip() -> None:
    rng = np.random.default_rng(2)
    rule = ReferenceRule(events=100, users=10, seconds=5.0)
    store = BaselineStore(rule)
    collect(store, KEY, rng.beta(2, 5, 150), now=10.0)
    store.freeze_due(20.0)
    half = KEY._replace(cohort="android")
    collect(store, half, rng.beta(2, 5, 40), now=12.0)
    store.pin("v0", "v1")
    loaded = BaselineStore.from_state(roundtrip(store.to_state()), rule)
    assert loaded.to_state() == store.to_state()
    assert loaded.reference(KEY) == store.reference(KEY)
    assert loaded.status(half) == "collecting" and loaded.get(half).started_at == 12.0
    assert loaded.resolve(KEY.with_version("v0")) == KEY
    # Continuing both gives the same outcome.
    more = rng.beta(2, 5, 100)
    assert collect(loaded, half, more, now=30.0) == collect(store, half, more, now=30.0)
    assert loaded.to_state() == store.to_state()


def test_store_validates_the_rule() -> None:
    for rule in (ReferenceRule(0, 1, 0), ReferenceRule(1, -1, 0), ReferenceRule(1, 1, -1.0)):
        with pytest.raises(ValueError):
            BaselineStore(rule)


def test_nan_does_not_count_in_the_bins_but_the_event_counts() -> None:
    sample = sample_of(np.array([np.nan] * 5 + [0.5] * 5))
    assert sample.events == 10 and sample.counts.sum() == 5 and sample.nan == 5
    state = roundtrip(sample.to_state())
    assert Sample.from_state(state) == sample


def test_design_effects_follow_how_much_a_users_events_repeat() -> None:
    """50 users x 40 events. Repeats of one value per user: 40 events are one observation (Kish's
    design effect, 40). Independent draws: no inflation at all. The estimate from random groups
    of users tells them apart; Kish's bound alone cannot."""
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(50, dtype=np.uint64), 40)
    level = np.repeat(rng.beta(2, 5, 50), 40)
    repeats = sample_of(level, users)
    independent = sample_of(rng.beta(2, 5, 2000), users)
    halfway = sample_of(np.clip(level + rng.normal(0, 0.1, 2000), 0, 1), users)
    for sample in (repeats, independent, halfway):
        assert sample.design_effect() == pytest.approx(40, rel=0.1)  # Kish sees the same users each time
    assert repeats.design_effects()[0] == pytest.approx(repeats.design_effect())  # at the bound
    assert 1.0 <= independent.design_effects()[0] < 2.0
    assert 3.0 < halfway.design_effects()[0] < 0.8 * repeats.design_effects()[0]
    merged = independent.copy()
    merged.merge(independent)  # the same users again: groups and sketch add up alike
    assert merged.by_group.sum() == 2 * independent.by_group.sum() == 4000
