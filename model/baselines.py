"""Non-attention baselines on the same split: most-popular and GRU4Rec-style.

Both expose the interface the trainer and evaluator use: ``loss(inputs, targets)``
(popularity has none) and ``scores(histories) -> [B, n_items + 1]`` on left-padded
histories, so every model is ranked by exactly the same code.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Popularity(nn.Module):
    """Scores every item by its interaction count in the training sequences."""

    def __init__(self, n_items: int, train_sequences: Sequence[np.ndarray]) -> None:
        super().__init__()
        counts = np.bincount(np.concatenate(train_sequences), minlength=n_items + 1).astype(np.float32)
        counts[0] = -np.inf
        self.register_buffer("counts", torch.from_numpy(counts))

    def scores(self, histories: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(histories.shape[0], -1).clone()


@dataclasses.dataclass(frozen=True)
class GRU4RecConfig:
    n_items: int  # catalogue size, padding excluded
    max_len: int = 50  # longest history read
    hidden: int = 64  # embedding and GRU width
    dropout: float = 0.2  # on embeddings and GRU outputs


class GRU4Rec(nn.Module):
    """GRU over the history with tied input/output item embeddings, full-softmax CE."""

    def __init__(self, config: GRU4RecConfig) -> None:
        super().__init__()
        self.config = config
        self.items = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=0)
        self.gru = nn.GRU(config.hidden, config.hidden, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.items.weight, std=config.hidden**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def _encode(self, histories: torch.Tensor) -> torch.Tensor:
        """Hidden state after each real item, [B, L, d], left-padded like the input.

        The GRU runs on the real items only (packed), so the amount of padding in
        front of a history cannot change its state.
        """
        lengths = (histories != 0).sum(dim=1).clamp(min=1)
        width = histories.shape[1]
        # Right-align -> left-align: row b's item j sits at column width - len_b + j.
        shift = (torch.arange(width, device=histories.device) + (width - lengths)[:, None]) % width
        left_aligned = histories.gather(1, shift)
        x = self.dropout(self.items(left_aligned) * math.sqrt(self.config.hidden))
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=width)
        unshift = (torch.arange(width, device=histories.device) - (width - lengths)[:, None]) % width
        return self.dropout(out.gather(1, unshift[..., None].expand_as(out))) * (histories != 0)[..., None]

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden @ self.items.weight.T
        logits[..., 0] = float("-inf")
        return logits

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = self._encode(inputs)
        real = targets != 0
        return F.cross_entropy(hidden[real] @ self.items.weight[1:].T, targets[real] - 1)

    def scores(self, histories: torch.Tensor) -> torch.Tensor:
        return self._logits(self._encode(histories)[:, -1])
