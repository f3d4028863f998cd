"""The tokenize stage: manifest slice -> read/resample (DataLoader workers) -> batched encode -> shard writer thread.

One process writes one slice of the manifest under a `WriterLease`; `--nproc N` starts N such processes, forwards
SIGINT/SIGTERM to them, and they die with it (so a killed launcher leaves no orphan writing the store)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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
    WriterLease,
    account,
    clean_interrupted,
    forget_failures,
    read_failures,
    shard_ids,
    store_lock,
    write_card,
    writers_active,
)

if TYPE_CHECKING:
    from ..codecs.logmel import LogMel

LAUNCHER_ENV = "MEGA_AUDIO_LAUNCHER_PID"  # set by tokenize_local in the processes it starts


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
    shard_size: int = option(1000, "clips per shard", min=1)
    batch_size: int = option(8, "clips per encoder batch (similar lengths are batched together)", min=1)
    num_workers: int = option(2, "DataLoader processes that read and resample audio", min=0)
    min_seconds: float = option(0.1, "shorter clips are logged as failures", min=0)
    seed: int = option(0, "seed of the manifest's random splits")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (default: cuda when available)")
    nproc: int = option(1, "local processes, one slice each (for many nodes use torchrun or a Slurm array)", min=1)
    rank: int | None = option(None, "this process's slice (default: RANK or SLURM_ARRAY_TASK_ID env, else 0)", min=0)
    world_size: int | None = option(None, "number of slices (default: WORLD_SIZE or SLURM_ARRAY_TASK_COUNT env, else 1)",
                                    min=1)
    retry_failed: bool = option(False, "try the clips logged in failures-r*.jsonl again (e.g. after fixing the files)")


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
    """Run `cfg.nproc` tokenize processes on this machine, one slice each; returns how many failed.
    SIGINT/SIGTERM are passed on to them, and each dies with this process (see die_with_launcher)."""
    with removed_if_failed(cfg.out):
        _check_card_settings(Path(cfg.out), cfg)
        ensure_manifest(cfg)
    env = {**os.environ, LAUNCHER_ENV: str(os.getpid())}
    procs = [subprocess.Popen([sys.executable, "-m", "mega_audio.cli", "tokenize", *to_argv(cfg), "--nproc", "1",
                               "--rank", str(r), "--world-size", str(cfg.nproc)], env=env) for r in range(cfg.nproc)]

    def forward(signum: int, _frame) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return sum(p.wait() != 0 for p in procs)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux), and stop now if `parent` is already
    gone (it may have died before this call)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent:
        sys.exit("tokenize: the process that started this one is gone")


def die_with_launcher() -> None:
    """In a process started by tokenize_local: die with the launcher, so a killed launcher leaves no orphan holding a
    slice."""
    if launcher := os.environ.get(LAUNCHER_ENV):
        die_with_parent(int(launcher))


def _worker_dies_with_tokenizer(parent: int, _worker_id: int) -> None:
    # DataLoader workers of a killed tokenize process were seen to outlive it (sleeping, reparented to PID 1)
    die_with_parent(parent, signal.SIGKILL)


@contextlib.contextmanager
def removed_if_failed(out: str) -> Iterator[None]:
    """A command that fails leaves no empty store behind: remove `out` if this call created it and it holds no card,
    no shard and no other writer (its own manifest goes too)."""
    existed = Path(out).exists()
    try:
        yield
    except BaseException:
        store = Path(out)
        if not existed and store.is_dir() and not (store / "dataset.json").exists() \
                and not any((store / "shards").glob("*")) and not writers_active(store):
            shutil.rmtree(store, ignore_errors=True)
        raise


def tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    """Tokenize this process's slice of the manifest into `cfg.out`; safe to re-run after a crash."""
    if not cfg.out:
        raise ValueError("--out is required: the token store directory")
    die_with_launcher()
    with removed_if_failed(cfg.out):
        return _tokenize(cfg)


def _tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    from ..codecs import load_codec
    from ..codecs.logmel import LogMel

    store = Path(cfg.out)
    rank, world_size = process_slice(cfg.rank, cfg.world_size)
    _check_card_settings(store, cfg)
    device = cfg.device
    if device is None and torch.cuda.is_available():
        device = f"cuda:{rank % torch.cuda.device_count()}"  # one GPU per local process
    clips = ensure_manifest(cfg)  # first: missing data is said before a codec is loaded
    codec = load_codec(cfg.codec, cfg.bitrate, weights=cfg.codec_weights, device=device, compile=cfg.compile,
                       codebook_size=cfg.codebook_size, normalize=cfg.bestrq_norm)
    log_mel = LogMel(device=str(codec.device)) if cfg.store_features == "logmel" else None
    _refuse_other_codec(store, codec.card(), feature_card(log_mel, codec.frame_rate))
    lease = WriterLease(store, rank, world_size)  # from here on this process alone writes this slice
    try:
        return _tokenize_slice(cfg, store, codec, log_mel, clips, rank, world_size)
    finally:
        lease.release()


def _tokenize_slice(cfg: TokenizeConfig, store: Path, codec, log_mel: LogMel | None, clips: list[Clip], rank: int,
                    world_size: int) -> dict[str, Any]:
    _update_card(store, cfg, codec.card(), clips, log_mel)
    clean_interrupted(store, rank)
    my_slice = sorted(clips, key=lambda c: c.id)[rank::world_size]
    done, failed = shard_ids(store), set(read_failures(store))
    if cfg.retry_failed:
        forget_failures(store, {c.id for c in my_slice} & failed - done)
        failed = set()
    todo = [c for c in my_slice if c.id not in done and c.id not in failed]
    todo.sort(key=lambda c: (c.split, c.duration or 0.0))  # similar lengths share a batch: little padding

    stats = {"ok": 0, "failed": 0, "frames": 0, "seconds": 0.0}
    writer = _WriterThread(ShardWriter(store, cfg.format, rank, cfg.shard_size))
    writer.start()
    failures = _open_log(store / f"failures-r{rank:03d}.jsonl")
    start = time.time()
    loader = torch.utils.data.DataLoader(_ReadClips(todo, codec.sample_rate, cfg.min_seconds), batch_size=1,
                                         collate_fn=_first, num_workers=cfg.num_workers,
                                         prefetch_factor=4 if cfg.num_workers else None,
                                         worker_init_fn=functools.partial(_worker_dies_with_tokenizer, os.getpid()))
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


def _open_log(path: Path):
    """Open a failures log for appending; a last line cut short by a kill is ended first (records are ASCII JSON)."""
    log = open(path, "a+")
    if log.tell():
        log.seek(log.tell() - 1)
        if log.read(1) != "\n":
            log.write("\n")
    return log


def _existing_card(store: Path) -> dict[str, Any] | None:
    card_path = store / "dataset.json"
    return json.loads(card_path.read_text()) if card_path.exists() else None


def _check_card_settings(store: Path, cfg: TokenizeConfig) -> None:
    """The card cannot lie: a re-run must use the store's format, dataset and data root."""
    card = _existing_card(store)
    if card is None:
        return
    before = card.get("tokenize", {})
    same_root = not cfg.data_root or not before.get("data_root") or \
        Path(cfg.data_root).resolve() == Path(before["data_root"]).resolve()
    for what, now, then, same in (("--format", cfg.format, card["format"], cfg.format == card["format"]),
                                  ("--dataset", cfg.dataset, card["dataset"], cfg.dataset == card["dataset"]),
                                  ("--data-root", cfg.data_root, before.get("data_root"), same_root)):
        if not same:
            raise ValueError(f"{store} was tokenized with {what} {then}, this run says {now}: re-run with {what} "
                             f"{then} to complete it, or write to a new --out")


def _refuse_other_codec(store: Path, codec_card: dict[str, Any], features: dict[str, Any]) -> None:
    card = _existing_card(store)
    if card is not None:
        existing = card["codec"]
        if existing["fingerprint"] != codec_card["fingerprint"] or existing["n_q"] != codec_card["n_q"]:
            raise ValueError(f"{store} holds tokens of another codec ({existing['name']}, n_q={existing['n_q']}, "
                             f"fingerprint {existing['fingerprint'][:12]}); write to a new --out")
        if card.get("features", {}) != features and card.get("shards"):
            raise ValueError(f"{store} holds features {sorted(card.get('features', {})) or 'none'}, this run would "
                             f"write {sorted(features) or 'none'}: pass the same --store-features or write to a new --out")


def _update_card(store: Path, cfg: TokenizeConfig, codec_card: dict[str, Any], clips: list[Clip],
                 log_mel: LogMel | None = None) -> dict[str, Any]:
    """Rebuild dataset.json under the store lock; `complete`: every manifest clip is in exactly one shard or failed."""
    with store_lock(store):
        accounting = account(store, (c.id for c in clips))
        settings = {k: v for k, v in to_dict(cfg).items() if k not in ("rank", "world_size", "retry_failed")}
        if settings["data_root"]:
            settings["data_root"] = str(Path(settings["data_root"]).resolve())
        extra = {"complete": accounting.complete, "manifest_clips": len(clips), "failed": len(accounting.failed),
                 "tokenize": settings,
                 **({"features": features} if (features := feature_card(log_mel, codec_card["frame_rate"])) else {})}
        return write_card(store, codec_card, cfg.format, cfg.dataset, extra=extra)


def tokenize_summary(stats: dict[str, Any]) -> str:
    return (f"tokenize r{stats['rank']}/{stats['world_size']}: {stats['ok']} clips ok, {stats['failed']} failed, "
            f"{stats['seconds'] / 3600:.2f} h of audio, {stats['tokens']:,} tokens, "
            f"{stats['realtime']:.0f} audio-s per wall-s")
