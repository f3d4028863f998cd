"""The tokenize stage: manifest slice -> read/resample (DataLoader workers) -> batched encode -> shard writer thread."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import option, to_argv, to_dict
from .audio import AudioError, load_audio
from .manifest import Clip, read_manifest, write_manifest
from .recipes import RECIPES, build_manifest, recipe_options
from .store import (
    FORMATS,
    ShardWriter,
    clean_interrupted,
    shard_ids,
    store_lock,
    write_card,
)

if TYPE_CHECKING:
    from ..codecs.logmel import LogMel


@dataclass
class TokenizeConfig:
    dataset: str = option("folder", "dataset recipe: " + ", ".join(RECIPES))
    data_root: str = option("", "root of the audio dataset (layouts in the README)")
    hf_name: str | None = option(None, "--dataset hf: a Hub dataset repo id, or a local copy (save_to_disk / parquet)")
    hf_config: str | None = option(None, "--dataset hf: the dataset's config (e.g. AudioSet's balanced, full)")
    label_column: str | None = option(None, "--dataset hf: column of the labels (default label; none = unlabelled)")
    split_map: list[str] = option([], "--dataset hf: HUB_SPLIT=STORE_SPLIT pairs, e.g. train=balanced_train test=eval "
                                      "(only the splits named are read; default every split, validation -> valid)")
    out: str = option("", "token store directory to create or complete")
    codec: str = option("bestrq", "encodec or bestrq", choices=["encodec", "bestrq"])
    bitrate: float = option(1.5, "kbps: 1.5, 3, 6, 12 or 24 (n_q = 2, 4, 8, 16, 32)")
    codec_weights: str | None = option(None, "Encodec weights: HF hub id, HF model dir or Meta .th file")
    codebook_size: int = option(1024, "codes per level: 1024, or 8192 with --codec bestrq (the BEST-RQ paper's)")
    bestrq_norm: str = option("clip", "bestrq input normalisation: one mean/std per clip (keeps the spectral "
                                      "envelope) or per mel bin (the BEST-RQ paper's)", choices=["clip", "feature"])
    store_features: str | None = option(None, "also store per-frame log-mel features next to the codes (80 bins, "
                                               "float16, 75 Hz: 43.2 MB per hour), the target of pretrain "
                                               "--mel-loss-weight", choices=["logmel"])
    compile: bool = option(False, "torch.compile the Encodec encoder: ~1.2x faster after 10-30 s of compiling per process")
    format: str = option("wds", "store format", choices=list(FORMATS))
    manifest: str | None = option(None, "use this manifest instead of building <out>/manifest.jsonl")
    shard_size: int = option(1000, "clips per shard")
    batch_size: int = option(8, "clips per encoder batch (similar lengths are batched together)")
    num_workers: int = option(2, "DataLoader processes that read and resample audio")
    min_seconds: float = option(0.1, "shorter clips are logged as failures")
    seed: int = option(0, "seed of the manifest's random splits")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda when available)")
    nproc: int = option(1, "local processes, one slice each (for many nodes use torchrun or a Slurm array)")
    rank: int | None = option(None, "this process's slice (default: RANK or SLURM_ARRAY_TASK_ID env, else 0)")
    world_size: int | None = option(None, "number of slices (default: WORLD_SIZE or SLURM_ARRAY_TASK_COUNT env, else 1)")


def process_slice(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world_size): flags, then torchrun/accelerate, then a Slurm array, else (0, 1)."""
    env = os.environ
    if rank is None:
        rank = int(env.get("RANK", env.get("SLURM_ARRAY_TASK_ID", 0)))
        if "RANK" not in env and "SLURM_ARRAY_TASK_MIN" in env:
            rank -= int(env["SLURM_ARRAY_TASK_MIN"])
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE", env.get("SLURM_ARRAY_TASK_COUNT", 1)))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return rank, world_size


def ensure_manifest(cfg: TokenizeConfig) -> list[Clip]:
    """Read the manifest, building `<out>/manifest.jsonl` first if it does not exist (deterministic, so ranks agree)."""
    path = Path(cfg.manifest or Path(cfg.out) / "manifest.jsonl")
    with store_lock(cfg.out):  # one process builds it, the others wait and read it
        if not path.exists():
            if not cfg.data_root and not cfg.hf_name:
                raise ValueError(f"no manifest at {path}: pass --data-root so one can be built")
            clips, report = build_manifest(cfg.dataset, cfg.data_root, seed=cfg.seed, **recipe_options(cfg))
            print(report.summary())
            if not clips:
                raise ValueError(f"no audio found for dataset {cfg.dataset!r} under {cfg.data_root}")
            write_manifest(path, clips)
    return read_manifest(path)


def failed_ids(store: Path) -> set[str]:
    ids = set()
    for log in store.glob("failures-r*.jsonl"):
        ids.update(json.loads(line)["id"] for line in log.read_text().splitlines() if line.strip())
    return ids


class _ReadClips(torch.utils.data.Dataset):
    """DataLoader side: read + downmix + resample one clip; a bad clip comes back as its error message."""

    def __init__(self, clips: list[Clip], sample_rate: int, min_seconds: float):
        self.clips, self.sample_rate, self.min_seconds = clips, sample_rate, min_seconds

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[Clip, np.ndarray | str]:
        clip = self.clips[i]
        try:
            return clip, load_audio(clip.path, self.sample_rate, self.min_seconds)
        except AudioError as e:
            return clip, str(e)


def _first(batch: list[Any]) -> Any:
    return batch[0]


def _sample_meta(clip: Clip, codes: np.ndarray, frame_rate: float) -> dict[str, Any]:
    return {"id": clip.id, "split": clip.split, "labels": clip.labels, "duration": round(len(codes) / frame_rate, 4),
            "source": clip.path, **({"extra": clip.extra} if clip.extra else {})}


class _WriterThread(threading.Thread):
    """Packs encoded clips into shards off the encoding thread, so the encoder never waits on disk."""

    def __init__(self, writer: ShardWriter):
        super().__init__(daemon=True)
        self.writer, self.inbox, self.error = writer, queue.Queue(maxsize=256), None

    def run(self) -> None:
        try:
            while (item := self.inbox.get()) is not None:
                self.writer.add(*item)
            self.writer.close()
        except BaseException as e:  # surfaced by finish()
            self.error = e

    def put(self, codes: np.ndarray, meta: dict[str, Any]) -> None:
        if self.error:
            raise self.error
        self.inbox.put((codes, meta))

    def finish(self) -> None:
        self.inbox.put(None)
        self.join()
        if self.error:
            raise self.error


def tokenize_local(cfg: TokenizeConfig) -> int:
    """Run `cfg.nproc` tokenize processes on this machine, one slice each; returns how many failed."""
    ensure_manifest(cfg)
    procs = [subprocess.Popen([sys.executable, "-m", "mega_audio.cli", "tokenize", *to_argv(cfg), "--nproc", "1",
                               "--rank", str(r), "--world-size", str(cfg.nproc)]) for r in range(cfg.nproc)]
    return sum(p.wait() != 0 for p in procs)


def tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    """Tokenize this process's slice of the manifest into `cfg.out`; safe to re-run after a crash."""
    from ..codecs import load_codec
    from ..codecs.logmel import LogMel

    if not cfg.out:
        raise ValueError("--out is required: the token store directory")
    store = Path(cfg.out)
    rank, world_size = process_slice(cfg.rank, cfg.world_size)
    device = cfg.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{rank % torch.cuda.device_count()}"  # one GPU per local process
    clips = ensure_manifest(cfg)  # first: missing data is said before a codec is loaded
    codec = load_codec(cfg.codec, cfg.bitrate, weights=cfg.codec_weights, device=device, compile=cfg.compile,
                       codebook_size=cfg.codebook_size, normalize=cfg.bestrq_norm)
    log_mel = LogMel(device=str(codec.device)) if cfg.store_features == "logmel" else None
    _refuse_other_codec(store, codec.card(), feature_card(log_mel, codec.frame_rate))
    _update_card(store, cfg, codec.card(), clips, log_mel)

    clean_interrupted(store, rank)
    skip = shard_ids(store) | failed_ids(store)
    my_slice = sorted(clips, key=lambda c: c.id)[rank::world_size]
    todo = [c for c in my_slice if c.id not in skip]
    todo.sort(key=lambda c: (c.split, c.duration or 0.0))  # similar lengths share a batch: little padding

    stats = {"ok": 0, "failed": 0, "frames": 0, "seconds": 0.0}
    writer = _WriterThread(ShardWriter(store, cfg.format, rank, cfg.shard_size))
    writer.start()
    failures = open(store / f"failures-r{rank:03d}.jsonl", "a")
    start = time.time()
    loader = torch.utils.data.DataLoader(_ReadClips(todo, codec.sample_rate, cfg.min_seconds), batch_size=1,
                                         collate_fn=_first, num_workers=cfg.num_workers, prefetch_factor=4 if cfg.num_workers else None)
    batch: list[tuple[Clip, np.ndarray]] = []

    def encode_batch() -> None:
        for (clip, wave), codes in zip(batch, codec.encode([w for _, w in batch])):
            meta = _sample_meta(clip, codes, codec.frame_rate)
            if log_mel is not None:
                with torch.inference_mode():
                    meta["logmel"] = log_mel(torch.as_tensor(wave).to(log_mel.device), len(codes)).half().cpu().numpy()
            writer.put(codes, meta)
            stats["ok"] += 1
            stats["frames"] += len(codes)
            stats["seconds"] += len(wave) / codec.sample_rate
        batch.clear()

    for clip, wave in tqdm(loader, total=len(todo), desc=f"tokenize r{rank}", unit="clip", disable=not todo):
        if isinstance(wave, str):
            failures.write(json.dumps({"id": clip.id, "path": clip.path, "reason": wave}) + "\n")
            failures.flush()
            stats["failed"] += 1
            continue
        batch.append((clip, wave))
        if len(batch) == cfg.batch_size:
            encode_batch()
    if batch:
        encode_batch()
    writer.finish()
    failures.close()

    card = _update_card(store, cfg, codec.card(), clips, log_mel)
    wall = time.time() - start
    stats.update(rank=rank, world_size=world_size, skipped=len(my_slice) - len(todo), wall=wall,
                 tokens=stats["frames"] * codec.n_q, realtime=stats["seconds"] / max(wall, 1e-9), card=card)
    return stats


def feature_card(log_mel: LogMel | None, frame_rate: float) -> dict[str, Any]:
    """The card's `features` entry: what each stored feature is and what it costs per hour of audio."""
    if log_mel is None:
        return {}
    bytes_per_hour = log_mel.n_mels * 2 * frame_rate * 3600  # float16
    return {"logmel": {"n_mels": log_mel.n_mels, "n_fft": log_mel.n_fft, "dtype": "float16", "frame_rate": frame_rate,
                       "log": "natural log of mel power + 1e-6", "mb_per_hour": round(bytes_per_hour / 1e6, 1)}}


def _refuse_other_codec(store: Path, codec_card: dict[str, Any], features: dict[str, Any]) -> None:
    card_path = store / "dataset.json"
    if card_path.exists():
        card = json.loads(card_path.read_text())
        existing = card["codec"]
        if existing["fingerprint"] != codec_card["fingerprint"] or existing["n_q"] != codec_card["n_q"]:
            raise ValueError(f"{store} holds tokens of another codec ({existing['name']}, n_q={existing['n_q']}, "
                             f"fingerprint {existing['fingerprint'][:12]}); write to a new --out")
        if card.get("features", {}) != features and card.get("shards"):
            raise ValueError(f"{store} holds features {sorted(card.get('features', {})) or 'none'}, this run would "
                             f"write {sorted(features) or 'none'}: pass the same --store-features or write to a new --out")
    store.mkdir(parents=True, exist_ok=True)


def _update_card(store: Path, cfg: TokenizeConfig, codec_card: dict[str, Any], clips: list[Clip],
                 log_mel: LogMel | None = None) -> dict[str, Any]:
    """Rebuild dataset.json under the store lock; `complete` says every manifest clip is in a shard or the failures."""
    with store_lock(store):
        failed = failed_ids(store)
        accounted = shard_ids(store) | failed
        settings = {k: v for k, v in to_dict(cfg).items() if k not in ("rank", "world_size")}
        extra = {"complete": all(c.id in accounted for c in clips), "manifest_clips": len(clips),
                 "failed": len(failed), "tokenize": settings,
                 **({"features": features} if (features := feature_card(log_mel, codec_card["frame_rate"])) else {})}
        return write_card(store, codec_card, cfg.format, cfg.dataset, extra=extra)


def tokenize_summary(stats: dict[str, Any]) -> str:
    return (f"tokenize r{stats['rank']}/{stats['world_size']}: {stats['ok']} clips ok, {stats['failed']} failed, "
            f"{stats['seconds'] / 3600:.2f} h of audio, {stats['tokens']:,} tokens, "
            f"{stats['realtime']:.0f} audio-s per wall-s")
