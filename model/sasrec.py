"""SASRec-style causal self-attention recommender with an exact attention API.

Conventions shared by everything in attnmon:
- histories are LEFT-padded LongTensors [B, L] of model item indices, 0 = padding,
  the most recent item in the last column (see ``model.data.left_pad``);
- the *attention row* of an event is the last query position's attention over the
  history, per layer and head: [B, layers, heads, L], padding exactly 0, rows sum to 1.

The attention is computed by this module's own code (no fused kernel that hides the
weights), so the weights returned are the very ones that produced the scores.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    """Architecture; stored as JSON beside the weights, never encoded in a file name."""

    n_items: int  # catalogue size, padding excluded; embeddings have n_items + 1 rows
    max_len: int = 50  # longest history read; longer ones keep their most recent items
    hidden: int = 64  # model width d
    layers: int = 2  # self-attention blocks
    heads: int = 2  # attention heads per block; hidden must divide evenly
    # On embeddings, attention outputs and feed-forward outputs. 0.5, not SASRec's 0.2 for
    # ML-1M: with 671 users the model overfits (training loss far below GRU4Rec's while
    # validation NDCG trails it); 0.5 closed that gap (docs/model.md).
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        if self.max_len < 1 or self.hidden < 1 or self.layers < 1 or self.heads < 1:
            raise ValueError("max_len, hidden, layers and heads must be >= 1")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_json(cls, payload: dict) -> SASRecConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(payload) - known
        if unknown:
            raise ValueError(f"unknown SASRecConfig fields: {sorted(unknown)}")
        return cls(**payload)


class Attention(NamedTuple):
    weights: torch.Tensor  # [B, layers, heads, L] last query row; padding 0; rows sum to 1
    scores: torch.Tensor  # [B, n_items + 1] next-item scores; padding column is -inf


_MASKED = -1e30  # finite, so a row with no visible key stays finite; exp() of it is exactly 0


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.head_dim = config.hidden // config.heads
        self.attn_norm = nn.LayerNorm(config.hidden)
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.out = nn.Linear(config.hidden, config.hidden)
        self.ffn_norm = nn.LayerNorm(config.hidden)
        self.ffn = nn.Sequential(
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.hidden),
        )
        self.dropout = nn.Dropout(config.dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.heads, self.head_dim).transpose(1, 2)  # [B, H, L, dh]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, d]; mask [B, 1, L, L] True where a query may see a key.

        Returns the new x and the attention weights [B, H, L, L].
        """
        q, k, v = self._split_qkv(self.attn_norm(x))
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        weights = torch.softmax(logits.masked_fill(~mask, _MASKED), dim=-1)
        # No dropout on the weights themselves: it costs a third of a CPU training step,
        # and the rows we monitor are then exactly the rows the values are mixed with.
        context = weights @ v  # [B, H, L, dh]
        b, _, l, _ = context.shape
        x = x + self.dropout(self.out(context.transpose(1, 2).reshape(b, l, -1)))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return x, weights

    def _split_qkv(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(normed).chunk(3, dim=-1)
        return self._split(q), self._split(k), self._split(v)

    # -- serving fast path: the same arithmetic, fewer kernels and no copies ---------------
    # Masks are additive biases (0 or -1e30) instead of masked_fill on a boolean mask:
    # adding -1e30 to a finite logit gives -1e30 exactly, so the softmax is unchanged. Each
    # head reads its q, k and v as strided views of the fused projection, which BLAS takes
    # as they are (splitting heads with permute/reshape cost a tenth of the pass in copies),
    # and one baddbmm scales the logits and adds the mask.

    def serving_forward(self, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` for inference, returning only the last query row: x, weights [B, H, L].

        bias [B, L, L]: 0 where a query may see a key, -1e30 elsewhere.
        """
        d, dh = x.shape[-1], self.head_dim
        qkv = self.qkv(self.attn_norm(x))  # [B, L, 3d]: q, k, v, each head's dh columns in turn
        contexts, last_rows = [], []
        for head in range(self.heads):
            columns = slice(head * dh, (head + 1) * dh)
            q, k, v = qkv[..., columns], qkv[..., d:][..., columns], qkv[..., 2 * d:][..., columns]
            weights = torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1 / math.sqrt(dh)), dim=-1)
            contexts.append(torch.bmm(weights, v))
            last_rows.append(weights[:, -1])
        x = x + self.out(torch.cat(contexts, dim=-1))
        x = x + self.ffn(self.ffn_norm(x))
        return x, torch.stack(last_rows, dim=1)

    def last_row_weights(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """Attention of the last position only: [B, H, L]. Skips values, output and FFN.

        key_bias [B, 1, L]: 0 for real keys, -1e30 for padding.

        The key projection is folded into the query instead of applied to every position:
        q_h . (W_h n_j + b_h) = (W_h^T q_h) . n_j + q_h . b_h, so each row costs one
        [L, d] x [d, H] product instead of an [L, d] x [d, d] projection of all keys.
        """
        return self._last_row(self.attn_norm(x), key_bias)

    def _last_row(self, normed: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, length, d = normed.shape
        w_q, w_k, _ = self.qkv.weight.split(d, dim=0)
        b_q, b_k, _ = self.qkv.bias.split(d, dim=0)
        q = F.linear(normed[:, -1], w_q, b_q).view(b, self.heads, self.head_dim) / math.sqrt(self.head_dim)
        folded = torch.einsum("bhe,hed->bhd", q, w_k.view(self.heads, self.head_dim, d))  # [B, H, d]
        offset = (q * b_k.view(self.heads, self.head_dim)).sum(-1, keepdim=True)  # [B, H, 1]
        logits = torch.bmm(folded, normed.transpose(1, 2)) + offset  # [B, H, L]
        return torch.softmax(logits + key_bias, dim=-1)

    def last_row_output(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """The block's output at the last position only [B, d] (``forward``'s ``x[:, -1]``).

        The value projection is folded like the key's: a row's weights sum to 1, so
        sum_j w_j (W_h n_j + b_h) = W_h (sum_j w_j n_j) + b_h: the weights mix the normed
        inputs, and one [d] x [d, dh] product per head follows.
        """
        b, _, d = x.shape
        normed = self.attn_norm(x)
        weights = self._last_row(normed, key_bias)  # [B, H, L]
        _, _, w_v = self.qkv.weight.split(d, dim=0)
        _, _, b_v = self.qkv.bias.split(d, dim=0)
        mixed = torch.bmm(weights, normed)  # [B, H, d]
        context = torch.einsum("bhd,hed->bhe", mixed, w_v.view(self.heads, self.head_dim, d))
        y = x[:, -1] + self.out((context + b_v.view(self.heads, self.head_dim)).reshape(b, d))
        return y + self.ffn(self.ffn_norm(y))


class SASRec(nn.Module):
    """Causal self-attention over item histories; tied input/output item embeddings.

    Takes tensors, owns no device: move the module and its inputs together.
    """

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.items = nn.Embedding(config.n_items + 1, config.hidden, padding_idx=0)
        self.positions = nn.Embedding(config.max_len, config.hidden)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
        self.final_norm = nn.LayerNorm(config.hidden)
        self.dropout = nn.Dropout(config.dropout)
        nn.init.normal_(self.items.weight, std=config.hidden**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    # -- shared pieces ---------------------------------------------------------------
    def _embed(self, histories: torch.Tensor) -> torch.Tensor:
        length = histories.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"histories have {length} columns; max_len is {self.config.max_len}")
        # Absolute positions of a right-aligned window: the last column is always max_len - 1,
        # so a trimmed batch (fewer columns) embeds exactly like the full-width one.
        position_ids = torch.arange(self.config.max_len - length, self.config.max_len, device=histories.device)
        x = self.items(histories) * math.sqrt(self.config.hidden) + self.positions(position_ids)
        return self.dropout(x) * (histories != 0).unsqueeze(-1)

    @staticmethod
    def _mask(histories: torch.Tensor) -> torch.Tensor:
        """[B, 1, L, L]: a query sees itself and earlier real items, never padding or the future."""
        length = histories.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=histories.device).tril()
        return causal & (histories != 0)[:, None, None, :]

    def _encode(self, histories: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Hidden states [B, L, d] and each block's attention [B, H, L, L]."""
        x = self._embed(histories)
        mask = self._mask(histories)
        valid = (histories != 0).unsqueeze(-1)
        all_weights = []
        for block in self.blocks:
            x, weights = block(x, mask)
            x = x * valid  # keep padding rows at zero so they cannot leak anywhere
            all_weights.append(weights)
        return self.final_norm(x), all_weights

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden @ self.items.weight.T
        logits[..., 0] = float("-inf")  # padding is never recommended
        return logits

    # -- training ----------------------------------------------------------------------
    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Full-softmax cross-entropy at every real position. inputs/targets [B, L]."""
        hidden, _ = self._encode(inputs)
        real = targets != 0  # scoring only real positions saves most of the [B, L, V] logits
        # Padding is left out of the softmax by slicing it off, not by writing -inf into
        # the logits (an in-place write on a [N, V] matrix costs a full extra copy).
        logits = hidden[real] @ self.items.weight[1:].T
        return F.cross_entropy(logits, targets[real] - 1)

    # -- serving -------------------------------------------------------------------------
    def scores(self, histories: torch.Tensor) -> torch.Tensor:
        """Next-item scores [B, n_items + 1] from the last position."""
        hidden, _ = self._encode(histories)
        return self._logits(hidden[:, -1])

    def next_item_scores(self, histories: torch.Tensor) -> torch.Tensor:
        """Fast path for what a version would serve: the same scores as ``scores`` [B, n_items + 1].

        Left-padded histories only (the last column real). As ``attention_rows``, columns that
        are padding for the whole batch are dropped; the last block computes its last position
        only (``_Block.last_row_output``).
        """
        _, x, bias, key_bias, keep = self._serving_inputs(histories)
        for block in self.blocks[:-1]:
            x, _ = block.serving_forward(x, bias)
            x = x * keep
        return self._logits(self.final_norm(self.blocks[-1].last_row_output(x, key_bias)))

    def _serving_inputs(self, histories: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor,
                                                                torch.Tensor]:
        """The fast paths' inputs: the first column any history uses, the embedded histories
        from there on, the [B, L, L] causal and key bias, the [B, 1, L] key bias alone, and the
        [B, L, 1] real-position mask."""
        real = histories != 0
        first_used = int(real.any(dim=0).nonzero()[0]) if bool(real.any()) else histories.shape[1] - 1
        trimmed = histories[:, first_used:]
        valid = trimmed != 0
        width_used = trimmed.shape[1]
        x = self._embed(trimmed)
        key_bias = torch.zeros(len(histories), 1, width_used, dtype=x.dtype).masked_fill_(~valid[:, None, :], _MASKED)
        causal_bias = torch.full((width_used, width_used), _MASKED, dtype=x.dtype).triu_(1)
        # [B, L, L]: key_bias [B, 1, L] broadcast over the queries
        return first_used, x, key_bias + causal_bias, key_bias, valid.unsqueeze(-1)

    def attention(self, histories: torch.Tensor) -> Attention:
        """The last position's attention per layer and head, with the scores it produced."""
        hidden, per_block = self._encode(histories)
        weights = torch.stack([w[:, :, -1, :] for w in per_block], dim=1)  # [B, layers, H, L]
        return Attention(weights=weights, scores=self._logits(hidden[:, -1]))

    def attention_rows(self, histories: torch.Tensor) -> torch.Tensor:
        """Fast path for monitoring: the same weights as ``attention`` [B, layers, H, L].

        Two savings, both exact: columns that are padding for the whole batch are dropped
        (masked keys contribute exactly 0), and the last block computes only its last
        query row's softmax (no values, output projection, feed-forward or scores).
        """
        batch, width = histories.shape
        first_used, x, bias, key_bias, keep = self._serving_inputs(histories)
        rows = []
        for block in self.blocks[:-1]:
            x, row = block.serving_forward(x, bias)
            x = x * keep
            rows.append(row)
        rows.append(self.blocks[-1].last_row_weights(x, key_bias))
        out = histories.new_zeros((batch, self.config.layers, self.config.heads, width), dtype=x.dtype)
        out[..., first_used:] = torch.stack(rows, dim=1)
        return out
