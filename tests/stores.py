"""Small real token stores for tests: a labelled audio folder tokenized by the real pipeline (bestrq codec)."""

from __future__ import annotations

from pathlib import Path

from audio_trees import write_folder_tree

from mega_audio.data.tokenize import TokenizeConfig, tokenize


def build_token_store(root: Path, fmt: str = "wds", bitrate: float = 1.5, classes: tuple[str, ...] = ("tone", "noise", "chirp"),
                      per_class: int = 6, seconds: float = 2.0, seed: int = 0, shard_size: int = 4) -> Path:
    """Write `per_class` clips per class under root/audio and tokenize them into root/store; returns the store dir."""
    write_folder_tree(root / "audio", labels=classes, per_label=per_class, seconds=seconds)
    cfg = TokenizeConfig(dataset="folder", data_root=str(root / "audio"), out=str(root / "store"), codec="bestrq",
                         bitrate=bitrate, format=fmt, shard_size=shard_size, batch_size=4, num_workers=0, seed=seed,
                         device="cpu")
    tokenize(cfg)
    return root / "store"
