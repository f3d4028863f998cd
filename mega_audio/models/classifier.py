"""AudioClassifier: the global encoder of a pre-trained Mega-AudioFormer, mean-pooled, and a linear (or probe) head.

A frozen probe may read any layer of the encoder (`probe_layer`): self-supervised features are often best in the
middle of the stack, not at its end. It may also pool a clip's frames with learned attention instead of the mean
(`probe_pool`), as the attentive probes of V-JEPA and AIM do: masked-modelling features keep what they know in
individual frames, and a mean over a 4 s note gives its few attack frames a weight of a few percent. Statistics
pooling (the frames' mean and standard deviation side by side, as x-vectors pool) is the cheap middle: it keeps how
much each feature moves over the clip (a note's attack and decay), which a mean averages away, at the mean's cost."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .checkpoint import Pretrained, check_model_type, load_weights, local_checkpoint, read_checkpoint_config
from .config import ModelConfig
from .layers import init_weights, masked_mean, masked_mean_std
from .mega import GlobalEncoder, MegaAudioFormer


PROBE_POOLS = ("stats", "mean", "attention")


class AttentionPool(nn.Module):
    """(B, T, D) frames -> (B, D): per head, a learned query's attention-weighted mean of the frames' values."""

    def __init__(self, dim: int, n_heads: int = 4):
        super().__init__()
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Parameter(torch.zeros(n_heads, 1, dim // n_heads))
        self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def reset_parameters(self) -> None:
        for m in (self.norm, self.key, self.value):
            m.reset_parameters()
        nn.init.zeros_(self.query)  # equal weights on every frame: training starts from the mean

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        k, v = (rearrange(proj(x), "b t (h e) -> b h t e", h=self.n_heads) for proj in (self.key, self.value))
        mask = None if valid is None else valid[:, None, None, :]  # (B, 1, 1, T): True = a real frame
        pooled = F.scaled_dot_product_attention(self.query.expand(len(x), -1, -1, -1).to(k.dtype), k, v, attn_mask=mask)
        return rearrange(pooled, "b h 1 e -> b (h e)")


class AudioClassifier(Pretrained, nn.Module):
    """Global encoder + mean over valid frames + a linear head (fine-tuning); frozen probes may pool by stats or attention
    and may put a small MLP on top."""

    model_type = "audio_classifier"

    def __init__(self, config: ModelConfig, n_classes: int, multi_label: bool = False, hidden: int | None = None,
                 head_dropout: float = 0.1, probe_layer: str = "last", probe_pool: str = "mean"):
        super().__init__()
        self.config, self.n_classes, self.multi_label, self.hidden = config, n_classes, multi_label, hidden
        self.probe_layer = check_probe_layer(probe_layer, config.n_global_layers)
        if probe_pool not in PROBE_POOLS:
            raise ValueError(f"probe pool {probe_pool!r}: use one of {PROBE_POOLS}")
        self.probe_pool = probe_pool
        self.global_encoder = GlobalEncoder(config)
        self.attention_pool = AttentionPool(config.d_global) if probe_pool == "attention" else None
        width = self.pooled_width = 2 * config.d_global if probe_pool == "stats" else config.d_global
        if hidden is not None:  # the frozen probe. Frozen features share a large common offset and every layer has
            # its own scale: standardising each feature with the training set's statistics (a BatchNorm without affine
            # parameters, cumulative averages) is what lets a small head learn from them quickly.
            standardise = nn.BatchNorm1d(width, affine=False, momentum=None)
            self.head = nn.Sequential(standardise, nn.Dropout(head_dropout), nn.Linear(width, n_classes)) \
                if hidden == 0 else \
                nn.Sequential(standardise, nn.Linear(width, hidden), nn.GELU(), nn.Dropout(head_dropout),
                              nn.Linear(hidden, n_classes))
        else:
            self.head = nn.Linear(width, n_classes)
        init_weights(self.global_encoder, config.n_global_layers)
        init_weights(self.head, 1)

    def embed(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, T, n_q) -> clip embeddings (B, d_global; 2 * d_global pooled by stats), the probe layer's frame
        states pooled."""
        return self.pool(self.frame_states(codes, padding_mask), padding_mask)

    def frame_states(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, T, n_q) -> (B, T, d_global) states of the probe layer (the last, a layer number 0..n_global_layers
        with 0 the patch embeddings, or the mean of layers 1..n_global_layers)."""
        if self.probe_layer == "last":
            return self.global_encoder(codes, padding_mask)
        return self.candidate_states(codes, padding_mask)[layer_index(self.probe_layer, self.config.n_global_layers)]

    def candidate_states(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Frame states [(B, T, d_global)] of every layer a probe may read, in `layer_index` order: layers 0..depth
        (0: the patch embeddings), then the mean of layers 1..depth."""
        states = self.global_encoder.layer_states(codes, padding_mask)
        return [*states, torch.stack(states[1:]).mean(dim=0)]

    def pool(self, states: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) frame states, (B, T) valid -> (B, D) clip embeddings ((B, 2D) pooled by stats)."""
        if self.attention_pool is not None:
            return self.attention_pool(states, valid)
        return masked_mean_std(states, valid) if self.probe_pool == "stats" else masked_mean(states, valid)

    def layer_embeddings(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, T, n_q) -> the pooled clip embedding of every `candidate_states` layer (B, 2 + depth, width), each
        what `embed` gives with that probe layer (not an attention pool's: it learns from the frames)."""
        return torch.stack([self.pool(s, padding_mask) for s in self.candidate_states(codes, padding_mask)], dim=1)

    def forward(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """labels: (B,) class ids, or (B, n_classes) 0/1 targets when multi_label -> (logits (B, n_classes), loss or None)."""
        logits = self.head(self.embed(codes, padding_mask))
        if labels is None:
            return logits, None
        if self.multi_label:
            return logits, F.binary_cross_entropy_with_logits(logits, labels.float())
        return logits, F.cross_entropy(logits, labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else logits.softmax(dim=-1)

    def freeze_encoder(self) -> None:
        """Linear/MLP probe: only the head trains."""
        self.global_encoder.requires_grad_(False)

    def checkpoint_header(self) -> dict:
        return {**super().checkpoint_header(), "n_classes": self.n_classes, "multi_label": self.multi_label,
                "hidden": self.hidden, "probe_layer": self.probe_layer, "probe_pool": self.probe_pool}

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, n_classes: int | None = None, multi_label: bool = False,
                        hidden: int | None = None, head_dropout: float = 0.1, device: str = "cpu",
                        probe_layer: str = "last", probe_pool: str = "mean", **hub_kwargs) -> "AudioClassifier":
        """From a local directory or a Hub repo id. A classifier checkpoint without n_classes: everything restored
        (metadata too). With n_classes (or from a pre-training checkpoint, which needs it): only the global_encoder.*
        weights are read, the head is new and the local encoder is never built."""
        directory = local_checkpoint(path_or_repo_id, **hub_kwargs)
        header = read_checkpoint_config(directory)
        check_model_type(header, (cls.model_type, MegaAudioFormer.model_type), path_or_repo_id)
        config = ModelConfig.from_dict(header["config"])
        if header["model_type"] == cls.model_type and n_classes is None:
            model = cls(config, header["n_classes"], header["multi_label"], header["hidden"],
                        probe_layer=header.get("probe_layer", "last"), probe_pool=header.get("probe_pool", "mean"))
            model.load_state_dict(load_weights(directory, device=device))
            model.metadata = header.get("metadata", {})
            return model.to(device)
        if n_classes is None:
            raise ValueError(f"{path_or_repo_id} is a pretraining checkpoint: pass n_classes to build a new head")
        model = cls(config, n_classes, multi_label, hidden, head_dropout, probe_layer, probe_pool)
        missing, unexpected = model.load_state_dict(load_weights(directory, "global_encoder.", device), strict=False)
        if unexpected or any(not k.startswith(("head.", "attention_pool.")) for k in missing):
            raise ValueError(f"{path_or_repo_id}: no global encoder matching its config (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}): pass a Mega-AudioFormer export or a classifier checkpoint")
        model.metadata = {k: v for k, v in header.get("metadata", {}).items() if k == "codec"}  # what still holds
        return model.to(device)


def check_probe_layer(layer: str, depth: int) -> str:
    """'last', 'mean' (of layers 1..depth) or a layer number 0..depth (0: the patch embeddings)."""
    if layer in ("last", "mean") or (layer.isdigit() and int(layer) <= depth):
        return layer
    raise ValueError(f"probe layer {layer!r}: use last, mean, or a layer number from 0 (the patch embeddings) to {depth}")


def layer_index(layer: str, depth: int) -> int:
    """Where a probe layer sits among `AudioClassifier.candidate_states`: layers 0..depth, then their mean."""
    return {"last": depth, "mean": depth + 1}[layer] if layer in ("last", "mean") else int(layer)
