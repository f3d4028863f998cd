"""Model checkpoints: `model.safetensors` + `config.json` (model type, ModelConfig, metadata such as the codec card),
written atomically, read tensor by tensor; the `Pretrained` mixin gives every model save/from_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..fileio import atomic_write
from .config import ModelConfig

WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"


def write_checkpoint(model: nn.Module, directory: str | Path, header: dict) -> Path:
    """model.safetensors + config.json (the header), each written to a temporary file then renamed."""
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


def check_model_type(header: dict, expected: tuple[str, ...], directory) -> None:
    if header.get("model_type") not in expected:
        raise ValueError(f"{directory} holds a {header.get('model_type')!r} checkpoint, expected one of {expected}")


class Pretrained:
    """save_pretrained / from_pretrained / configure_optimizers for models built from one ModelConfig
    (configure_optimizers sits here, as on nanoGPT's model, because every model class shares it)."""

    model_type: str
    config: ModelConfig

    def checkpoint_header(self) -> dict:
        return {"model_type": self.model_type, "architecture": type(self).__name__, "config": self.config.to_dict()}

    def save_pretrained(self, directory: str | Path, metadata: dict | None = None) -> Path:
        return write_checkpoint(self, directory, {**self.checkpoint_header(), "metadata": metadata or {}})

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu"):
        header = read_checkpoint_config(directory)
        check_model_type(header, (cls.model_type,), directory)
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
