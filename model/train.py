"""Training loop shared by SASRec and GRU4Rec: seeded, deterministic on CPU, time-boxed.

Every training timeline is cut, from its end backwards, into windows of max_len + 1
items (inputs are a window's first max_len items, targets the same shifted by one), so
long histories contribute all their data rather than only their last max_len items.
Batches group windows of similar length and are trimmed to their longest member, which
keeps short histories from paying for 200 columns of padding.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from model.data import Split, left_pad
from model.evaluate import RankingMetrics, evaluate


class Trainable(Protocol):
    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...
    def scores(self, histories: torch.Tensor) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    batch_size: int = 32  # windows per step
    lr: float = 2e-3  # Adam
    max_epochs: int = 60
    time_budget_s: float = 480.0  # stop after this much wall time, keeping the best epoch
    eval_every: int = 2  # epochs between validation passes
    patience: int = 5  # validation passes without improvement before stopping
    threads: int = 2  # torch intra-op threads (the target machine has 2 cores)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_epochs < 1 or self.eval_every < 1 or self.patience < 1:
            raise ValueError("batch_size, max_epochs, eval_every and patience must be >= 1")
        if self.lr <= 0 or self.time_budget_s <= 0:
            raise ValueError("lr and time_budget_s must be > 0")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    epochs: int  # epochs run
    best_epoch: int
    seconds: float
    valid: RankingMetrics  # validation metrics of the kept (best) weights
    curve: tuple[tuple[int, float], ...]  # (epoch, validation NDCG@10)


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def training_windows(sequences: Sequence[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Windows of up to max_len + 1 items, cut from each timeline's end backwards."""
    windows = []
    for seq in sequences:
        for stop in range(len(seq), 1, -max_len):
            windows.append(seq[max(0, stop - max_len - 1) : stop])
    return windows


def _batches(windows: list[np.ndarray], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Length-bucketed batches in a random order (shuffled within equal lengths too)."""
    jitter = rng.random(len(windows))
    order = np.lexsort((jitter, [len(w) for w in windows]))
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def train(
    model: nn.Module,
    split: Split,
    *,
    n_items: int,
    max_len: int,
    config: TrainConfig,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``split.train``, early-stopping on validation NDCG@10.

    ``on_epoch(epoch, mean_loss, valid_ndcg_or_None)`` reports progress.
    The model ends holding its best validation weights.
    """
    seed_everything(config.seed, config.threads)
    rng = np.random.default_rng(config.seed)
    windows = training_windows(split.train, max_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    started = time.monotonic()
    best_ndcg, best_epoch, best_state, stale = -1.0, 0, copy.deepcopy(model.state_dict()), 0
    curve: list[tuple[int, float]] = []
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        losses = []
        for batch in _batches(windows, config.batch_size, rng):
            padded = left_pad([windows[i] for i in batch], max_len + 1)
            width = max(len(windows[i]) for i in batch)
            padded = torch.from_numpy(padded[:, -width:])
            loss = model.loss(padded[:, :-1], padded[:, 1:])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        ndcg = None
        if epoch % config.eval_every == 0:
            valid = evaluate(
                model, split.valid_history, split.valid_target, n_items=n_items, max_len=max_len, negatives=0
            )
            ndcg = valid.ndcg10
            curve.append((epoch, ndcg))
            if ndcg > best_ndcg:
                best_ndcg, best_epoch, best_state, stale = ndcg, epoch, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
        if on_epoch is not None:
            on_epoch(epoch, float(np.mean(losses)), ndcg)
        if stale >= config.patience or time.monotonic() - started > config.time_budget_s:
            break
    if best_epoch == 0:  # never validated (tiny budgets in tests): keep the last weights
        best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
    model.load_state_dict(best_state)
    valid = evaluate(model, split.valid_history, split.valid_target, n_items=n_items, max_len=max_len, negatives=0)
    return TrainResult(
        epochs=epoch,
        best_epoch=best_epoch,
        seconds=time.monotonic() - started,
        valid=valid,
        curve=tuple(curve),
    )
