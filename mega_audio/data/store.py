"""Token stores: atomic webdataset/zarr shards of `(T, n_q)` int16 codes, a dataset.json card, one reader API.

Layout of a store directory:

    dataset.json                 the card: codec, fingerprint, rates, n_q, labels, split sizes, shards
    manifest.jsonl               the clips it was built from
    failures-r000.jsonl          clips a writer skipped, with the reason (one log per writer process)
    shards/train-r000-000000.tar     webdataset shard: per sample `<id>.codes.npy` + `<id>.json`
    shards/train-r000-000000.zarr/   or a zarr group: `codes (sum T, n_q)`, `offsets (N+1,)`, per-clip meta
    shards/train-r000-000000.json    the shard's index (ids, labels, clip count, byte size, blake2b checksum);
                                     a shard exists only once its index does
    locks/r000-of-001.lock       the lease of the process writing slice 0 of 1 (PID and host inside)
    quarantine/                  damaged shards `mega-audio verify --repair` moved aside (never deleted)

A shard is written under a temporary name and renamed when complete, then its index is written
(atomically too). A shard file without an index is an interrupted write and is removed on resume.
One process writes one slice (rank, world_size): `WriterLease` refuses a second one, so shard and
temporary names never collide. Readers check a shard's size and clip count against its index.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text, file_digest, file_size, integrity_problem
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
    bytes: int | None = None  # size of the shard file (zarr: of its files); None in stores of older versions
    checksum: str | None = None  # blake2b of the same bytes (fileio.file_digest)

    @property
    def index_path(self) -> Path:
        return Path(self.path).with_suffix(".json")


class ShardError(ValueError):
    """A shard that does not match its index: truncated, damaged or missing. `problem` says what, the message the fix."""

    def __init__(self, shard: ShardInfo, problem: str):
        store = Path(shard.path).parent.parent
        super().__init__(f"shard {shard.path} {problem}: run `mega-audio verify {store} --repair` to move it aside, "
                         f"then the same `mega-audio tokenize` command to re-create its clips")
        self.problem = problem


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
    size, checksum = file_size(tmp), file_digest(tmp)
    os.replace(tmp, final)
    split = samples[0][1]["split"]
    info = ShardInfo(final.name, split, fmt, len(samples), int(sum(len(c) for c, _ in samples)), str(final),
                     size, checksum)
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


def interrupted_files(store: str | Path, rank: int | None = None) -> list[Path]:
    """Temporary files and shards without an index (an interrupted write) of one rank, or of all."""
    shard_dir = Path(store) / "shards"
    found = []
    for path in sorted(shard_dir.glob("*")) if shard_dir.exists() else []:
        stem = path.name.lstrip(".").split(".")[0]  # also the hidden temporary files of atomic_write
        m = SHARD_NAME.match(stem)
        if m is None or (rank is not None and int(m["rank"]) != rank):
            continue
        if path.name.endswith(".tmp") or (path.suffix in (".tar", ".zarr") and not path.with_suffix(".json").exists()):
            found.append(path)
    return found


def clean_interrupted(store: str | Path, rank: int | None = None) -> list[Path]:
    """Remove what `interrupted_files` finds."""
    removed = interrupted_files(store, rank)
    for path in removed:
        remove_path(path)
    return removed


# ---------------------------------------------------------------------------------------------
# Reading


def shard_indexes(store: str | Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(index path, index) of every complete shard, sorted by name."""
    for index_path in sorted((Path(store) / "shards").glob("*.json")):
        yield index_path, json.loads(index_path.read_text())


def shard_info(index_path: Path, index: dict[str, Any]) -> ShardInfo:
    return ShardInfo(index["name"], index["split"], index["format"], index["n"], index["frames"],
                     str(index_path.with_name(index["name"])), index.get("bytes"), index.get("checksum"))


def list_shards(store: str | Path, split: str | None = None) -> list[ShardInfo]:
    """Complete shards (those with an index), sorted by name."""
    return [shard_info(path, index) for path, index in shard_indexes(store) if split is None or index["split"] == split]


def clip_counts(store: str | Path) -> Counter[str]:
    """How many complete shards hold each clip id (more than 1 = duplicated)."""
    return Counter(clip_id for _, index in shard_indexes(store) for clip_id in index["ids"])


def shard_ids(store: str | Path) -> set[str]:
    """Ids of every clip in a complete shard of the store."""
    return set(clip_counts(store))


def read_shard(shard: ShardInfo) -> Iterator[Sample]:
    """Yield `(codes (T, n_q) int16, meta)` for every clip of one shard, in write order. A shard whose size or clip
    count differs from its index, or that cannot be decoded, raises ShardError naming it and the fix."""
    if problem := integrity_problem(shard.path, shard.bytes):  # size only: hashing would read every byte twice
        raise ShardError(shard, problem)
    return _read_checked(shard)


def _read_checked(shard: ShardInfo) -> Iterator[Sample]:
    n = 0
    try:
        for sample in READERS[shard.format](shard.path):
            n += 1
            yield sample
    except Exception as e:  # tarfile, numpy, json and zarr each raise their own types on damaged bytes
        raise ShardError(shard, f"cannot be decoded ({type(e).__name__}: {e})") from e
    if n != shard.n:
        raise ShardError(shard, f"holds {n} clips, its index says {shard.n}")


def failure_logs(store: str | Path) -> list[Path]:
    return sorted(Path(store).glob("failures-r*.jsonl"))


def read_failures(store: str | Path) -> dict[str, dict[str, Any]]:
    """Clip id -> its failure record (id, path, reason) from every writer's log. A last line cut short by a kill is
    skipped: its clip is simply tried again."""
    return {record["id"]: record for log in failure_logs(store) for line in log.read_text().splitlines()
            if (record := _record(line)) is not None}


def forget_failures(store: str | Path, ids: set[str]) -> None:
    """Drop the failure records of `ids` (about to be retried) from every log, each rewritten atomically."""
    for log in failure_logs(store):
        lines = log.read_text().splitlines(keepends=True)
        kept = [line for line in lines if (record := _record(line)) is None or record["id"] not in ids]
        if len(kept) != len(lines):
            atomic_write_text(log, "".join(kept))


def _record(line: str) -> dict[str, Any] | None:
    """One failure record, or None for a line that is not one (cut short by a kill, or empty)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "id" in record else None


@dataclass
class Accounting:
    """Where the manifest's clips are. `complete`: every one is in exactly one shard or in the failures."""

    missing: list[str]  # in no shard and not failed
    duplicated: dict[str, int]  # id -> number of shards holding it
    extra: list[str]  # in a shard but not in the manifest
    failed: list[str]  # logged as failed and in no shard

    @property
    def complete(self) -> bool:
        return not self.missing and not self.duplicated


def account(store: str | Path, manifest_ids: Iterable[str], counts: Counter[str] | None = None) -> Accounting:
    """Compare the shard indexes (or `counts`, e.g. those of the sound shards only) with the manifest and failures."""
    counts = clip_counts(store) if counts is None else counts
    manifest_ids = set(manifest_ids)
    failed = set(read_failures(store)) - set(counts)
    return Accounting(missing=sorted(manifest_ids - set(counts) - failed),
                      duplicated={i: n for i, n in sorted(counts.items()) if n > 1},
                      extra=sorted(set(counts) - manifest_ids), failed=sorted(failed & manifest_ids))


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


class WriterLease:
    """The exclusive right to write one slice (rank, world_size) of a store, held for the writer's lifetime.

    `locks/r000-of-002.lock` is flock'ed (released by the kernel when the process dies, however it dies) and names its
    holder. Writers of another world size would take overlapping slices, so they are refused too."""

    def __init__(self, store: str | Path, rank: int, world_size: int):
        self.dir = Path(store) / "locks"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / f"r{rank:03d}-of-{world_size:03d}.lock"
        self.file = _take(self.path)
        if self.file is None:
            raise ValueError(f"slice {rank} of {world_size} of {store} is being written by {_holder(self.path)}: "
                             f"wait for it to finish or stop it (two writers of one slice would duplicate clips)")
        for other in sorted(self.dir.glob("r*-of-*.lock")):
            if not other.name.endswith(f"-of-{world_size:03d}.lock") and _is_held(other):
                self.release()
                raise ValueError(f"{store} is being written by a run with another world size ({other.name}, "
                                 f"{_holder(other)}): wait for it to finish, then re-run with one --nproc/WORLD_SIZE")

    def release(self) -> None:
        self.file.close()  # closing the descriptor drops the flock; the file stays (unlinking would race a new holder)


@contextlib.contextmanager
def all_slices_locked(store: str | Path) -> Iterator[None]:
    """Hold every slice's lease (for `verify --repair`): refuses while any writer runs, and keeps new ones out."""
    held = []
    try:
        for path in sorted((Path(store) / "locks").glob("r*-of-*.lock")):
            f = _take(path)
            if f is None:
                raise ValueError(f"{store} is being written by {_holder(path)}: repair it once that run has finished")
            held.append(f)
        yield
    finally:
        for f in held:
            f.close()


def writers_active(store: str | Path) -> bool:
    """Whether any process holds a slice of the store now."""
    return any(_is_held(path) for path in (Path(store) / "locks").glob("r*-of-*.lock"))


def _take(path: Path):
    """The lease file open, flock'ed and naming this process as its holder; None when another process holds it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


def _is_held(path: Path) -> bool:
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True


def _holder(path: Path) -> str:
    return path.read_text().strip() or f"another process (holder of {path})"


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
    indexes = list(shard_indexes(store))  # one read of every index for the shard list and the labels
    shards = [shard_info(path, index) for path, index in indexes]
    if label_vocab is None:
        label_vocab = sorted({label for _, index in indexes for labels in index["labels"] for label in labels})
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
