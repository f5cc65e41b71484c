"""ServedModel's vocabulary lookup: the direct table and the binary search agree."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model import checkpoint
from model.data import load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.attention import registry as registry
from monitor.attention.registry import ServedModel


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> ServedModel:
    catalog = load_movielens().catalog
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    version = checkpoint.save(SASRec(SASRecConfig(n_items=catalog.n_items, max_len=8, hidden=8, layers=1, heads=1)),
                              catalog, {}, root)
    return ServedModel.from_checkpoint(checkpoint.load(root / version))


def test_direct_table_and_binary_search_give_the_same_indices(served):
    assert served.dense is not None  # MovieLens ids are dense enough for a table
    known = served.raw_ids
    rng = np.random.default_rng(0)
    probe = np.concatenate([
        known, known[::-1] + 1, [-5, -1, 0, int(known[-1]), int(known[-1]) + 1, int(known[-1]) + 2, 2**31 - 1],
        rng.integers(0, int(known[-1]) * 2, 5_000),
    ]).astype(np.int64)
    searched = dataclasses.replace(served, dense=None).to_indices(probe)
    assert np.array_equal(served.to_indices(probe), searched)
    assert np.array_equal(served.to_indices(known), served.raw_order)  # every known id maps to its index
    assert (searched[np.isin(probe, known, invert=True)] == -1).all()


def test_sparse_ids_fall_back_to_binary_search(served, monkeypatch):
    monkeypatch.setattr(registry, "DENSE_LOOKUP_MAX_ID", int(served.raw_ids[-1]))  # the largest id no longer fits
    sparse = ServedModel.from_checkpoint(served.checkpoint)
    assert sparse.dense is None
    assert np.array_equal(sparse.to_indices(served.raw_ids), served.raw_order)
