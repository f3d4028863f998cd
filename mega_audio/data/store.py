"""Token stores: atomic webdataset/zarr shards of `(T, n_q)` int16 codes, a dataset.json card, one reader API.

Layout of a store directory:

    dataset.json                 the card: codec, fingerprint, rates, n_q, labels, split sizes, shards
    manifest.jsonl               the clips it was built from
    failures-r000.jsonl          clips a writer skipped, with the reason (one log per writer process)
    shards/train-r000-000000.tar     webdataset shard: per sample `<id>.codes.npy` + `<id>.json`
    shards/train-r000-000000.zarr/   or a zarr group: `codes (sum T, n_q)`, `offsets (N+1,)`, per-clip meta
    shards/train-r000-000000.json    the shard's index; a shard exists only once its index does

A shard is written under a temporary name and renamed when complete, then its index is written
(atomically too). A shard file without an index is an interrupted write and is removed on resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from .shards import READERS, WRITERS, Sample

FORMATS = ("wds", "zarr")
SUFFIX = {"wds": ".tar", "zarr": ".zarr"}
SHARD_NAME = re.compile(r"^(?P<split>.+)-r(?P<rank>\d+)-(?P<index>\d+)$")
CODEC_KEYS = ("name", "fingerprint", "n_q", "codebook_size")  # what decides the tokens: stores and models must agree


@dataclass(frozen=True)
class ShardInfo:
    name: str  # file name, e.g. train-r000-000003.tar
    split: str
    format: str
    n: int  # clips
    frames: int  # sum of T over clips
    path: str

    @property
    def index_path(self) -> Path:
        return Path(self.path).with_suffix(".json")


def remove_path(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Writing


def write_shard(store: str | Path, name: str, fmt: str, samples: list[Sample]) -> ShardInfo:
    """Write one complete shard atomically (temporary name, rename, then its index)."""
    shard_dir = Path(store) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    final = shard_dir / (name + SUFFIX[fmt])
    tmp = final.with_name(final.name + ".tmp")
    remove_path(tmp)
    WRITERS[fmt](tmp, samples)
    os.replace(tmp, final)
    split = samples[0][1]["split"]
    info = ShardInfo(final.name, split, fmt, len(samples), int(sum(len(c) for c, _ in samples)), str(final))
    index = {**asdict(info), "ids": [m["id"] for _, m in samples], "labels": [m.get("labels", []) for _, m in samples]}
    del index["path"]
    atomic_write_text(info.index_path, json.dumps(index))
    return info


class ShardWriter:
    """Buffers samples of one split and writes a shard every `shard_size` clips; one writer per process."""

    def __init__(self, store: str | Path, fmt: str, rank: int, shard_size: int = 1000):
        if fmt not in FORMATS:
            raise ValueError(f"unknown store format {fmt!r}: choose one of {FORMATS}")
        self.store, self.fmt, self.rank, self.shard_size = Path(store), fmt, rank, shard_size
        self.buffers: dict[str, list[Sample]] = {}
        self.written: list[ShardInfo] = []
        self.next_index: dict[str, int] = {}

    def _next_name(self, split: str) -> str:
        if split not in self.next_index:  # once per split: continue after this rank's existing shards
            taken = [int(m["index"]) for p in (self.store / "shards").glob(f"{split}-r{self.rank:03d}-*.json")
                     if (m := SHARD_NAME.match(p.stem))]
            self.next_index[split] = max(taken, default=-1) + 1
        index, self.next_index[split] = self.next_index[split], self.next_index[split] + 1
        return f"{split}-r{self.rank:03d}-{index:06d}"

    def add(self, codes: np.ndarray, meta: dict[str, Any]) -> None:
        buffer = self.buffers.setdefault(meta["split"], [])
        buffer.append((codes, meta))
        if len(buffer) >= self.shard_size:
            self.flush(meta["split"])

    def flush(self, split: str) -> None:
        samples = self.buffers.pop(split, [])
        if samples:
            self.written.append(write_shard(self.store, self._next_name(split), self.fmt, samples))

    def close(self) -> None:
        for split in list(self.buffers):
            self.flush(split)


def clean_interrupted(store: str | Path, rank: int | None = None) -> list[Path]:
    """Remove temporary files and shards without an index (an interrupted write) of one rank, or of all."""
    shard_dir = Path(store) / "shards"
    removed = []
    for path in sorted(shard_dir.glob("*")) if shard_dir.exists() else []:
        stem = path.name.lstrip(".").split(".")[0]  # also the hidden temporary files of atomic_write
        m = SHARD_NAME.match(stem)
        if m is None or (rank is not None and int(m["rank"]) != rank):
            continue
        interrupted = path.name.endswith(".tmp") or (path.suffix in (".tar", ".zarr") and not path.with_suffix(".json").exists())
        if interrupted:
            remove_path(path)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Reading


def list_shards(store: str | Path, split: str | None = None) -> list[ShardInfo]:
    """Complete shards (those with an index), sorted by name."""
    shards = []
    for index_path in sorted((Path(store) / "shards").glob("*.json")):
        index = json.loads(index_path.read_text())
        if split is None or index["split"] == split:
            shards.append(ShardInfo(index["name"], index["split"], index["format"], index["n"], index["frames"],
                                    str(index_path.with_name(index["name"]))))
    return shards


def shard_ids(store: str | Path) -> set[str]:
    """Ids of every clip in a complete shard of the store."""
    ids: set[str] = set()
    for index_path in (Path(store) / "shards").glob("*.json"):
        ids.update(json.loads(index_path.read_text())["ids"])
    return ids


def read_shard(shard: ShardInfo) -> Iterator[Sample]:
    """Yield `(codes (T, n_q) int16, meta)` for every clip of one shard, in write order."""
    return READERS[shard.format](shard.path)


class TokenStore:
    """One reader API over webdataset and zarr stores: `.card`, `.shards(split)`, `.iter_samples(split)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        card_path = self.path / "dataset.json"
        if not card_path.exists():
            raise FileNotFoundError(f"{self.path} is not a token store (no dataset.json): build one with "
                                    f"`mega-audio tokenize` or `make tokenize`")
        self.card: dict[str, Any] = json.loads(card_path.read_text())

    @property
    def n_q(self) -> int:
        return self.card["codec"]["n_q"]

    @property
    def codebook_size(self) -> int:
        return self.card["codec"]["codebook_size"]

    @property
    def frame_rate(self) -> float:
        return self.card["codec"]["frame_rate"]

    @property
    def labels(self) -> list[str]:
        return self.card["labels"]

    def shards(self, split: str | None = None) -> list[ShardInfo]:
        return list_shards(self.path, split)

    def num_samples(self, split: str | None = None) -> int:
        return sum(s.n for s in self.shards(split))

    def iter_samples(self, split: str | None = None, shards: Iterable[ShardInfo] | None = None) -> Iterator[Sample]:
        for shard in self.shards(split) if shards is None else shards:
            yield from read_shard(shard)

    def __repr__(self) -> str:
        return f"TokenStore({str(self.path)!r}, format={self.card['format']}, n_q={self.n_q})"


def check_same_codec(stores: list[TokenStore]) -> None:
    """Refuse to mix stores whose codec weights, n_q or codebook size differ."""
    first = stores[0].card["codec"]
    for store in stores[1:]:
        other = store.card["codec"]
        diff = [k for k in CODEC_KEYS if other[k] != first[k]]
        if diff:
            detail = ", ".join(f"{k}: {first[k]} vs {other[k]}" for k in diff)
            raise ValueError(f"token stores {stores[0].path} and {store.path} were made with different codecs "
                             f"({detail}); tokenize them with the same --codec/--bitrate/--codec-weights")


# ---------------------------------------------------------------------------------------------
# The card


@contextlib.contextmanager
def store_lock(store: str | Path) -> Iterator[None]:
    """An exclusive lock across the processes writing one store (serialises card updates)."""
    Path(store).mkdir(parents=True, exist_ok=True)
    with open(Path(store) / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def summarize_shards(shards: list[ShardInfo], frame_rate: float) -> dict[str, dict[str, float]]:
    splits: dict[str, dict[str, float]] = {}
    for s in shards:
        entry = splits.setdefault(s.split, {"clips": 0, "frames": 0, "hours": 0.0, "shards": 0})
        entry["clips"] += s.n
        entry["frames"] += s.frames
        entry["shards"] += 1
        entry["hours"] = round(entry["frames"] / frame_rate / 3600, 4)
    return dict(sorted(splits.items()))


def write_card(store: str | Path, codec: dict[str, Any], fmt: str, dataset: str,
               label_vocab: list[str] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """(Re)build dataset.json from the shard indexes; call under `store_lock` when several writers share a store."""
    store = Path(store)
    shards = list_shards(store)
    if label_vocab is None:
        observed: set[str] = set()
        for index_path in (store / "shards").glob("*.json"):
            for labels in json.loads(index_path.read_text())["labels"]:
                observed.update(labels)
        label_vocab = sorted(observed)
    card = {
        "format": fmt,
        "dataset": dataset,
        "codec": codec,
        "labels": label_vocab,
        "splits": summarize_shards(shards, codec["frame_rate"]),
        "shards": [{"name": s.name, "split": s.split, "n": s.n, "frames": s.frames} for s in shards],
        **(extra or {}),
    }
    atomic_write_text(store / "dataset.json", json.dumps(card, indent=1))
    return card


def codebook_usage(store: TokenStore, max_shards: int = 8) -> list[dict[str, float]]:
    """Per codebook level: fraction of codes used and perplexity (in codes) over the first shards."""
    counts = np.zeros((store.n_q, store.codebook_size), dtype=np.int64)
    for codes, _ in store.iter_samples(shards=store.shards()[:max_shards]):
        for level in range(store.n_q):
            counts[level] += np.bincount(codes[:, level].astype(np.int64), minlength=store.codebook_size)
    usage = []
    for level_counts in counts:
        p = level_counts / max(level_counts.sum(), 1)
        entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
        usage.append({"used": float((level_counts > 0).mean()), "perplexity": float(np.exp(entropy))})
    return usage
