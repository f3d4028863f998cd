"""Mega-AudioFormer: config and presets, global/local encoders, masked token modelling, classifier, flat baseline, checkpoints."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange, repeat
from safetensors import safe_open
from safetensors.torch import save_file

from mega_audio.fileio import atomic_write
from mega_audio.layers import (
    Encoder,
    LevelEmbedding,
    LevelHeads,
    attention_valid_mask,
    masked_mean,
)

IGNORE_INDEX = -100  # targets of tokens that are not masked (or are padding)
GLOBAL_MIXERS = ("attention", "summary_mixing")
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"


@dataclass
class ModelConfig:
    n_q: int = 16  # codebook levels per frame: from the token store's card
    codebook_size: int = 1024  # codes per level: from the card; ids codebook_size and +1 are MASK and PAD
    d_token: int = 64  # width of each level's token embedding (the patch is n_q of them, concatenated)
    d_global: int = 128
    n_global_layers: int = 2
    n_global_heads: int = 4
    d_local: int = 64
    n_local_layers: int = 1
    n_local_heads: int = 2
    mlp_ratio: int = 4
    dropout: float = 0.0
    global_mixer: str = "attention"  # or "summary_mixing" (linear in the number of frames)

    def __post_init__(self):
        if self.global_mixer not in GLOBAL_MIXERS:
            raise ValueError(f"global_mixer={self.global_mixer!r}: use one of {GLOBAL_MIXERS}")
        for width, heads, name in [(self.d_global, self.n_global_heads, "global"), (self.d_local, self.n_local_heads, "local")]:
            if width % heads or (width // heads) % 2:
                raise ValueError(f"d_{name}={width} with n_{name}_heads={heads}: the head dim must be a whole, even number (rotary)")

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    @property
    def pad_id(self) -> int:
        return self.codebook_size + 1

    @property
    def vocab_size(self) -> int:  # codes + MASK + PAD
        return self.codebook_size + 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}: was this config written by a newer mega-audio?")
        return cls(**d)

    def check_data(self, n_q: int, codebook_size: int) -> None:
        """Refuse tokens the model was not built for (a different bitrate or codec)."""
        if (n_q, codebook_size) != (self.n_q, self.codebook_size):
            raise ValueError(
                f"model expects n_q={self.n_q}, codebook_size={self.codebook_size} but the data has n_q={n_q}, "
                f"codebook_size={codebook_size}: tokenize at the model's bitrate or use a matching checkpoint"
            )


PRESETS = {
    # CPU tests and the 10-minute demo
    "tiny": ModelConfig(d_token=64, d_global=128, n_global_layers=2, n_global_heads=4, d_local=64, n_local_layers=1, n_local_heads=2),
    "small": ModelConfig(d_token=256, d_global=512, n_global_layers=6, n_global_heads=8, d_local=256, n_local_layers=2, n_local_heads=4),
    # The paper's global encoder (12 x 768, 12 heads) and a 2-layer local encoder. The local encoder runs on
    # every token (T * n_q of them, as many as a flat model sees), so its width sets the per-token cost at
    # high bitrates: 384 costs about a quarter of a 768-wide layer per token, and its 6 heads of 64 are
    # plenty for sequences of n_q <= 32 levels.
    "base": ModelConfig(d_token=384, d_global=768, n_global_layers=12, n_global_heads=12, d_local=384, n_local_layers=2, n_local_heads=6),
}


def model_config(preset: str, n_q: int, codebook_size: int, **overrides) -> ModelConfig:
    """A preset with the data's n_q and codebook size, and any field overridden by name."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown model config fields {sorted(unknown)}: valid fields are {sorted(fields)}")
    return dataclasses.replace(PRESETS[preset], n_q=n_q, codebook_size=codebook_size, **overrides)


# ---------------------------------------------------------------------------------------------------------
# masked token modelling


def mask_tokens(
    codes: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    ratio: float = 0.25,
    generator: torch.Generator | None = None,
    *,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace round(ratio * valid tokens) tokens of each clip (at least one) by mask_id.

    codes: (B, T, n_q), padding_mask: (B, T) True = valid frame. Returns (inputs, targets) where
    targets hold the original code at masked tokens and IGNORE_INDEX everywhere else."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"mask ratio {ratio} must be in (0, 1] (default 0.25)")
    codes = codes.long()
    B, T, n_q = codes.shape
    if padding_mask is None:
        padding_mask = torch.ones(B, T, dtype=torch.bool, device=codes.device)
    valid = repeat(padding_mask, "b t -> b (t q)", q=n_q)  # (B, T * n_q)
    device = generator.device if generator is not None else codes.device
    scores = torch.rand(B, T * n_q, generator=generator, device=device).to(codes.device)
    scores = scores.masked_fill(~valid, 2.0)  # padded tokens sort last and are never picked
    n_mask = (valid.sum(dim=1) * ratio).round().clamp(min=1)  # (B,)
    first_n = torch.arange(T * n_q, device=codes.device) < n_mask[:, None]  # (B, T * n_q)
    masked = torch.zeros_like(valid).scatter(1, scores.argsort(dim=1), first_n) & valid
    masked = rearrange(masked, "b (t q) -> b t q", q=n_q)
    return codes.masked_fill(masked, mask_id), codes.masked_fill(~masked, IGNORE_INDEX)


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy over masked tokens only. targets: (B, T, n_q); logits: (B, T, n_q, V) for
    every token, or (n_masked, V) for the masked ones level by level (what forward returns with targets)."""
    picked = targets.movedim(-1, 0) != IGNORE_INDEX  # (n_q, B, T): level-major, the order of masked logits
    if logits.dim() == 4:
        logits = logits.movedim(2, 0)[picked]
    logits, targets = logits.float(), targets.movedim(-1, 0)[picked]  # (n_masked, V), (n_masked,)
    if logits.shape[0] == 0:  # nothing masked: a zero that still backpropagates
        zero = logits.sum() * 0.0
        return zero, zero.detach()
    accuracy = (logits.argmax(dim=-1) == targets).float().mean()
    return F.cross_entropy(logits, targets), accuracy


# ---------------------------------------------------------------------------------------------------------
# the two encoders


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
            mixer=config.global_mixer,
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


class LocalEncoder(nn.Module):
    """Within each frame: token embeddings + that frame's global state -> per-level logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.token_proj = nn.Identity() if config.d_token == config.d_local else nn.Linear(config.d_token, config.d_local)
        self.frame_proj = nn.Linear(config.d_global, config.d_local)
        self.encoder = Encoder(config.d_local, config.n_local_layers, config.n_local_heads, config.mlp_ratio, config.dropout)
        self.heads = LevelHeads(config.n_q, config.d_local, config.codebook_size)

    def forward(self, tokens: torch.Tensor, frames: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (B, T, n_q, d_token), frames: (B, T, d_global) -> logits (B, T, n_q, codebook_size),
        or with select: (B, T, n_q) bool only the selected tokens' logits (n_selected, codebook_size), level by level."""
        x = self.token_proj(tokens) + self.frame_proj(frames).unsqueeze(2)  # (B, T, n_q, d_local)
        x = rearrange(x, "b t q d -> (b t) q d")  # one short sequence per frame, rotary over the level
        x = self.encoder(x)  # a frame has all its levels: no padding inside
        if select is not None:
            return self.heads(x, rearrange(select, "b t q -> (b t) q"))
        return rearrange(self.heads(x), "(b t) q v -> b t q v", b=tokens.shape[0])


def init_weights(module: nn.Module, depth: int) -> None:
    """nanoGPT init: N(0, 0.02), residual projections scaled down by sqrt(2 * depth)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.endswith("out_proj.weight"):
            nn.init.normal_(p, std=0.02 / (2 * depth) ** 0.5)


# ---------------------------------------------------------------------------------------------------------
# checkpoints: model.safetensors + config.json, each written to a temp file then renamed


def save_checkpoint(model: nn.Module, directory: str | Path, header: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(header, indent=2) + "\n"))
    return directory


def read_checkpoint_config(directory: str | Path) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file() or not (Path(directory) / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} + {WEIGHTS_NAME} in {directory}: pass a directory written by save_pretrained")
    return json.loads(path.read_text())


def load_weights(directory: str | Path, prefix: str = "", device: str = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with prefix (others are never read from disk)."""
    with safe_open(str(Path(directory) / WEIGHTS_NAME), framework="pt", device=str(device)) as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def _check_type(header: dict, expected: tuple[str, ...], directory) -> None:
    if header.get("model_type") not in expected:
        raise ValueError(f"{directory} holds a {header.get('model_type')!r} checkpoint, expected one of {expected}")


class Pretrained:
    """save_pretrained / from_pretrained / configure_optimizers for models built from one ModelConfig."""

    model_type: str
    config: ModelConfig

    def checkpoint_header(self) -> dict:
        return {"model_type": self.model_type, "architecture": type(self).__name__, "config": self.config.to_dict()}

    def save_pretrained(self, directory: str | Path, metadata: dict | None = None) -> Path:
        return save_checkpoint(self, directory, {**self.checkpoint_header(), "metadata": metadata or {}})

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu"):
        header = read_checkpoint_config(directory)
        _check_type(header, (cls.model_type,), directory)
        model = cls(ModelConfig.from_dict(header["config"]))
        model.load_state_dict(load_weights(directory, device=device))
        return model.to(device)

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float] = (0.9, 0.95)):
        """AdamW that decays matrices and embeddings (>= 2D) but not norms and biases."""
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = True if params and all(p.is_cuda for p in params) else None
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)


# ---------------------------------------------------------------------------------------------------------
# the models


class MegaAudioFormer(Pretrained, nn.Module):
    """Masked token model over codec tokens: a global encoder over frames, a local encoder within frames."""

    model_type = "mega_audio_former"

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.global_encoder = GlobalEncoder(config)
        self.local_encoder = LocalEncoder(config)
        init_weights(self.global_encoder, config.n_global_layers)
        init_weights(self.local_encoder, config.n_local_layers)

    def forward(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None, targets: torch.Tensor | None = None):
        """codes: (B, T, n_q), padding_mask: (B, T) True = valid -> (logits (B, T, n_q, V), None).

        With targets (from mask_tokens) -> (logits of the masked tokens only (n_masked, V), loss), ordered
        level by level: the output heads skip the 75% of tokens the loss ignores (nanoGPT's trick of
        computing only the logits it needs)."""
        select = None if targets is None else targets != IGNORE_INDEX
        tokens = self.global_encoder.embed(codes, padding_mask)  # (B, T, n_q, d_token)
        frames = self.global_encoder.encode(tokens, padding_mask)  # (B, T, d_global)
        logits = self.local_encoder(tokens, frames, select)  # (B, T, n_q, V) or (n_masked, V)
        return logits, None if targets is None else mlm_loss(logits, targets)[0]


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
            mixer=config.global_mixer,
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
        if targets is not None:
            logits = self.heads(x, rearrange(targets != IGNORE_INDEX, "b t q -> (b t) q"))  # (n_masked, V)
            return logits, mlm_loss(logits, targets)[0]
        return rearrange(self.heads(x), "(b t) q v -> b t q v", b=codes.shape[0]), None


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
                        hidden: int | None = None, device: str = "cpu") -> "AudioClassifier":
        """From a classifier checkpoint (everything restored), or from a pretraining checkpoint: only its
        global_encoder.* weights are read, the head is new and the local encoder is never built."""
        header = read_checkpoint_config(directory)
        _check_type(header, (cls.model_type, MegaAudioFormer.model_type), directory)
        config = ModelConfig.from_dict(header["config"])
        if header["model_type"] == cls.model_type:
            model = cls(config, header["n_classes"], header["multi_label"], header["hidden"])
            model.load_state_dict(load_weights(directory, device=device))
            return model.to(device)
        if n_classes is None:
            raise ValueError(f"{directory} is a pretraining checkpoint: pass n_classes to build a new head")
        model = cls(config, n_classes, multi_label, hidden)
        missing, unexpected = model.load_state_dict(load_weights(directory, "global_encoder.", device), strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            raise ValueError(f"{directory}: global encoder weights do not match the config "
                             f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        return model.to(device)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per top-level part ("global", "local", "head", ...) and in total."""
    counts = {name.removesuffix("_encoder"): sum(p.numel() for p in child.parameters())
              for name, child in model.named_children()}
    counts = {k: v for k, v in counts.items() if v}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
