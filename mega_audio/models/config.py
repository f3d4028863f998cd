"""Model configuration: one dataclass (`ModelConfig`), the presets as plain instances, `model_config` to pick one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GLOBAL_MIXERS = ("attention", "summary_mixing")
GLOBAL_BLOCKS = ("transformer", "branchformer")


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
    global_block: str = "transformer"  # or "branchformer" (the mixer and a cgMLP in parallel)
    conv_kernel: int = 31  # frames seen by the depthwise convs of summary_mixing and branchformer blocks (~0.4 s)
    mel_bins: int = 0  # > 0: a linear head predicts this many log-mel bins of each frame from its global state
    contrastive_dim: int = 0  # > 0: an MLP projects each clip's pooled global state to this size for the contrastive loss
    teacher_clusters: int = 0  # > 0: a linear head predicts each frame's cluster of a teacher's states (HuBERT-style)

    def __post_init__(self):
        if self.global_mixer not in GLOBAL_MIXERS:
            raise ValueError(f"global_mixer={self.global_mixer!r}: use one of {GLOBAL_MIXERS}")
        if self.global_block not in GLOBAL_BLOCKS:
            raise ValueError(f"global_block={self.global_block!r}: use one of {GLOBAL_BLOCKS}")
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
    # the next step up that still pre-trains in minutes on one CPU core (about 3.5x tiny's step time)
    "mini": ModelConfig(d_token=64, d_global=256, n_global_layers=4, n_global_heads=4, d_local=64, n_local_layers=1, n_local_heads=2),
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
