"""Model checkpoints: `model.safetensors` + `config.json` (model type, ModelConfig, metadata such as the codec card) +
a model card `README.md`, written atomically, read tensor by tensor, from a local directory or a Hugging Face Hub repo.

`Pretrained` builds on huggingface_hub's `PyTorchModelHubMixin`: the mixin gives `push_to_hub` (and the hub plumbing
of `save_pretrained`); the files themselves are ours (`_save_pretrained`), so a checkpoint written before the mixin
and one downloaded from the Hub read the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from safetensors import safe_open
from safetensors.torch import save_file

from ..fileio import atomic_write, atomic_write_text
from .config import ModelConfig
from .model_card import model_card

WEIGHTS_NAME, CONFIG_NAME, CARD_NAME = "model.safetensors", "config.json", "README.md"
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # `user/name`: read from the Hub when no such local directory exists


def local_checkpoint(path_or_repo_id: str | Path, revision: str | None = None, token: str | bool | None = None,
                     cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """The local directory of a checkpoint: the path itself, or a Hub repo's snapshot in the Hugging Face cache."""
    path = Path(path_or_repo_id).expanduser()
    if path.exists() or not REPO_ID.match(str(path_or_repo_id)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_repo_id), revision=revision, token=token, cache_dir=cache_dir,
                                      local_files_only=local_files_only,
                                      allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]))
    except Exception as e:  # offline, unknown repo, no access: all say the same to the user
        raise FileNotFoundError(f"{path_or_repo_id} is no local directory and could not be read from the Hugging Face "
                                f"Hub ({type(e).__name__}): pass a directory written by save_pretrained") from e


def write_checkpoint(model: nn.Module, directory: str | Path, header: dict) -> Path:
    """model.safetensors + config.json (the header) + README.md, each written to a temporary file then renamed."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(header, indent=2) + "\n")
    atomic_write_text(directory / CARD_NAME, model_card(header))
    return directory


def read_checkpoint_config(directory: str | Path) -> dict:
    directory = local_checkpoint(directory)
    path = directory / CONFIG_NAME
    if not path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} + {WEIGHTS_NAME} in {directory}: pass a directory written by save_pretrained")
    return json.loads(path.read_text())


def load_weights(directory: str | Path, prefix: str = "", device: str = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names start with prefix (others are never read from disk)."""
    with safe_open(str(local_checkpoint(directory) / WEIGHTS_NAME), framework="pt", device=str(device)) as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def check_model_type(header: dict, expected: tuple[str, ...], directory) -> None:
    if header.get("model_type") not in expected:
        raise ValueError(f"{directory} holds a {header.get('model_type')!r} checkpoint, expected one of {expected}")


class Pretrained(PyTorchModelHubMixin, library_name="mega-audio", tags=["audio", "codec-tokens"]):
    """save_pretrained / from_pretrained / push_to_hub / configure_optimizers for models built from one ModelConfig
    (configure_optimizers sits here, as on nanoGPT's model, because every model class shares it).

    `metadata` (a dict: the codec card, the training data, results) rides in config.json and the model card."""

    model_type: str
    config: ModelConfig
    metadata: dict

    def checkpoint_header(self) -> dict:
        return {"model_type": self.model_type, "architecture": type(self).__name__, "config": self.config.to_dict(),
                "metadata": getattr(self, "metadata", None) or {}}

    def save_pretrained(self, directory: str | Path, *, metadata: dict | None = None, push_to_hub: bool = False,
                        repo_id: str | None = None, **hub_kwargs) -> Path | str:
        """Write the checkpoint to `directory` (with `metadata`, if given, replacing the model's); with push_to_hub,
        also upload it to `repo_id` (default: the directory's name) and return the commit URL.

        Not the mixin's save_pretrained: that one deletes config.json before writing it again, and a checkpoint must
        never be seen (or left by a crash) without it. `config` and `model_card_kwargs` (from the mixin's
        push_to_hub) are not needed: config.json and the card come from the model itself."""
        if metadata is not None:
            self.metadata = metadata
        write_checkpoint(self, directory, self.checkpoint_header())
        if push_to_hub:
            hub_kwargs = {k: v for k, v in hub_kwargs.items() if k not in ("config", "model_card_kwargs")}
            return self.push_to_hub(repo_id or Path(directory).name, **hub_kwargs)
        return Path(directory)

    def _save_pretrained(self, save_directory: Path) -> None:
        write_checkpoint(self, save_directory, self.checkpoint_header())

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        return ModelCard(model_card(self.checkpoint_header()))

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, device: str = "cpu", **hub_kwargs):
        """A model from a local directory or a Hub repo id (`user/name`; hub_kwargs: revision, token, cache_dir,
        local_files_only), its metadata restored."""
        directory = local_checkpoint(path_or_repo_id, **hub_kwargs)
        header = read_checkpoint_config(directory)
        check_model_type(header, (cls.model_type,), path_or_repo_id)
        model = cls(ModelConfig.from_dict(header["config"]))
        model.load_state_dict(load_weights(directory, device=device))
        model.metadata = header.get("metadata", {})
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
