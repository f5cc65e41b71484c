"""Histogram and BaselineStore: bounded, collecting -> frozen, pinnable, persistent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.drift.baseline import BaselineStore, SeriesKey
from monitor.drift.histogram import Histogram

KEY = SeriesKey("v1", "platform", "ios", "entropy", 0)


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


def test_collecting_then_frozen_on_count_splits_the_crossing_batch() -> None:
    store = BaselineStore(reference_events=100)
    first = store.observe(KEY, np.full(60, 0.2), now=0.0)
    assert first == (60, False, "collecting")
    assert store.status(KEY) == "collecting" and store.reference(KEY) is None
    second = store.observe(KEY, np.full(70, 0.8), now=1.0)
    assert second == (40, True, "collecting")  # 40 complete the reference; 30 are the caller's
    assert store.status(KEY) == "frozen"
    ref = store.reference(KEY)
    assert ref is not None and ref.total == 100
    third = store.observe(KEY, np.full(10, 0.5), now=2.0)
    assert third == (0, False, "frozen")
    assert store.reference(KEY).total == 100  # frozen means frozen
    assert store.get(KEY).frozen_at == 1.0 and store.collecting() == 0


def test_freezing_also_waits_for_reference_seconds() -> None:
    store = BaselineStore(reference_events=100, reference_seconds=60.0)
    store.observe(KEY, np.full(150, 0.3), now=0.0)
    assert store.status(KEY) == "collecting"  # enough events, not long enough
    store.observe(KEY, np.full(50, 0.3), now=30.0)
    assert store.status(KEY) == "collecting" and store.get(KEY).histogram.total == 200
    assert store.freeze_due(59.0) == []
    assert store.freeze_due(60.0) == [KEY]
    assert store.status(KEY) == "frozen" and store.get(KEY).frozen_at == 60.0
    # Long enough but too few events: keeps collecting.
    other = KEY._replace(cohort="android")
    store.observe(other, np.full(10, 0.3), now=0.0)
    assert store.freeze_due(1000.0) == []
    intake = store.observe(other, np.full(200, 0.3), now=1000.0)
    assert intake == (90, True, "collecting")


def test_nan_does_not_count_towards_the_reference() -> None:
    store = BaselineStore(reference_events=10)
    store.observe(KEY, np.array([np.nan] * 5 + [0.5] * 5))
    assert store.status(KEY) == "collecting" and store.get(KEY).histogram.total == 5
    store.observe(KEY, np.full(5, 0.5))
    assert store.status(KEY) == "frozen"


def test_pinned_version_uses_the_known_good_baseline() -> None:
    store = BaselineStore(reference_events=50)
    good = KEY
    store.observe(good, np.full(50, 0.1))
    store.pin("v2", "v1")
    v2 = KEY.with_version("v2")
    assert store.observe(v2, np.full(80, 0.9)) == (0, False, "pinned")
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


def test_key_cap_refuses_and_counts() -> None:
    store = BaselineStore(reference_events=10, max_keys=3)
    keys = [KEY._replace(cohort=f"c{i}") for i in range(5)]
    outcomes = [store.observe(k, np.full(4, 0.5)).outcome for k in keys]
    assert outcomes == ["collecting"] * 3 + ["refused"] * 2
    assert len(store) == 3 and store.counts["refused_key_cap"] == 8
    assert store.observe(keys[0], np.full(4, 0.5)).outcome == "collecting"  # known keys still fine
    store.forget("v1")
    assert len(store) == 0
    assert store.observe(keys[4], np.full(4, 0.5)).outcome == "collecting"


def test_store_state_round_trip_and_overrides() -> None:
    rng = np.random.default_rng(2)
    store = BaselineStore(reference_events=100, reference_seconds=5.0, max_keys=10)
    store.observe(KEY, rng.beta(2, 5, 150), now=10.0)
    store.freeze_due(20.0)
    half = KEY._replace(cohort="android")
    store.observe(half, rng.beta(2, 5, 40), now=12.0)
    store.pin("v0", "v1")
    store.observe(KEY._replace(cohort=f"x"), np.zeros(1))
    loaded = BaselineStore.from_state(roundtrip(store.to_state()))
    assert loaded.to_state() == store.to_state()
    assert loaded.reference(KEY) == store.reference(KEY)
    assert loaded.status(half) == "collecting" and loaded.get(half).started_at == 12.0
    assert loaded.resolve(KEY.with_version("v0")) == KEY
    # Continuing both gives the same outcome.
    more = rng.beta(2, 5, 100)
    assert loaded.observe(half, more, now=30.0) == store.observe(half, more, now=30.0)
    # Settings may change, bins may not.
    bigger = BaselineStore.from_state(store.to_state(), max_keys=100)
    assert bigger.max_keys == 100
    with pytest.raises(ValueError):
        BaselineStore.from_state(store.to_state(), bins=10)
    with pytest.raises(TypeError):
        BaselineStore.from_state(store.to_state(), referenceevents=3)


def test_store_validates_settings() -> None:
    for kwargs in ({"reference_events": 0}, {"reference_seconds": -1.0}, {"max_keys": 0}, {"bins": 1}):
        with pytest.raises(ValueError):
            BaselineStore(**kwargs)


def test_nan_in_the_crossing_batch_does_not_lose_values() -> None:
    store = BaselineStore(reference_events=10)
    store.observe(KEY, np.full(6, 0.5))
    values = np.array([0.1, np.nan, 0.2, np.nan, 0.3, 0.4, 0.9, 0.9])
    intake = store.observe(KEY, values)
    # Four valid values complete the reference; the NaNs among them are counted, the rest is left over.
    assert intake == (6, True, "collecting")
    assert store.get(KEY).histogram.total == 10 and store.get(KEY).histogram.nan == 2
