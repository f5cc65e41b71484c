"""End-to-end recipes: train a SASRec version on MovieLens and publish it; evaluate one.

These are what ``attnmon train`` and ``attnmon evaluate`` run, and what the scenario
models and benchmarks build on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch

from model import checkpoint
from model.data import Interactions, Split, leave_one_out, load_movielens
from model.evaluate import RankingMetrics, evaluate
from model.sasrec import SASRec, SASRecConfig
from model.train import TrainConfig, TrainResult, seed_everything, train


@dataclasses.dataclass(frozen=True)
class Published:
    version: str
    path: Path
    train: TrainResult
    test: RankingMetrics


def held_out_metrics(model: torch.nn.Module, split: Split, *, n_items: int, max_len: int, seed: int = 0) -> RankingMetrics:
    return evaluate(model, split.test_history, split.test_target, n_items=n_items, max_len=max_len, seed=seed)


def train_sasrec(
    root: Path,
    *,
    model_config: dict | None = None,
    train_config: TrainConfig = TrainConfig(),
    label: str = "",
    data: Interactions | None = None,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
    train_tail: int | None = None,
    extra_metrics: dict | None = None,
    training_data: Callable[[Interactions], Interactions] | None = None,
) -> Published:
    """Train SASRec on the leave-one-out split, evaluate on test, publish a checkpoint.

    ``train_tail`` trains on each user's most recent training items only (validation and
    test keep the full histories); ``extra_metrics`` are stored in metrics.json too.
    ``training_data`` stands for a training job that reads other data than ``data`` (the
    benches' data incidents): the job splits, trains and evaluates on what it returns, and
    the checkpoint is still published with ``data``'s catalogue, the one serving uses.
    """
    data = data or load_movielens()
    seen = data if training_data is None else training_data(data)
    if len(seen.sequences) and max(int(s.max()) for s in seen.sequences) > data.catalog.n_items:
        raise ValueError("training data names items outside the catalogue")
    split = leave_one_out(seen.sequences)
    train_split = split if not train_tail else dataclasses.replace(
        split, train=tuple(s[-train_tail:] for s in split.train))
    config = SASRecConfig(n_items=data.catalog.n_items, **(model_config or {}))
    seed_everything(train_config.seed, train_config.threads)
    model = SASRec(config)
    result = train(model, train_split, n_items=config.n_items, max_len=config.max_len, config=train_config,
                   on_epoch=on_epoch)
    test = held_out_metrics(model, split, n_items=config.n_items, max_len=config.max_len)
    metrics = {
        "test": test.as_dict(),
        "valid": result.valid.as_dict(),
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.seconds, 1),
        "train_config": dataclasses.asdict(train_config),
        **(extra_metrics or {}),
    }
    version = checkpoint.save(model, data.catalog, metrics, root, label=label)
    return Published(version=version, path=root / version, train=result, test=test)


def evaluate_version(directory: Path, data: Interactions | None = None) -> RankingMetrics:
    """Re-evaluate a published version on the test split (full ranking and sampled)."""
    loaded = checkpoint.load(directory)
    data = data or load_movielens()
    if loaded.catalog.n_items != data.catalog.n_items or not (loaded.catalog.item_ids == data.catalog.item_ids).all():
        raise checkpoint.CheckpointError(directory / checkpoint.CATALOG, "item vocabulary differs from the dataset")
    split = leave_one_out(data.sequences)
    return held_out_metrics(loaded.model, split, n_items=loaded.config.n_items, max_len=loaded.config.max_len)
