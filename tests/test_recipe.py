"""The pre-training recipe's learning signal at toy scale.

Two classes of generated clips that differ *only in temporal structure*: the same eight notes of a scale, played
upwards or downwards. Every clip of either class holds the same notes for the same time, so a bag of tokens (and an
encoder that has not learned to read context) sees the two classes as nearly the same. A short pre-training with the
default recipe must give the frozen encoder features a small probe can separate far better than the features of the
same encoder at random init. If this fails, pre-training has stopped learning anything about context.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mega_audio.data.manifest import ManifestReport, write_manifest
from mega_audio.data.recipes.folder import prepare_folder
from mega_audio.data.tokenize import TokenizeConfig, tokenize
from mega_audio.train.finetune import FinetuneConfig, finetune
from mega_audio.train.pretrain import PretrainConfig, run

SR = 24000
SCALE = 220 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16]) / 12)


def note(freq: float, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SR
    envelope = np.minimum(1, t / 0.01) * np.exp(-3 * t)
    return envelope * sum(np.sin(2 * np.pi * freq * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))


def scale_clip(direction: str, rng: np.random.Generator, seconds: float = 3.0, n_notes: int = 8) -> np.ndarray:
    """Eight consecutive notes of the scale from a random start, upwards or downwards, slightly detuned."""
    start = int(rng.integers(0, len(SCALE) - n_notes + 1))
    freqs = SCALE[start: start + n_notes] * rng.uniform(0.98, 1.02)
    freqs = freqs if direction == "up" else freqs[::-1]
    x = np.concatenate([note(f, int(seconds / n_notes * SR), rng) for f in freqs])
    return (0.3 * x + 0.01 * rng.standard_normal(len(x))).astype(np.float32)


@pytest.fixture(scope="module")
def order_store(tmp_path_factory) -> Path:
    """60 + 60 clips of 3 s, split 50 / 25 / 25 so the probes are scored on 30 clips."""
    root = tmp_path_factory.mktemp("order")
    rng = np.random.default_rng(0)
    for direction in ("up", "down"):
        (root / "audio" / direction).mkdir(parents=True)
        for i in range(60):
            sf.write(root / "audio" / direction / f"{direction}{i:03d}.wav", scale_clip(direction, rng), SR)
    clips = prepare_folder(root / "audio", ManifestReport("folder", str(root / "audio")), fractions=(0.5, 0.25, 0.25))
    write_manifest(root / "manifest.jsonl", clips)
    tokenize(TokenizeConfig(dataset="folder", data_root=str(root / "audio"), out=str(root / "store"), codec="bestrq",
                            bitrate=1.5, manifest=str(root / "manifest.jsonl"), shard_size=16, batch_size=8,
                            num_workers=0, device="cpu"))
    return root / "store"


def probe_accuracy(store: Path, out: Path, **init) -> float:
    results = finetune(FinetuneConfig(task="folder", data=str(store), output_dir=str(out), freeze=True, epochs=40,
                                      lr=1e-3, batch_size=16, max_seconds=3.0, cpu=True, **init))
    return results["metrics"]["test"]["accuracy"]


def test_a_briefly_pretrained_encoder_reads_temporal_order_that_a_random_one_cannot(order_store, tmp_path):
    pretrain = PretrainConfig(data=[str(order_store)], output_dir=str(tmp_path / "pre"), max_steps=120, batch_size=16,
                              max_seconds=3.0, warmup_steps=12, lr=2e-3, num_workers=0, eval_every=-1, save_every=0,
                              cpu=True)  # the default recipe: mask unit, ratio and span as shipped
    run(pretrain)
    pretrained = probe_accuracy(order_store, tmp_path / "probe-pre", init=str(tmp_path / "pre" / "model"))
    random_init = probe_accuracy(order_store, tmp_path / "probe-random", scratch=True)
    n_test = json.loads((tmp_path / "probe-pre" / "results.json").read_text())["n"]["test"]
    assert n_test == 30
    assert pretrained >= 0.9, f"pre-trained probe {pretrained:.2f}"
    assert pretrained >= random_init + 0.15, f"pre-trained {pretrained:.2f} vs random init {random_init:.2f}"
