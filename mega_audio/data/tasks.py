"""The task type (which store splits train / select / report, the label vocabulary, single or multi-label, the
metrics) and a task's view of a store. The tasks themselves are defined beside their dataset in `recipes/`."""

from __future__ import annotations

import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .manifest import stratified_split
from .store import Sample, TokenStore, shard_indexes

NO_LABEL = -100  # single-label target of a clip whose label is outside the vocabulary: torch cross_entropy skips it
HOLDOUT = "holdout"  # valid split name meaning "a seeded slice of the train split", for datasets without one
RANDOM_SPLIT = "random"  # split scheme: a seeded stratified 80/10/10 split of all the store's clips, whatever their split


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    datasets: tuple[str, ...] = ()  # store card `dataset` values it is meant for; () = any labelled store
    multi_label: bool = False
    train: str = "train"
    valid: str = "valid"  # or HOLDOUT
    test: str = "test"
    labels: tuple[str, ...] | None = None  # fixed vocabulary; None = the store card's `labels`
    target: str = "labels"  # "labels": meta["labels"]; "pitch": meta["extra"]["pitch"] (NSynth)
    split_schemes: tuple[str, ...] = ()  # --split choices, the first the default; () = the store's splits only
    random_needs: str | None = None  # a store split that --split random must find (else it would split a subset)

    def split_scheme(self, wanted: str | None) -> str | None:
        """The split scheme of a run: `wanted`, or the task's default (None: the task reads the store's own splits)."""
        if wanted is None:
            return self.split_schemes[0] if self.split_schemes else None
        if wanted not in self.split_schemes:
            choices = f"use one of {', '.join(self.split_schemes)}" if self.split_schemes else "it reads the store's splits"
            raise ValueError(f"task {self.name!r} has no --split {wanted!r}: {choices}")
        return wanted

    @property
    def metrics(self) -> tuple[str, str]:
        return ("map", "roc_auc") if self.multi_label else ("accuracy", "macro_f1")

    @property
    def main_metric(self) -> str:
        """The metric that picks the best epoch on the valid split."""
        return self.metrics[0]

    def vocabulary(self, card: dict[str, Any]) -> list[str]:
        vocab = list(self.labels) if self.labels is not None else list(card.get("labels") or [])
        if not vocab:
            raise ValueError(f"store {card.get('dataset')!r} has no labels in its card: task {self.name!r} needs a labelled "
                             f"store (tokenize a labelled dataset, e.g. --dataset folder with <root>/<label>/<files>)")
        return vocab

    def check_store(self, card: dict[str, Any]) -> None:
        """A store of another dataset is refused; a Hub copy (`--dataset hf`) may be any dataset, so its labels and
        the task's splits decide (tokenize it with --split-map to the task's split names)."""
        if self.datasets and card.get("dataset") not in (*self.datasets, "hf"):
            raise ValueError(f"task {self.name!r} expects a store tokenized from {' or '.join(self.datasets)}, this one is "
                             f"{card.get('dataset')!r}: pass --task folder to use its own labels")

    def clip_labels(self, meta: dict[str, Any]) -> list[str]:
        if self.target == "pitch":
            pitch = (meta.get("extra") or {}).get("pitch")
            return [] if pitch is None else [str(int(pitch))]
        return list(meta.get("labels") or [])

    def encode(self, metas: list[dict[str, Any]], vocab: list[str]) -> np.ndarray:
        """Targets of clips: single-label (B,) class ids (NO_LABEL when unknown), multi-label (B, C) 0/1 float32."""
        return self.encode_labels([self.clip_labels(m) for m in metas], vocab)

    def encode_labels(self, labels: list[list[str]], vocab: list[str]) -> np.ndarray:
        index = {label: i for i, label in enumerate(vocab)}
        if self.multi_label:
            targets = np.zeros((len(labels), len(vocab)), dtype=np.float32)
            for row, names in enumerate(labels):
                targets[row, [index[x] for x in names if x in index]] = 1.0
            return targets
        return np.array([next((index[x] for x in names if x in index), NO_LABEL) for names in labels], dtype=np.int64)

    def has_target(self, meta: dict[str, Any], vocab: Collection[str]) -> bool:
        return any(label in vocab for label in self.clip_labels(meta))


def holdout_ids(ids: list[str], fraction: float, seed: int = 0) -> frozenset[str]:
    """A seeded pick of round(fraction * len(ids)) ids (at least one): those whose hash of (seed, id) is lowest.
    It depends on the ids alone, not their order, so every rank and every run picks the same ones."""
    ranked = sorted(ids, key=lambda i: (zlib.crc32(f"{seed}:{i}".encode()), i))
    return frozenset(ranked[: max(1, round(fraction * len(ids)))]) if ids else frozenset()


# ---------------------------------------------------------------------------------------------
# a task's view of a store: which split and which clips each role (train / valid / test) reads


@dataclass(frozen=True)
class ClipFilter:
    """Clips with a target in the vocabulary; with `holdout` ids, keep only those (valid) or all but those (train)."""

    task: Task
    vocab: frozenset[str]
    holdout: frozenset[str] | None = None
    in_holdout: bool = False

    def __call__(self, meta: dict, check_target: bool = True) -> bool:
        if check_target and not self.task.has_target(meta, self.vocab):
            return False
        return self.holdout is None or (meta["id"] in self.holdout) == self.in_holdout

    def count(self, store: TokenStore, split: str) -> int:
        """Accepted clips, from the shard indexes (ids + labels) without reading codes. Targets kept in `extra`
        (NSynth pitch) are not in the indexes: those clips are assumed to have one."""
        by_labels = self.task.target == "labels"
        return sum(self({"id": i, "labels": labels}, check_target=by_labels) for i, labels in index_entries(store, split))


def index_entries(store: TokenStore, split: str) -> Iterator[tuple[str, list[str]]]:
    """(id, labels) of every clip of a split, from the shard indexes."""
    for _, index in shard_indexes(store.path):
        if split is None or index["split"] == split:
            yield from zip(index["ids"], index["labels"])


def random_split_filters(task: Task, store: TokenStore, vocab: list[str], seed: int = 0) -> dict[str, ClipFilter]:
    """Role -> its clips in a seeded stratified 80/10/10 split of every labelled clip of the store, all store splits
    together. The split depends on the clip ids and labels alone: every run, rank and `evaluate` gets the same one."""
    vocab_set = frozenset(vocab)
    entries = [(i, next(x for x in labels if x in vocab_set)) for i, labels in index_entries(store, None)
               if any(x in vocab_set for x in labels)]
    role_of = stratified_split([i for i, _ in entries], [label for _, label in entries], seed)
    return {role: ClipFilter(task, vocab_set, frozenset(i for i, r in role_of.items() if r == role), in_holdout=True)
            for role in ("train", "valid", "test")}


@dataclass(frozen=True)
class TaskView:
    splits: dict[str, str | None]  # role (train, valid, test) -> store split it reads (None: all of them)
    keep: dict[str, ClipFilter]  # role -> the clips of that split it uses
    holdout: bool  # valid is a seeded slice of the train split (and train is the rest)


def task_view(task: Task, store: TokenStore, vocab: list[str], valid_fraction: float = 0.1, seed: int = 0,
              train: str | None = None, valid: str | None = None, test: str | None = None,
              scheme: str | None = None) -> TaskView:
    """The task's splits (or the overrides) on this store; a store without the valid split gets a held-out slice of
    train. scheme RANDOM_SPLIT: every role reads the whole store, filtered to its share of `random_split_filters`."""
    present = {s.split for s in store.shards()}
    if scheme == RANDOM_SPLIT:
        if train or valid or test:
            raise ValueError("--split random makes its own train/valid/test: drop --train-split/--valid-split/--test-split")
        if task.random_needs and store.card.get("dataset") in task.datasets and task.random_needs not in present:
            raise ValueError(f"{store.path} has no {task.random_needs!r} split (it has {sorted(present)}), so "
                             f"--split random would re-split a subset of the dataset: re-tokenize it to a new --out "
                             f"(stores made before that split existed hold only the fault-filtered clips)")
        keep = random_split_filters(task, store, vocab)
        return TaskView({role: None for role in keep}, keep, holdout=False)
    splits = {"train": train or task.train, "valid": valid or task.valid, "test": test or task.test}
    for role in ("train", "test"):
        if splits[role] not in present:
            raise ValueError(f"{store.path} has no {splits[role]!r} split (it has {sorted(present)}): "
                             f"pass --{role}-split with one of those")
    vocab_set = frozenset(vocab)
    keep = {role: ClipFilter(task, vocab_set) for role in splits}
    holdout = splits["valid"] not in present  # HOLDOUT, or e.g. a folder store made with fractions 0.9,0,0.1
    if holdout:
        splits["valid"] = splits["train"]
        ids = holdout_ids([i for i, _ in index_entries(store, splits["train"])], valid_fraction, seed)
        keep["train"], keep["valid"] = ClipFilter(task, vocab_set, ids, False), ClipFilter(task, vocab_set, ids, True)
    return TaskView(splits, keep, holdout)


def split_samples(store: TokenStore, split: str, keep: ClipFilter) -> Iterator[Sample]:
    return ((codes, meta) for codes, meta in store.iter_samples(split) if keep(meta))
