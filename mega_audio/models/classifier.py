"""AudioClassifier: the global encoder of a pre-trained Mega-AudioFormer, mean-pooled, and a linear (or probe) head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import Pretrained, check_model_type, load_weights, read_checkpoint_config
from .config import ModelConfig
from .layers import init_weights, masked_mean
from .mega import GlobalEncoder, MegaAudioFormer


class AudioClassifier(Pretrained, nn.Module):
    """Global encoder + mean over valid frames + a linear head (or a small MLP for frozen probes)."""

    model_type = "audio_classifier"

    def __init__(self, config: ModelConfig, n_classes: int, multi_label: bool = False, hidden: int | None = None,
                 head_dropout: float = 0.1):
        super().__init__()
        self.config, self.n_classes, self.multi_label, self.hidden = config, n_classes, multi_label, hidden
        self.global_encoder = GlobalEncoder(config)
        if hidden:
            self.head = nn.Sequential(nn.Linear(config.d_global, hidden), nn.GELU(), nn.Dropout(head_dropout),
                                      nn.Linear(hidden, n_classes))
        else:
            self.head = nn.Linear(config.d_global, n_classes)
        init_weights(self.global_encoder, config.n_global_layers)
        init_weights(self.head, 1)

    def embed(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, T, n_q) -> clip embeddings (B, d_global), the mean of the valid frames' states."""
        return masked_mean(self.global_encoder(codes, padding_mask), padding_mask)

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
                "hidden": self.hidden}

    @classmethod
    def from_pretrained(cls, directory: str | Path, n_classes: int | None = None, multi_label: bool = False,
                        hidden: int | None = None, head_dropout: float = 0.1, device: str = "cpu") -> "AudioClassifier":
        """A classifier checkpoint without n_classes: everything restored. With n_classes (or from a pre-training
        checkpoint, which needs it): only the global_encoder.* weights are read, the head is new and the local
        encoder is never built."""
        header = read_checkpoint_config(directory)
        check_model_type(header, (cls.model_type, MegaAudioFormer.model_type), directory)
        config = ModelConfig.from_dict(header["config"])
        if header["model_type"] == cls.model_type and n_classes is None:
            model = cls(config, header["n_classes"], header["multi_label"], header["hidden"])
            model.load_state_dict(load_weights(directory, device=device))
            return model.to(device)
        if n_classes is None:
            raise ValueError(f"{directory} is a pretraining checkpoint: pass n_classes to build a new head")
        model = cls(config, n_classes, multi_label, hidden, head_dropout)
        missing, unexpected = model.load_state_dict(load_weights(directory, "global_encoder.", device), strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(f"{directory}: no global encoder matching its config (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}): pass a Mega-AudioFormer export or a classifier checkpoint")
        return model.to(device)
