"""The item-mass sketch: its error bound and merge against exact masses on random streams,
and its checkpoint state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from monitor.drift.items import Attended, ItemSketch


def stream(rng: np.random.Generator, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random weighted batches over a Zipf-like catalogue (a few heavy items, a long tail)."""
    items = int(rng.integers(20, 3000))
    popularity = 1.0 / np.arange(1, items + 1) ** rng.uniform(0.3, 1.5)
    popularity /= popularity.sum()
    ids = rng.permutation(np.unique(rng.integers(0, 10_000_000, 2 * items)))[:items]  # sparse raw ids
    out = []
    for _ in range(batches):
        size = int(rng.integers(1, 2000))
        out.append((ids[rng.choice(items, size, p=popularity)], rng.uniform(0.0, 1.0, size)))
    return out


def exact(batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[int, float]:
    items = np.concatenate([i for i, _ in batches])
    unique, inverse = np.unique(items, return_inverse=True)
    return dict(zip(unique.tolist(), np.bincount(inverse, weights=np.concatenate([m for _, m in batches])).tolist()))


def check_bound(sketch: ItemSketch, truth: dict[int, float]) -> None:
    ids = np.array(list(truth), dtype=np.int64)
    true = np.array([truth[i] for i in ids.tolist()])
    counted = sketch.estimate(ids)
    bound = sketch.error_bound()
    total = sum(truth.values())
    assert sketch.mass_total() == pytest.approx(total)
    assert bound <= total / (sketch.capacity + 1) + 1e-9
    assert (counted <= true + 1e-9).all()  # never above the true mass
    assert (counted >= true - bound - 1e-9).all()  # never further below than the bound
    assert np.count_nonzero(sketch.mass[:, 0]) <= sketch.capacity
    held = set(sketch.items[sketch.mass[:, 0] > 0].tolist())
    assert set(ids[true > bound + 1e-9].tolist()) <= held  # every item above it is held


@pytest.mark.parametrize("seed", range(40))
def test_error_bound_holds_on_random_streams(seed: int) -> None:
    rng = np.random.default_rng(seed)
    batches = stream(rng, int(rng.integers(1, 30)))
    sketch = ItemSketch(capacity=int(rng.integers(1, 300)))
    for items, mass in batches:
        sketch.add(items, mass)
    check_bound(sketch, exact(batches))


@pytest.mark.parametrize("seed", range(40))
def test_merged_sketches_keep_the_bound_of_the_whole_stream(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    batches = stream(rng, int(rng.integers(2, 30)))
    capacity = int(rng.integers(1, 300))
    parts = [ItemSketch(capacity) for _ in range(int(rng.integers(2, 6)))]
    for items, mass in batches:  # replicas see interleaved parts of the stream
        parts[int(rng.integers(len(parts)))].add(items, mass)
    merged = ItemSketch(capacity)
    for part in parts:  # merges of merges too
        if rng.random() < 0.5:
            merged.merge(part.copy())
        else:
            merged.merge(part)
    check_bound(merged, exact(batches))


def test_a_sketch_that_holds_every_item_is_exact() -> None:
    sketch = ItemSketch(capacity=10)
    sketch.add(np.array([1, 2, 1, 3]), np.array([0.5, 0.25, 0.25, 1.0]))
    assert sketch.error_bound() == 0.0
    assert sketch.top(3) == [(3, 1.0), (1, 0.75), (2, 0.25)]


def test_heavy_hitters_are_found_in_a_long_tail() -> None:
    rng = np.random.default_rng(3)
    tail = rng.integers(100, 100_000, 200_000)
    items = np.concatenate([tail, np.repeat([7, 8, 9], 5_000)])  # 3 items with 2.5 % each
    sketch = ItemSketch(capacity=64)
    for part in np.array_split(rng.permutation(items), 50):
        sketch.add(part, np.ones(part.size))
    assert [item for item, _ in sketch.top(3)] and {7, 8, 9} == {item for item, _ in sketch.top(3)}


def test_state_round_trip_is_exact_and_bounded() -> None:
    rng = np.random.default_rng(5)
    sketch = ItemSketch(capacity=128)
    batches = stream(rng, 20)
    for items, mass in batches:
        sketch.add(items, mass)
    state = json.loads(json.dumps(sketch.to_state()))
    restored = ItemSketch.from_state(state)
    assert restored.items.size <= 128 and len(json.dumps(state)) < 3_000
    assert restored == sketch
    check_bound(restored, exact(batches))


def test_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        ItemSketch(capacity=0)
    with pytest.raises(ValueError):
        ItemSketch().add(np.array([1, 2]), np.array([1.0]))
    state = ItemSketch(capacity=1).to_state()
    state["capacity"] = 0
    with pytest.raises(ValueError):
        ItemSketch.from_state(state)


@pytest.mark.parametrize("seed", range(20))
def test_layers_keep_their_own_bound(seed: int) -> None:
    """Two layers share the item ids; each keeps at most ``capacity`` counters and its own bound."""
    rng = np.random.default_rng(2000 + seed)
    batches = stream(rng, int(rng.integers(1, 20)))
    second = [(items, rng.uniform(0.0, 1.0, items.size) ** 3) for items, _ in batches]  # another layer's weights
    sketch = ItemSketch(capacity=int(rng.integers(1, 200)), layers=2)
    for (items, mass), (_, other) in zip(batches, second, strict=True):
        sketch.add(items, np.stack([mass, other], axis=1))
    assert sketch.items.size <= 2 * sketch.capacity
    for layer, layer_batches in enumerate((batches, second)):
        truth = exact(layer_batches)
        ids = np.array(list(truth), dtype=np.int64)
        true = np.array([truth[i] for i in ids.tolist()])
        counted = sketch.estimate(ids, layer)
        assert np.count_nonzero(sketch.mass[:, layer]) <= sketch.capacity
        assert sketch.mass_total(layer) == pytest.approx(true.sum())
        assert (counted <= true + 1e-9).all() and (counted >= true - sketch.error_bound(layer) - 1e-9).all()


@pytest.mark.parametrize("seed", range(5))
def test_mass_on_watched_items_matches_a_loop_over_entries(seed: int) -> None:
    """``Attended.on_watched``: each event's mass on the items its row watches, per layer,
    equals the sum over its entries (watched lists of any size, empty ones, unwatched events)."""
    rng = np.random.default_rng(seed)
    batch = 20
    for _ in range(40):
        k = int(rng.integers(1, 300))
        attended = Attended.of_raw(rng.integers(0, batch, k), rng.integers(1, 60, k), rng.random((k, 2)))
        watched = [[np.unique(rng.integers(1, 70, int(rng.integers(0, 6)))) for _ in range(2)]
                   for _ in range(int(rng.integers(1, 5)))]
        rows = rng.integers(-1, len(watched), batch)  # -1: the event's cohort watches nothing
        expected = np.zeros((batch, 2))
        for event, item, mass in zip(attended.event, attended.ids[attended.item], attended.mass, strict=True):
            if rows[event] >= 0:
                for layer in range(2):
                    expected[event, layer] += mass[layer] * (item in watched[rows[event]][layer])
        np.testing.assert_allclose(attended.on_watched(rows, watched, batch), expected)
