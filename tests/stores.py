"""Small real token stores for tests: a labelled audio folder tokenized by the real pipeline (bestrq codec)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from audio_trees import write_folder_tree

from mega_audio.data.store import ShardWriter, write_card
from mega_audio.data.tokenize import TokenizeConfig, tokenize


def build_token_store(root: Path, fmt: str = "wds", bitrate: float = 1.5, classes: tuple[str, ...] = ("tone", "noise", "chirp"),
                      per_class: int = 6, seconds: float = 2.0, seed: int = 0, shard_size: int = 4,
                      **tokenize_options) -> Path:
    """Write `per_class` clips per class under root/audio and tokenize them into root/store; returns the store dir.
    tokenize_options: more TokenizeConfig fields (codebook_size, bestrq_norm, store_features)."""
    write_folder_tree(root / "audio", labels=classes, per_label=per_class, seconds=seconds)
    cfg = TokenizeConfig(dataset="folder", data_root=str(root / "audio"), out=str(root / "store"), codec="bestrq",
                         bitrate=bitrate, format=fmt, shard_size=shard_size, batch_size=4, num_workers=0, seed=seed,
                         device="cpu", **tokenize_options)
    tokenize(cfg)
    return root / "store"


def codes_store(path: Path, codec: dict, n: int, prefix: str = "clip", frames: int = 150, seed: int = 0) -> Path:
    """A store of `n` random-code train clips named `<prefix><i>`, with the given codec card, through the real shard
    writer: e.g. an old corpus sharing another store's codec, or a store of another codec."""
    rng = np.random.default_rng(seed)
    writer = ShardWriter(path, "wds", rank=0, shard_size=4)
    for i in range(n):
        codes = rng.integers(0, codec["codebook_size"], (frames, codec["n_q"])).astype(np.int16)
        writer.add(codes, {"id": f"{prefix}{i}", "split": "train", "labels": []})
    writer.close()
    write_card(path, codec, "wds", "random")
    return path
