"""The flat baseline: one Transformer over all T * n_q tokens, for benchmarks and ablations against Mega-AudioFormer."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange, repeat

from .checkpoint import Pretrained
from .config import ModelConfig
from .layers import Encoder, LevelEmbedding, LevelHeads, attention_valid_mask, init_weights
from .masking import masked_token_loss


class FlatTransformer(Pretrained, nn.Module):
    """Baseline: one Transformer of the global encoder's width and depth over all T * n_q tokens."""

    model_type = "flat_transformer"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tokens = LevelEmbedding(config.n_q, config.vocab_size, config.d_global)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = Encoder(
            config.d_global, config.n_global_layers, config.n_global_heads, config.mlp_ratio, config.dropout,
            mixer=config.global_mixer, block=config.global_block, conv_kernel=config.conv_kernel,
        )
        self.heads = LevelHeads(config.n_q, config.d_global, config.codebook_size)
        init_weights(self, config.n_global_layers)

    def forward(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None, targets: torch.Tensor | None = None):
        """Same contract as MegaAudioFormer.forward; rotary positions run over the flat token index."""
        n_q = self.config.n_q
        valid = None
        if padding_mask is not None:
            codes = codes.masked_fill(~padding_mask.unsqueeze(-1), self.config.pad_id)
            valid = repeat(padding_mask, "b t -> b (t q)", q=n_q)  # (B, T * n_q)
        x = rearrange(self.tokens(codes.long()), "b t q d -> b (t q) d")  # time-major, channel-packed
        x = self.encoder(self.dropout(x), attention_valid_mask(valid))
        x = rearrange(x, "b (t q) d -> (b t) q d", q=n_q)
        if targets is not None:  # the same chunked masked-token loss as Mega-AudioFormer: like is compared with like
            loss, accuracy = masked_token_loss(self.heads, x, targets)
            return accuracy, loss
        return rearrange(self.heads(x), "(b t) q v -> b t q v", b=codes.shape[0]), None
