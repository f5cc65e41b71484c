"""The demo's models are trained once into their cache and reused after (no real training here)."""

from __future__ import annotations

import io
import types

import torch

from model import checkpoint
from model.data import load_movielens
from model.sasrec import SASRec, SASRecConfig
from monitor.tools.demo_models import RECIPES, ensure_demo_models, find_cached


def fake_train(calls: list):
    """Stands in for model.recipe.train_sasrec: publishes a tiny model with the recipe's metrics."""
    def train(root, *, model_config, train_config, label, data, on_epoch, train_tail, extra_metrics):
        calls.append(label)
        torch.manual_seed(len(calls))
        model = SASRec(SASRecConfig(n_items=data.catalog.n_items, max_len=model_config["max_len"], hidden=8,
                                    layers=1, heads=1))
        on_epoch(1, 9.0, 0.01)
        version = checkpoint.save(model, data.catalog, dict(extra_metrics), root, label=label)
        return types.SimpleNamespace(version=version, test=types.SimpleNamespace(ndcg10=0.01))
    return train


def test_models_train_once_then_come_from_the_cache(tmp_path):
    data = load_movielens()
    calls: list[str] = []
    out = io.StringIO()
    first = ensure_demo_models(tmp_path, out=out, data=data, train=fake_train(calls))
    assert set(first) == {"base", "reseed", "context_cut"} and len(calls) == 3
    assert "set-up: training 3 demo model(s)" in out.getvalue() and "epoch 1" in out.getvalue()
    again = io.StringIO()
    assert ensure_demo_models(tmp_path, out=again, data=data, train=fake_train(calls)) == first
    assert len(calls) == 3 and again.getvalue() == ""  # nothing trained, nothing to say


def test_a_cached_model_of_another_recipe_or_damaged_is_not_reused(tmp_path):
    data = load_movielens()
    calls: list[str] = []
    versions = ensure_demo_models(tmp_path, out=io.StringIO(), data=data, train=fake_train(calls))
    (tmp_path / versions["reseed"] / checkpoint.CONFIG).write_text("{}")  # damaged: hashes fail
    assert find_cached(tmp_path, RECIPES[1]) is None
    assert find_cached(tmp_path, RECIPES[0]) == versions["base"]
    ensure_demo_models(tmp_path, out=io.StringIO(), data=data, train=fake_train(calls))
    assert calls[3:] == [RECIPES[1].label]
