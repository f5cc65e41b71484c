"""Chunking of a micro-batch into forward passes, inline or on a thread pool."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from model.data import left_pad
from model.sasrec import SASRec, SASRecConfig
from monitor.attention.recompute import recompute


def _model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(n_items=40, max_len=12, hidden=16, layers=2, heads=2)).eval()


def _histories(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(1, 41, size=rng.integers(1, 30)) for _ in range(count)]


def test_every_history_appears_once_with_its_own_rows():
    model, histories = _model(), _histories(50)
    seen = []
    for chunk in recompute(model, histories, max_len=12, max_batch=8):
        assert len(chunk.rows) <= 8
        seen.extend(chunk.rows.tolist())
        for position, row, length in zip(chunk.rows, chunk.weights, chunk.lengths, strict=True):
            assert length == min(len(histories[position]), 12)
            with torch.inference_mode():
                alone = model.attention_rows(torch.from_numpy(left_pad([histories[position]], 12))).numpy()[0]
            np.testing.assert_allclose(row[..., -length:], alone[..., -length:], atol=1e-6)
            assert np.all(row[..., :-length] == 0)  # the chunk's own padding carries no weight
    assert sorted(seen) == list(range(50))


def test_pool_yields_the_same_chunks_in_the_same_order():
    """Also proves the pool threads enter inference_mode themselves (it is thread-local):
    otherwise .numpy() on weights that require grad would raise."""
    model, histories = _model(), _histories(70)
    inline = list(recompute(model, histories, max_len=12, max_batch=8))
    with ThreadPoolExecutor(2) as pool:
        pooled = list(recompute(model, histories, max_len=12, max_batch=8, executor=pool))
    assert len(inline) == len(pooled) == 9
    for a, b in zip(inline, pooled, strict=True):
        assert np.array_equal(a.rows, b.rows)
        assert np.array_equal(a.item_index, b.item_index)
        np.testing.assert_array_equal(a.weights, b.weights)  # one intra-op thread each: bit-identical

