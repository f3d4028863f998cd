"""Mega-AudioFormer, the architecture only (read it top to bottom): per-level token embeddings -> one MegaByte patch
per frame -> a global encoder over frames -> a local encoder inside each frame -> per-level logits (or, in
pre-training, the loss of the masked tokens)."""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange

from .checkpoint import Pretrained
from .config import ModelConfig
from .layers import Encoder, LevelEmbedding, LevelHeads, attention_valid_mask, init_weights, masked_mean
from .masking import contrastive_loss, masked_frame_cross_entropy, masked_token_loss, mel_loss


class GlobalEncoder(nn.Module):
    """Per-level token embeddings -> one patch per frame -> bidirectional Transformer over frames."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tokens = LevelEmbedding(config.n_q, config.vocab_size, config.d_token)
        self.patch_proj = nn.Linear(config.n_q * config.d_token, config.d_global)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = Encoder(
            config.d_global, config.n_global_layers, config.n_global_heads, config.mlp_ratio, config.dropout,
            mixer=config.global_mixer, block=config.global_block, conv_kernel=config.conv_kernel,
        )

    def embed(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, T, n_q) -> token embeddings (B, T, n_q, d_token); padded frames read as PAD."""
        if codes.shape[-1] != self.config.n_q:
            raise ValueError(f"codes have {codes.shape[-1]} levels, the model expects n_q={self.config.n_q}: "
                             f"codes must be (B, T, n_q) at the model's bitrate")
        if padding_mask is not None:
            codes = codes.masked_fill(~padding_mask.unsqueeze(-1), self.config.pad_id)
        return self.tokens(codes.long())

    def encode(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, T, n_q, d_token) -> frame states (B, T, d_global)."""
        patches = self.patch_proj(rearrange(tokens, "b t q d -> b t (q d)"))  # MegaByte patch embedding
        return self.encoder(self.dropout(patches), attention_valid_mask(padding_mask))

    def forward(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(self.embed(codes, padding_mask), padding_mask)

    def layer_states(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Frame states [(B, T, d_global)] * (1 + n_global_layers): the patch embeddings (layer 0, the encoder's input),
        then every layer's output, the last one normed as in forward."""
        patches = self.patch_proj(rearrange(self.embed(codes, padding_mask), "b t q d -> b t (q d)"))
        return [patches, *self.encoder(self.dropout(patches), attention_valid_mask(padding_mask), all_layers=True)]


class LocalEncoder(nn.Module):
    """Within each frame: token embeddings + that frame's global state -> per-level states, read by the output heads."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.token_proj = nn.Identity() if config.d_token == config.d_local else nn.Linear(config.d_token, config.d_local)
        self.frame_proj = nn.Linear(config.d_global, config.d_local)
        self.encoder = Encoder(config.d_local, config.n_local_layers, config.n_local_heads, config.mlp_ratio, config.dropout)
        self.heads = LevelHeads(config.n_q, config.d_local, config.codebook_size)

    def forward(self, tokens: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T, n_q, d_token), frames: (B, T, d_global) -> states (B * T, n_q, d_local) for the heads."""
        x = self.token_proj(tokens) + self.frame_proj(frames).unsqueeze(2)  # (B, T, n_q, d_local)
        x = rearrange(x, "b t q d -> (b t) q d")  # one short sequence per frame, rotary over the level
        return self.encoder(x)  # a frame has all its levels: no padding inside


class MegaAudioFormer(Pretrained, nn.Module):
    """Masked token model over codec tokens: a global encoder over frames, a local encoder within frames."""

    model_type = "mega_audio_former"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.global_encoder = GlobalEncoder(config)
        self.local_encoder = LocalEncoder(config)
        # the auxiliary log-mel target: a small head on the global states (pre-training only; fine-tuning drops it)
        self.mel_head = nn.Linear(config.d_global, config.mel_bins) if config.mel_bins else None
        # the contrastive projection (pre-training only): the loss acts on its output, so the pooled states below it
        # keep what the loss does not need (SimCLR's finding; the probe and fine-tuning read those states)
        self.contrastive_head = nn.Sequential(
            nn.Linear(config.d_global, config.d_global), nn.GELU(), nn.Linear(config.d_global, config.contrastive_dim),
        ) if config.contrastive_dim else None
        # the teacher's clusters (pre-training only): which of a teacher's k-means clusters each masked frame falls in
        self.cluster_head = nn.Linear(config.d_global, config.teacher_clusters) if config.teacher_clusters else None
        init_weights(self.global_encoder, config.n_global_layers)
        init_weights(self.local_encoder, config.n_local_layers)

    def forward(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                features: torch.Tensor | None = None, mel_weight: float = 1.0, contrastive_weight: float = 0.0,
                clusters: torch.Tensor | None = None, cluster_weight: float = 1.0):
        """codes: (B, T, n_q), padding_mask: (B, T) True = valid -> (logits (B, T, n_q, V), None).

        With targets (from mask_tokens) -> (accuracy, loss) over the masked tokens only: the output heads run on
        the masked tokens alone, a chunk at a time, and their logits are never all in memory (masked_token_loss).
        With features (B, T, mel_bins) too, the loss adds mel_weight x the MSE of the mel head at the masked frames.
        With contrastive_weight > 0, rows i and i + B/2 are the two halves of one clip (clip_halves), and the loss
        adds contrastive_weight x the InfoNCE of their pooled global states. With clusters (B, T) (a teacher's
        cluster of every frame of the unmasked input, `ClusterTeacher`), it adds cluster_weight x the cluster head's
        cross-entropy at the masked frames."""
        tokens = self.global_encoder.embed(codes, padding_mask)  # (B, T, n_q, d_token)
        frames = self.global_encoder.encode(tokens, padding_mask)  # (B, T, d_global)
        states = self.local_encoder(tokens, frames)  # (B * T, n_q, d_local)
        if targets is not None:
            loss, accuracy = masked_token_loss(self.local_encoder.heads, states, targets)
            if features is not None:
                loss = loss + mel_weight * self.masked_mel_loss(frames, features, targets, padding_mask)
            if contrastive_weight:
                loss = loss + contrastive_weight * self.clip_contrastive_loss(frames, padding_mask)
            if clusters is not None:
                loss = loss + cluster_weight * self.masked_cluster_loss(frames, clusters, targets)
            return accuracy, loss
        return rearrange(self.local_encoder.heads(states), "(b t) q v -> b t q v", b=codes.shape[0]), None

    def masked_mel_loss(self, frames: torch.Tensor, features: torch.Tensor, targets: torch.Tensor,
                        padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The mel head's MSE at the masked frames; frames: global states (B, T, d_global) of the masked input."""
        if self.mel_head is None:
            raise ValueError("this model has no mel head (config mel_bins=0): build it with mel_bins = the stored "
                             "features' bins to train with a mel loss")
        return mel_loss(self.mel_head(frames), features, targets, padding_mask)

    def masked_cluster_loss(self, frames: torch.Tensor, clusters: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The cluster head's cross-entropy at the masked frames; frames: global states (B, T, d_global) of the masked
        input, clusters: (B, T) the teacher's cluster ids."""
        if self.cluster_head is None:
            raise ValueError("this model has no cluster head (config teacher_clusters=0): build it with "
                             "teacher_clusters = the teacher's k to train on a teacher's clusters")
        return masked_frame_cross_entropy(self.cluster_head(frames), clusters, targets)

    def clip_contrastive_loss(self, frames: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """InfoNCE between the two halves of each clip; frames: global states (2B, T, d_global) of the masked input."""
        if self.contrastive_head is None:
            raise ValueError("this model has no contrastive head (config contrastive_dim=0): build it with "
                             "contrastive_dim > 0 to train with a contrastive loss")
        return contrastive_loss(self.contrastive_head(masked_mean(frames, padding_mask)), padding_mask)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part ("global", "local", "head", ...) and in total."""
    counts = {name.removesuffix("_encoder"): sum(p.numel() for p in child.parameters())
              for name, child in model.named_children()}
    counts = {k: v for k, v in counts.items() if v}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
