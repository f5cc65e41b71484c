"""monitor.attention.stats: hand-made attention rows with known statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.attention.stats import STATISTICS, StatsConfig, compute, paired_divergence

S = {name: i for i, name in enumerate(STATISTICS)}
ATOL = 1e-5


def _batch(row: list[float], width: int, layers: int = 1, heads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One event whose n real weights (oldest first) are left-padded to width."""
    n = len(row)
    weights = np.zeros((1, layers, heads, width), dtype=np.float32)  # [B, layers, heads, L]
    weights[..., width - n :] = np.asarray(row, dtype=np.float32)
    return weights, np.array([n])


def _items(lengths: np.ndarray, width: int, item: int = 1) -> np.ndarray:
    """[B, L] left-padded item indices, all real positions = item."""
    real = np.arange(width)[None, :] >= (width - lengths)[:, None]
    return np.where(real, item, 0)


GENRES_2 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # pad, genre A, genre B


def _stats(row: list[float], width: int = 12, config: StatsConfig = StatsConfig()) -> dict[str, float]:
    weights, lengths = _batch(row, width)
    out = compute(weights, lengths, _items(lengths, width), GENRES_2, config)
    assert out.shape == (1, len(STATISTICS), 1) and out.dtype == np.float32
    return {name: float(out[0, i, 0]) for name, i in S.items()}


def test_statistics_order_is_fixed() -> None:
    assert STATISTICS == (
        "entropy", "max_weight", "topk_mass", "gini", "effective_span", "recent_mass", "genre_entropy",
    )  # fmt: skip


@pytest.mark.parametrize("n", [2, 5, 10, 12])
def test_uniform(n: int) -> None:
    q = 0.9
    got = _stats([1.0 / n] * n)
    assert got["entropy"] == pytest.approx(1.0, abs=ATOL)
    assert got["gini"] == pytest.approx(0.0, abs=ATOL)
    assert got["max_weight"] == pytest.approx(1.0 / n, abs=ATOL)
    assert got["topk_mass"] == pytest.approx(min(3, n) / n, abs=ATOL)
    assert got["effective_span"] == pytest.approx(math.ceil(q * n) / n, abs=ATOL)
    assert got["recent_mass"] == pytest.approx(min(5, n) / n, abs=ATOL)


def test_one_hot_on_last_item() -> None:
    n = 8
    got = _stats([0.0] * (n - 1) + [1.0])
    assert got["entropy"] == pytest.approx(0.0, abs=ATOL)
    assert got["gini"] == pytest.approx(1.0, abs=ATOL)
    assert got["max_weight"] == pytest.approx(1.0)
    assert got["topk_mass"] == pytest.approx(1.0)
    assert got["effective_span"] == pytest.approx(1.0 / n)
    assert got["recent_mass"] == pytest.approx(1.0)


def test_one_hot_on_oldest_item() -> None:
    n = 8
    got = _stats([1.0] + [0.0] * (n - 1))
    assert got["entropy"] == pytest.approx(0.0, abs=ATOL)
    assert got["gini"] == pytest.approx(1.0, abs=ATOL)
    assert got["max_weight"] == pytest.approx(1.0)
    assert got["effective_span"] == pytest.approx(1.0)
    assert got["recent_mass"] == pytest.approx(0.0, abs=ATOL)


def test_two_point() -> None:
    n = 6  # mass 0.5 on the oldest and on the most recent item
    got = _stats([0.5, 0, 0, 0, 0, 0.5])
    assert got["entropy"] == pytest.approx(math.log(2) / math.log(n), abs=ATOL)
    assert got["max_weight"] == pytest.approx(0.5)
    assert got["topk_mass"] == pytest.approx(1.0, abs=ATOL)
    # Gini of (0,0,0,0,.5,.5) is 4/6 (mean abs difference / 2 mean); scaled by (n-1)/n.
    assert got["gini"] == pytest.approx((4 / 6) / (5 / 6), abs=ATOL)
    assert got["effective_span"] == pytest.approx(1.0)  # 0.9 of the mass needs the oldest item
    assert got["recent_mass"] == pytest.approx(0.5, abs=ATOL)


def test_single_item_history_convention() -> None:
    got = _stats([1.0])
    assert got == pytest.approx(
        {"entropy": 0.0, "max_weight": 1.0, "topk_mass": 1.0, "gini": 1.0, "effective_span": 1.0,
         "recent_mass": 1.0, "genre_entropy": 0.0}
    )  # fmt: skip


def test_config_parameters_change_results() -> None:
    row = [0.1] * 10
    got = _stats(row, config=StatsConfig(top_k=5, recent_k=2, span_quantile=0.5))
    assert got["topk_mass"] == pytest.approx(0.5, abs=ATOL)
    assert got["recent_mass"] == pytest.approx(0.2, abs=ATOL)
    assert got["effective_span"] == pytest.approx(0.5, abs=ATOL)
    big = _stats(row, config=StatsConfig(top_k=50, recent_k=50))
    assert big["topk_mass"] == pytest.approx(1.0, abs=ATOL)
    assert big["recent_mass"] == pytest.approx(1.0, abs=ATOL)


def test_padding_placement_independence() -> None:
    rng = np.random.default_rng(7)
    row = rng.dirichlet(np.ones(9)).tolist()
    narrow, wide = _stats(row, width=9), _stats(row, width=300)
    assert narrow == pytest.approx(wide, abs=ATOL)


def test_nonzero_padding_is_ignored() -> None:
    weights, lengths = _batch([0.25] * 4, 10)
    dirty = weights.copy()
    dirty[..., :6] = 0.3  # garbage in the padding columns
    dirty[..., 0] = np.nan
    dirty[..., 1] = np.inf
    clean = compute(weights, lengths, _items(lengths, 10), GENRES_2)
    assert np.allclose(compute(dirty, lengths, _items(lengths, 10), GENRES_2), clean, atol=ATOL)


def _random_batch(rng: np.random.Generator, batch: int, layers: int, heads: int, width: int):
    lengths = rng.integers(1, width + 1, batch)
    real = np.arange(width)[None, :] >= (width - lengths)[:, None]  # [B, L]
    weights = np.exp(rng.normal(size=(batch, layers, heads, width)) * 2) * real[:, None, None, :]
    weights = (weights / weights.sum(-1, keepdims=True)).astype(np.float32)
    items = np.where(real, rng.integers(1, 3, (batch, width)), 0)
    return weights, lengths, items


def test_head_average_invariant_to_head_permutation() -> None:
    rng = np.random.default_rng(0)
    weights, lengths, items = _random_batch(rng, 16, 2, 4, 30)
    permuted = weights[:, :, [2, 0, 3, 1], :]
    assert np.allclose(compute(weights, lengths, items, GENRES_2), compute(permuted, lengths, items, GENRES_2))


def test_per_head_shape_and_values() -> None:
    rng = np.random.default_rng(1)
    weights, lengths, items = _random_batch(rng, 5, 2, 3, 20)
    out = compute(weights, lengths, items, GENRES_2, StatsConfig(per_head=True))
    assert out.shape == (5, len(STATISTICS), 2, 3)
    one_head = compute(weights[:, :, 1:2, :], lengths, items, GENRES_2)  # [B, S, layers]
    assert np.allclose(out[..., 1], one_head, atol=ATOL)


def test_all_statistics_in_unit_interval_on_random_rows() -> None:
    rng = np.random.default_rng(2)
    weights, lengths, items = _random_batch(rng, 200, 2, 2, 50)
    out = compute(weights, lengths, items, GENRES_2)
    assert out.shape == (200, len(STATISTICS), 2)
    assert np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()


def test_batch_rows_are_independent() -> None:
    rng = np.random.default_rng(3)
    weights, lengths, items = _random_batch(rng, 8, 2, 2, 25)
    whole = compute(weights, lengths, items, GENRES_2)
    for b in range(8):
        alone = compute(weights[b : b + 1], lengths[b : b + 1], items[b : b + 1], GENRES_2)
        assert np.allclose(whole[b], alone[0], atol=ATOL)


def test_genre_entropy_on_crafted_matrix() -> None:
    genres = np.array(
        [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0, 0]], dtype=np.float32
    )  # pad, A, B, A+B, no genre
    width = 6

    def genre_entropy(row: list[float], items: list[int]) -> float:
        weights, lengths = _batch(row, width)
        index = np.zeros((1, width), dtype=np.int64)
        index[0, width - len(items) :] = items
        return float(compute(weights, lengths, index, genres)[0, S["genre_entropy"], 0])

    log4 = math.log(4)
    assert genre_entropy([0.5, 0.5], [1, 1]) == pytest.approx(0.0, abs=ATOL)  # all mass on A
    assert genre_entropy([0.5, 0.5], [1, 2]) == pytest.approx(math.log(2) / log4, abs=ATOL)
    assert genre_entropy([1.0, 0.0], [3, 1]) == pytest.approx(math.log(2) / log4, abs=ATOL)  # A+B item
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / log4
    assert genre_entropy([0.5, 0.5], [1, 3]) == pytest.approx(h, abs=ATOL)  # A: .5 + .25, B: .25
    # mass on an item without genres is dropped and the rest renormalised
    assert genre_entropy([0.5, 0.25, 0.25], [4, 1, 2]) == pytest.approx(math.log(2) / log4, abs=ATOL)
    assert genre_entropy([1.0], [4]) == pytest.approx(0.0, abs=ATOL)


def test_input_validation() -> None:
    weights, lengths = _batch([0.5, 0.5], 4)
    items = _items(lengths, 4)
    with pytest.raises(ValueError):
        compute(weights[0], lengths, items, GENRES_2)  # not 4-D
    with pytest.raises(ValueError):
        compute(weights, np.array([0]), items, GENRES_2)  # n < 1
    with pytest.raises(ValueError):
        compute(weights, np.array([5]), items, GENRES_2)  # n > L
    with pytest.raises(ValueError):
        compute(weights, lengths, items[:, 1:], GENRES_2)  # wrong item_index shape
    with pytest.raises(ValueError):
        compute(weights, lengths, items + 5, GENRES_2)  # index outside the genre matrix
    for bad in ({"top_k": 0}, {"recent_k": -1}, {"span_quantile": 0.0}, {"span_quantile": 1.5}, {"top_k": 2.0}):
        with pytest.raises(ValueError):
            StatsConfig(**bad)  # type: ignore[arg-type]


def test_empty_batch() -> None:
    out = compute(np.zeros((0, 2, 2, 7), np.float32), np.zeros(0, np.int64), np.zeros((0, 7), np.int64), GENRES_2)
    assert out.shape == (0, len(STATISTICS), 2)


def test_paired_divergence_identical_rows() -> None:
    rng = np.random.default_rng(4)
    weights, lengths, _ = _random_batch(rng, 32, 1, 1, 40)
    rows = weights[:, 0, 0, :]
    js, overlap = paired_divergence(rows, rows.copy(), lengths, top_k=3)
    assert js.shape == overlap.shape == (32,)
    assert np.allclose(js, 0.0, atol=1e-3)  # sqrt amplifies float error near 0
    assert np.array_equal(overlap, np.ones(32, dtype=np.float32))


def test_paired_divergence_disjoint_one_hots() -> None:
    width = 10
    old = np.zeros((2, width), np.float32)
    new = np.zeros((2, width), np.float32)
    old[:, -1] = 1.0  # both histories have 4 items; old attends the newest, new the oldest
    new[:, -4] = 1.0
    js, overlap = paired_divergence(old, new, np.array([4, 4]), top_k=1)
    assert np.allclose(js, 1.0, atol=ATOL)
    assert np.array_equal(overlap, np.zeros(2, dtype=np.float32))


def test_paired_divergence_partial_overlap_and_short_history() -> None:
    old = np.array([[0, 0, 0.5, 0.3, 0.2], [0, 0, 0, 0, 1.0]], np.float32)
    new = np.array([[0, 0, 0.2, 0.3, 0.5], [0, 0, 0, 0, 1.0]], np.float32)
    js, overlap = paired_divergence(old, new, np.array([3, 1]), top_k=2)
    # row 0: top-2 {oldest, middle} vs {newest, middle} -> 1 of 2 shared; row 1: k = min(2, 1)
    assert overlap.tolist() == [0.5, 1.0]
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    m = (p + q) / 2
    expected = math.sqrt(0.5 * (p * np.log2(p / m)).sum() + 0.5 * (q * np.log2(q / m)).sum())
    assert js[0] == pytest.approx(expected, abs=ATOL)
    assert js[1] == pytest.approx(0.0, abs=1e-3)


def test_paired_divergence_validation() -> None:
    rows = np.full((1, 4), 0.25, np.float32)
    with pytest.raises(ValueError):
        paired_divergence(rows, rows[:, 1:], np.array([3]))
    with pytest.raises(ValueError):
        paired_divergence(rows, rows, np.array([4]), top_k=0)


def test_topk_sets_match_a_stable_sort_on_tied_rows() -> None:
    from monitor.attention.stats import _top_positions

    rng = np.random.default_rng(5)
    for _ in range(100):
        width = int(rng.integers(1, 30))
        rows = rng.integers(0, 4, (20, width)).astype(np.float64)  # many ties
        k = rng.integers(1, width + 1, (20, 1))
        order = np.argsort(-rows[:, ::-1], axis=-1, kind="stable")  # ties -> more recent first
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.broadcast_to(np.arange(width), order.shape), axis=-1)
        assert np.array_equal(_top_positions(rows, k), (rank < k)[:, ::-1])


def test_paired_divergence_empty_batch() -> None:
    js, overlap = paired_divergence(np.zeros((0, 5)), np.zeros((0, 5)), np.zeros(0, np.int64))
    assert js.shape == overlap.shape == (0,)
