"""Training input: token stores -> seeded, rank/worker-split sample stream -> cropped, padded batches (+ a task's
filter, + weighted mixing of several stores: `--data new:0.8 old:0.2`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from itertools import count, islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .store import Sample, ShardInfo, TokenStore, read_shard
from .tasks import ClipFilter, Task

Batch = dict[str, Any]  # codes (B, T, n_q), padding_mask (B, T) bool (True = valid), ids, labels [, features]
Augment = Callable[[np.ndarray, dict, np.random.Generator], np.ndarray]  # (clip codes, meta, rng) -> new clip codes
CROPS = ("random", "start", "center")
MIX_STREAM = 0x6D6978  # tags the seed of the per-batch store choices apart from the crop seeds


def parse_store_weights(entries: list[str]) -> tuple[list[str], list[float] | None]:
    """`--data` entries -> (store paths, weights normalised to sum 1, or None when no entry carries a weight).

    `path:0.8` weighs a store, a bare path weighs 1. A suffix is a weight only when it parses as a float and the whole
    entry is not an existing directory (paths may contain ':')."""
    paths, weights = [], []
    for entry in entries:
        path, _, suffix = entry.rpartition(":")
        try:
            weight = float(suffix) if path and not Path(entry).is_dir() else None
        except ValueError:
            weight = None
        if weight is not None and not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"--data {entry}: a store's weight must be a positive number (e.g. {path}:0.2)")
        paths.append(entry if weight is None else path)
        weights.append(weight)
    if len(paths) < 2 or all(w is None for w in weights):
        return paths, None  # one corpus: every clip of every store once per epoch
    total = sum(1.0 if w is None else w for w in weights)
    return paths, [(1.0 if w is None else w) / total for w in weights]


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """In a DataLoader worker, allocate straight in shared memory: the batch then crosses to the trainer uncopied."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def collate(samples: list[Sample], max_frames: int | None, pad_id: int, crop: str = "random",
            rng: np.random.Generator | None = None, codes_dtype: torch.dtype = torch.long,
            augment: Augment | None = None) -> Batch:
    """Crop every clip to at most max_frames (a window chosen by `crop`), right-pad with pad_id, mark valid frames.
    When every clip carries log-mel features (a store tokenized with --store-features logmel), the batch gets
    `features` (B, T, n_mels) float16, cropped to the same window and zero-padded. `augment` replaces each whole
    clip's codes first (`--colour-db`, data/colouring.py), drawing from the same rng as the crops.

    codes_dtype=torch.int16 moves a quarter of the bytes (the model casts to long on its device)."""
    if crop not in CROPS:
        raise ValueError(f"crop={crop!r}: use one of {CROPS}")
    if (crop == "random" or augment is not None) and rng is None:
        rng = np.random.default_rng()
    if augment is not None:
        samples = [(augment(clip, meta, rng), meta) for clip, meta in samples]
    lengths = [len(c) if max_frames is None else min(len(c), max_frames) for c, _ in samples]
    n_q = samples[0][0].shape[1]
    codes_t = _empty((len(samples), max(lengths), n_q), codes_dtype)
    mask_t = _empty(codes_t.shape[:2], torch.bool)
    codes, padding_mask = codes_t.numpy(), mask_t.numpy()  # (B, T, n_q), (B, T): views filled in place
    codes.fill(pad_id)
    padding_mask.fill(False)
    features_t = features = None
    if all("logmel" in meta for _, meta in samples):
        features_t = _empty((*codes_t.shape[:2], samples[0][1]["logmel"].shape[1]), torch.float16)
        features = features_t.numpy()  # (B, T, n_mels), filled in place like the codes
        features.fill(0)
    for i, ((clip, meta), n) in enumerate(zip(samples, lengths)):
        spare = len(clip) - n
        start = 0 if crop == "start" or not spare else spare // 2 if crop == "center" else int(rng.integers(spare + 1))
        codes[i, :n] = clip[start: start + n]
        padding_mask[i, :n] = True
        if features is not None:
            features[i, :n] = meta["logmel"][start: start + n]
    batch = {
        "codes": codes_t,
        "padding_mask": mask_t,
        "ids": [meta["id"] for _, meta in samples],
        "labels": [meta.get("labels", []) for _, meta in samples],
    }
    return batch if features_t is None else {**batch, "features": features_t}


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def shuffle_buffer(samples: Iterable[Sample], size: int, rng: np.random.Generator) -> Iterator[Sample]:
    """Reservoir-style shuffle: emit a random element of a `size`-clip buffer for every clip that comes in."""
    buffer: list[Sample] = []
    picks = iter(())
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = next(picks, None)
        if j is None:  # draw random positions in blocks: one numpy call per 1024 clips
            picks = iter(rng.integers(0, size, 1024).tolist())
            j = next(picks)
        yield buffer[j]
        buffer[j] = sample
    rng.shuffle(buffer)
    yield from buffer


class TokenStream(IterableDataset):
    """An endless (or one-pass) stream of collated batches from one split of one or more token stores.

    Every (rank, DataLoader worker) pair is one "slot". The shards of an epoch are shuffled with the same seed on every
    slot, then dealt out: slot s reads shards s, s + n_slots, ... When there are fewer shards than slots, every slot
    reads every shard and keeps every n_slots-th clip instead. Either way each clip goes to exactly one slot per epoch.
    Everything random is seeded by (seed, epoch, slot) or (seed, slot, batch index), so the stream is a pure function
    of its arguments: `start_batch=k` resumes it exactly where a run that consumed k batches of this rank stopped.

    With `weights` (one per store), each store is its own stream (its own epochs) and every clip of a batch comes from
    a store drawn with those probabilities, seeded by (seed, slot, batch index): a replayed corpus keeps its ratio,
    and a resume counts the draws of the skipped batches to know how far into each store to skip.
    """

    def __init__(self, stores: list[TokenStore], split: str, batch_size: int, max_frames: int | None, pad_id: int,
                 seed: int = 0, shuffle: bool = True, loop: bool = True, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 1000, crop: str | None = None, start_batch: int = 0,
                 codes_dtype: torch.dtype = torch.long, weights: list[float] | None = None,
                 augment: Augment | None = None):
        super().__init__()
        self.stores, self.split, self.batch_size, self.max_frames, self.pad_id = stores, split, batch_size, max_frames, pad_id
        self.seed, self.shuffle, self.loop, self.rank, self.world_size = seed, shuffle, loop, rank, world_size
        self.buffer_size, self.start_batch, self.codes_dtype = shuffle_buffer, start_batch, codes_dtype
        self.augment = augment
        self.crop = crop or ("random" if shuffle else "start")
        self.shards: list[ShardInfo] = [shard for store in stores for shard in store.shards(split)]
        if loop and not self.shards:
            raise ValueError(f"no {split!r} shards in {[str(s.path) for s in stores]}: "
                             f"splits there are {sorted({s.split for st in stores for s in st.shards()})}")
        self.weights, self.parts = weights, []
        if weights is not None:
            if len(weights) != len(stores) or not loop:
                raise ValueError(f"weights: one per store ({len(stores)}) and only for an endless stream")
            self.parts = [TokenStream([store], split, batch_size, max_frames, pad_id, seed, shuffle, loop, rank,
                                      world_size, shuffle_buffer, crop, codes_dtype=codes_dtype) for store in stores]

    @property
    def num_samples(self) -> int:
        return sum(s.n for s in self.shards)

    def epoch_shards(self, epoch: int) -> list[ShardInfo]:
        shards = list(self.shards)
        if self.shuffle:
            np.random.default_rng([self.seed, epoch]).shuffle(shards)  # the same order on every slot
        return shards

    def epoch_size(self, epoch: int, slot: int, n_slots: int) -> int:
        """Clips slot `slot` reads in `epoch`, from the shard indexes alone (no reading)."""
        shards = self.epoch_shards(epoch)
        if len(shards) >= n_slots:
            return sum(s.n for s in shards[slot::n_slots])
        return len(range(slot, self.num_samples, n_slots))

    def epoch_samples(self, epoch: int, slot: int, n_slots: int) -> Iterator[Sample]:
        shards = self.epoch_shards(epoch)
        if len(shards) >= n_slots:
            for shard in shards[slot::n_slots]:
                yield from read_shard(shard)
            return
        index = 0
        for shard in shards:
            first = (slot - index) % n_slots  # this slot's first clip inside the shard
            if first < shard.n:
                yield from islice(read_shard(shard), first, None, n_slots)
            index += shard.n

    def slot_samples(self, slot: int, n_slots: int, skip: int = 0) -> Iterator[Sample]:
        """The slot's clips, epoch after epoch; the first `skip` are passed over (whole epochs without reading)."""
        epoch = 0
        while self.loop or epoch == 0:
            size = self.epoch_size(epoch, slot, n_slots)
            if skip >= size:
                skip -= size
                epoch += 1
                continue
            samples = self.epoch_samples(epoch, slot, n_slots)
            if self.shuffle:
                samples = shuffle_buffer(samples, self.buffer_size, np.random.default_rng([self.seed, epoch, slot]))
            yield from islice(samples, skip, None)
            skip = 0
            epoch += 1

    def slot(self) -> tuple[int, int, int]:
        """(slot, n_slots, this worker's share of start_batch). The loader takes batch i from worker i % workers, so
        worker w plays the part of worker (w + start_batch) % workers of the uninterrupted run."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        virtual = (worker + self.start_batch) % workers
        n_slots = self.world_size * workers
        for stream in self.parts or [self]:
            if self.loop and stream.num_samples < n_slots:
                where = f" of {stream.stores[0].path}" if self.parts else ""
                raise ValueError(f"split {self.split!r}{where} has {stream.num_samples} clips, fewer than ranks x "
                                 f"workers = {n_slots}: use fewer processes or --num-workers")
        return self.rank * workers + virtual, n_slots, len(range(virtual, self.start_batch, workers))

    def store_choices(self, slot: int, index: int) -> np.ndarray:
        """Which store each clip of the slot's batch `index` comes from (weighted streams)."""
        rng = np.random.default_rng([self.seed, slot, index, MIX_STREAM])
        return rng.choice(len(self.parts), size=self.batch_size, p=self.weights)

    def mixed_chunks(self, slot: int, n_slots: int, skip_batches: int) -> Iterator[list[Sample]]:
        """Batches of clips drawn from the per-store streams; the skipped batches' draws say how far each one is."""
        taken = np.zeros(len(self.parts), dtype=np.int64)
        for index in range(skip_batches):
            taken += np.bincount(self.store_choices(slot, index), minlength=len(self.parts))
        streams = [part.slot_samples(slot, n_slots, int(skip)) for part, skip in zip(self.parts, taken)]
        for index in count(skip_batches):
            yield [next(streams[k]) for k in self.store_choices(slot, index)]

    def __iter__(self) -> Iterator[Batch]:
        slot, n_slots, skip_batches = self.slot()
        if self.parts:
            chunks = self.mixed_chunks(slot, n_slots, skip_batches)
        else:
            chunks = chunked(self.slot_samples(slot, n_slots, skip_batches * self.batch_size), self.batch_size)
        for index, chunk in enumerate(chunks, start=skip_batches):
            rng = np.random.default_rng([self.seed, slot, index])
            yield collate(chunk, self.max_frames, self.pad_id, self.crop, rng, self.codes_dtype, self.augment)


class TaskStream(TokenStream):
    """A TokenStream whose clips are filtered by `keep` and labelled by the task (e.g. NSynth pitch from `extra`)."""

    def __init__(self, *args, task: Task, keep: ClipFilter, **kwargs):
        super().__init__(*args, **kwargs)
        self.task, self.keep = task, keep

    def epoch_samples(self, epoch: int, slot: int, n_slots: int) -> Iterator[Sample]:
        for codes, meta in super().epoch_samples(epoch, slot, n_slots):
            if self.keep(meta):
                yield codes, {**meta, "labels": self.task.clip_labels(meta)}


def make_loader(stream: TokenStream, num_workers: int, pin_memory: bool | None = None) -> DataLoader:
    """Batches come collated from the stream (batch_size=None): workers crop, pad and stack; pinned for the GPU copy."""
    return DataLoader(
        stream, batch_size=None, num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        prefetch_factor=4 if num_workers else None,
        persistent_workers=num_workers > 0 and not stream.loop,  # one-pass streams are iterated again at each eval
    )
