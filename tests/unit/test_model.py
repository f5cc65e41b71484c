"""The served model: data, split, causality, the attention API and its fast path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import PAD, leave_one_out, left_pad, load_movielens
from model.sasrec import SASRec, SASRecConfig


@pytest.fixture(scope="module")
def movielens():
    return load_movielens()


def test_movielens_shape_and_vocabulary(movielens):
    catalog = movielens.catalog
    assert catalog.n_items == 9066
    assert len(movielens.user_ids) == 671
    assert sum(len(s) for s in movielens.sequences) == 100_004
    assert catalog.item_ids[PAD] == 0 and catalog.titles[PAD] == "<pad>"
    every_index = np.concatenate(movielens.sequences)
    assert every_index.min() >= 1 and every_index.max() == catalog.n_items
    # Raw id <-> index round-trips, and unknown raw ids are reported, not guessed.
    assert catalog.index_of(int(catalog.item_ids[5])) == 5
    assert catalog.index_of(-7) is None
    indices, unknown = catalog.to_indices([int(catalog.item_ids[3]), 10**9])
    assert indices.tolist() == [3] and unknown == 1


def test_timelines_are_time_ordered_with_deterministic_ties(movielens):
    for seq, stamps in zip(movielens.sequences[:50], movielens.timestamps[:50], strict=True):
        assert np.all(np.diff(stamps) >= 0)
        raw = movielens.catalog.item_ids[seq]
        same_second = np.diff(stamps) == 0
        # Within one second the raw movieId decides the order.
        assert np.all(np.diff(raw)[same_second] > 0)
    again = load_movielens()
    assert all(np.array_equal(a, b) for a, b in zip(movielens.sequences, again.sequences, strict=True))


def test_genre_matrix_rows_are_normalised(movielens):
    matrix = movielens.catalog.genre_matrix()
    assert matrix.shape == (movielens.catalog.n_items + 1, len(movielens.catalog.genres))
    assert np.all(matrix[PAD] == 0)
    sums = matrix[1:].sum(axis=1)
    has_genre = np.array([bool(g) for g in movielens.catalog.item_genres[1:]])
    assert np.allclose(sums[has_genre], 1.0) and np.all(sums[~has_genre] == 0)


def test_leave_one_out_split(movielens):
    split = leave_one_out(movielens.sequences)
    for seq, train, vh, vt, th, tt in zip(
        movielens.sequences, split.train, split.valid_history, split.valid_target,
        split.test_history, split.test_target, strict=True,
    ):
        assert np.array_equal(train, seq[:-2]) and np.array_equal(vh, seq[:-2])
        assert vt == seq[-2] and tt == seq[-1] and np.array_equal(th, seq[:-1])
    with pytest.raises(ValueError, match="at least 3"):
        leave_one_out([np.array([1, 2])])


def test_left_pad_right_aligns_most_recent_items():
    padded = left_pad([np.array([1, 2, 3]), np.array([4, 5, 6, 7, 8])], 4)
    assert padded.tolist() == [[0, 1, 2, 3], [5, 6, 7, 8]]


def _tiny_model(seed: int = 0, **overrides) -> SASRec:
    torch.manual_seed(seed)
    config = SASRecConfig(**{"n_items": 50, "max_len": 12, "hidden": 16, "layers": 2, "heads": 2, "dropout": 0.0, **overrides})
    model = SASRec(config)
    model.eval()
    return model


def _histories(rng: np.random.Generator, batch: int, max_len: int, n_items: int) -> torch.Tensor:
    lengths = rng.integers(1, max_len + 1, size=batch)
    return torch.from_numpy(left_pad([rng.integers(1, n_items + 1, size=n) for n in lengths], max_len))


def test_config_validation_and_json():
    with pytest.raises(ValueError, match="divisible"):
        SASRecConfig(n_items=10, hidden=10, heads=3)
    with pytest.raises(ValueError, match="unknown"):
        SASRecConfig.from_json({"n_items": 10, "hiddden": 8})


def test_causality_outputs_ignore_the_future():
    model = _tiny_model()
    rng = np.random.default_rng(1)
    histories = _histories(rng, 8, 12, 50)
    histories[:, :] = torch.from_numpy(rng.integers(1, 51, size=(8, 12)))
    changed = histories.clone()
    t = 6
    changed[:, t + 1 :] = torch.from_numpy(rng.integers(1, 51, size=(8, 12 - t - 1)))
    with torch.inference_mode():
        before, weights_before = model._encode(histories)
        after, weights_after = model._encode(changed)
    assert torch.allclose(before[:, : t + 1], after[:, : t + 1], atol=1e-6)
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :], atol=1e-3)
    for w in weights_before:  # no query puts weight on a later key
        assert torch.all(w.triu(diagonal=1) == 0)


def test_attention_rows_sum_to_one_with_padding_at_zero():
    model = _tiny_model()
    histories = _histories(np.random.default_rng(2), 32, 12, 50)
    with torch.inference_mode():
        attention = model.attention(histories)
    assert attention.weights.shape == (32, 2, 2, 12)
    assert torch.allclose(attention.weights.sum(-1), torch.ones(32, 2, 2), atol=1e-6)
    pad = (histories == 0)[:, None, None, :].expand_as(attention.weights)
    assert torch.all(attention.weights[pad] == 0)
    assert torch.all(attention.weights[~pad] > 0)


def test_attention_scores_are_the_ranking_scores():
    model = _tiny_model()
    histories = _histories(np.random.default_rng(3), 16, 12, 50)
    with torch.inference_mode():
        attention = model.attention(histories)
        plain = model.scores(histories)
    assert torch.equal(attention.scores, plain)
    assert torch.all(torch.isinf(plain[:, 0]))


def test_attention_weights_are_the_ones_that_mix_the_values():
    """Recompute the last block's output by hand from the returned weights."""
    model = _tiny_model(layers=1)
    histories = _histories(np.random.default_rng(4), 8, 12, 50)
    block = model.blocks[0]
    with torch.inference_mode():
        weights = model.attention(histories).weights[:, 0]  # [B, H, L]
        x = model._embed(histories)
        _, _, v = block._split_qkv(block.attn_norm(x))  # [B, H, L, dh]
        context = (weights.unsqueeze(-2) @ v).squeeze(-2).reshape(8, -1)
        last = x[:, -1] + block.out(context)
        last = last + block.ffn(block.ffn_norm(last))
        expected = model._logits(model.final_norm(last))
        assert torch.allclose(expected, model.scores(histories), atol=1e-4)


@pytest.mark.parametrize("layers,heads", [(1, 1), (2, 2), (3, 4)])
def test_fast_path_equals_full_path(layers, heads):
    model = _tiny_model(layers=layers, heads=heads, hidden=16)
    rng = np.random.default_rng(5)
    for batch in (1, 7, 64):
        histories = _histories(rng, batch, 12, 50)
        with torch.inference_mode():
            full = model.attention(histories).weights
            fast = model.attention_rows(histories)
        assert fast.shape == full.shape
        assert torch.allclose(fast, full, atol=1e-6)
        assert torch.all(fast[(histories == 0)[:, None, None, :].expand_as(fast)] == 0)


@pytest.mark.parametrize("layers,heads", [(1, 1), (2, 2), (3, 4)])
def test_next_item_scores_equal_the_full_scores(layers, heads):
    """The served-list fast path (last block at the last position only, value projection folded)
    scores every item as the full pass does, and ranks them alike."""
    model = _tiny_model(layers=layers, heads=heads, hidden=16)
    rng = np.random.default_rng(6)
    for batch in (1, 7, 64):
        histories = _histories(rng, batch, 12, 50)
        with torch.inference_mode():
            full, fast = model.scores(histories), model.next_item_scores(histories)
        assert fast.shape == full.shape and torch.isinf(fast[:, 0]).all()
        assert torch.allclose(fast[:, 1:], full[:, 1:], atol=1e-4)
        assert torch.equal(torch.topk(fast, 10).indices, torch.topk(full, 10).indices)


def test_fast_path_trims_shared_padding_without_changing_rows():
    model = _tiny_model()
    short = torch.from_numpy(left_pad([np.array([3, 9, 4]), np.array([7, 1])], 12))
    with torch.inference_mode():
        rows = model.attention_rows(short)
        alone = model.attention_rows(short[:1])
    assert torch.allclose(rows[:1], alone, atol=1e-6)
    assert torch.all(rows[..., :9] == 0)


def test_histories_wider_than_max_len_are_rejected():
    model = _tiny_model()
    with pytest.raises(ValueError, match="max_len"):
        model.scores(torch.ones(1, 13, dtype=torch.long))
