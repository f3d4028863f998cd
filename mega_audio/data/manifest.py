"""Manifests: the clip record (JSONL), the build report, and what every dataset recipe shares (file listing, header
durations, the seeded stratified split). The recipes themselves are in `recipes/`, one file per dataset.

A manifest line is one `Clip`: `id` (no dots, unique), absolute `path`, `split`, `labels`, `duration`
(seconds from the file header, None when the header is unreadable) and `extra`.
Labels are strings everywhere: GTZAN genre, NSynth `instrument_family_str` (pitch, velocity and
instrument in `extra`), `music`/`speech`, the folder name, and for AudioSet the class *display
names* of `class_labels_indices.csv` (the raw MIDs and the segment start/end stay in `extra`).
Listed files that are absent are left out of the manifest and counted in the `ManifestReport`.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from tqdm import tqdm

from ..fileio import atomic_write_text
from .audio import AV_SUFFIXES, audio_duration

MANIFESTS_DIR = Path(__file__).resolve().parents[2] / "manifests"  # reference data shipped with the repo
# soundfile reads the first eight, PyAV the rest; the order is the preference when one clip has several files
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".au", ".aiff", ".aif",
                    ".m4a", ".webm", ".mp4", ".aac")
SPLITS = ("train", "valid", "test")
SPLIT_ORDER = (*SPLITS, "balanced_train", "unbalanced_train", "eval")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


class ManifestError(ValueError):
    """A dataset root or option that cannot give a manifest; the message says what to change."""


# ---------------------------------------------------------------------------------------------
# records


@dataclass
class Clip:
    id: str
    path: str
    split: str
    labels: list[str]
    duration: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.id or "." in self.id:
            raise ValueError(f"clip id {self.id!r} is empty or has a dot (webdataset splits keys at the first dot): "
                             "build ids with clip_id()")

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "split": self.split, "labels": list(self.labels),
                "duration": self.duration, "extra": dict(self.extra)}

    @classmethod
    def from_dict(cls, d: dict) -> Clip:
        return cls(id=d["id"], path=d["path"], split=d["split"], labels=list(d["labels"]),
                   duration=d.get("duration"), extra=dict(d.get("extra") or {}))


def clip_id(*parts: str) -> str:
    """Join name parts into a key webdataset and tar accept: every character but word chars and '-' becomes '_'."""
    return re.sub(r"[^\w-]", "_", "_".join(parts))


def write_manifest(path: str | Path, clips: Sequence[Clip]) -> None:
    """JSONL, one clip per line; written to a temporary file and renamed so readers never see half a manifest."""
    atomic_write_text(path, "".join(json.dumps(clip.to_dict(), ensure_ascii=False) + "\n" for clip in clips))


def read_manifest(path: str | Path) -> list[Clip]:
    clips = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                clips.append(Clip.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, ValueError) as e:
                raise ManifestError(f"{path} line {n} is not a clip record ({e}): rebuild the manifest") from e
    return clips


@dataclass
class ManifestReport:
    """What a build found: clips per split, the label vocabulary, and what it had to leave out."""
    dataset: str
    root: str
    splits: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # vocabulary, in the dataset's canonical order
    missing: int = 0  # listed (split file, examples.json, segments CSV) but no audio file
    missing_examples: list[str] = field(default_factory=list)
    unreadable: int = 0  # header unreadable: duration None, the tokenizer logs the failure later
    unreadable_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    EXAMPLES = 5

    def add_missing(self, name: str) -> None:
        self.missing += 1
        if len(self.missing_examples) < self.EXAMPLES:
            self.missing_examples.append(name)

    def add_unreadable(self, name: str) -> None:
        self.unreadable += 1
        if len(self.unreadable_examples) < self.EXAMPLES:
            self.unreadable_examples.append(name)

    def summary(self) -> str:
        splits = ", ".join(f"{name} {n}" for name, n in self.splits.items())
        parts = [f"{self.dataset}: {sum(self.splits.values())} clips ({splits}), {len(self.labels)} labels"]
        if self.missing:
            parts.append(f"{self.missing} listed but missing (e.g. {', '.join(self.missing_examples)})")
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable header(s) (e.g. {', '.join(self.unreadable_examples)})")
        return "; ".join(parts + self.notes)


# ---------------------------------------------------------------------------------------------
# shared pieces: file listing, header durations, stratified split


def audio_files(folder: Path) -> list[str]:
    """Every audio file under folder (recursive, hidden entries skipped), sorted; one os.walk, no stat per file."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS]
    return sorted(found)


def index_by(paths: Sequence[str], key: Callable[[str], str | None]) -> dict[str, str]:
    """key -> path; when several files share a key (x.wav and x.flac) the preferred extension wins."""
    def rank(p: str) -> tuple[int, str]:
        return AUDIO_EXTENSIONS.index(os.path.splitext(p)[1].lower()), p

    index: dict[str, str] = {}
    for p in paths:
        k = key(p)
        if k is not None and (k not in index or rank(p) < rank(index[k])):
            index[k] = p
    return index


def file_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def read_durations(clips: list[Clip], report: ManifestReport, workers: int) -> None:
    """Fill clip.duration from headers with a thread pool (the calls release the GIL), in bounded batches."""
    batch = 4096
    with ThreadPoolExecutor(max(1, workers)) as pool, \
            tqdm(total=len(clips), unit="file", desc="headers", disable=len(clips) < 2000) as bar:
        for start in range(0, len(clips), batch):
            chunk = clips[start:start + batch]
            for clip, duration in zip(chunk, pool.map(audio_duration, [c.path for c in chunk])):
                clip.duration = duration
                if duration is None:
                    report.add_unreadable(os.path.basename(clip.path))
            bar.update(len(chunk))
    if report.unreadable and any(Path(c.path).suffix.lower() in AV_SUFFIXES for c in clips):
        try:
            import av  # noqa: F401
        except ImportError:
            report.notes.append(".m4a/.webm headers need PyAV: pip install 'mega-audio[av]'")


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder counts summing to n; every split with a positive fraction gets one item when n allows."""
    raw = [n * f for f in fractions]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for i in wanted:
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: counts[j])
                counts[donor] -= 1
                counts[i] += 1
    return counts


def stratified_split(keys: Sequence[str], labels: Sequence[str], seed: int = 0,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, names: Sequence[str] = SPLITS) -> dict[str, str]:
    """key -> split name. Each label's keys are sorted, shuffled by an rng seeded with (seed, label), then cut
    by split_counts, so a class keeps its split when other classes are added or removed."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for key, label in zip(keys, labels, strict=True):
        by_label[label].append(key)
    assignment = {}
    for label, members in sorted(by_label.items()):
        members = sorted(members)
        random.Random(f"{seed}:{label}").shuffle(members)
        start = 0
        for name, count in zip(names, split_counts(len(members), fractions)):
            assignment.update((key, name) for key in members[start:start + count])
            start += count
    return assignment


def parse_fractions(value: str | Sequence[float]) -> tuple[float, float, float]:
    """(train, valid, test) from a tuple or a '0.8,0.1,0.1' string."""
    parts = value.split(",") if isinstance(value, str) else value
    fractions = tuple(float(x) for x in parts)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ManifestError(f"fractions {value!r} must be three non-negative numbers (train, valid, test) "
                            "summing to 1, e.g. 0.8,0.1,0.1")
    return fractions


def labelled_clips(label_dirs: dict[str, Path], seed: int, fractions: str | Sequence[float]) -> list[Clip]:
    """Clips for `<label dir>/**/<audio>` trees with a seeded stratified train/valid/test split."""
    fractions = parse_fractions(fractions)
    files = [(label, d, p) for label, d in label_dirs.items() for p in audio_files(d)]
    ids = [clip_id(label, *Path(os.path.relpath(p, d)).with_suffix("").parts) for label, d, p in files]
    split_of = stratified_split(ids, [label for label, _, _ in files], seed, fractions)
    return [Clip(i, p, split_of[i], [label]) for i, (label, _, p) in zip(ids, files)]


def reference_file(*parts: str) -> Path:
    """A file of the reference data in the repo's manifests/ folder."""
    path = MANIFESTS_DIR.joinpath(*parts)
    if not path.is_file():
        raise ManifestError(f"reference data {path} is missing: install mega-audio from a clone (pip install -e .)")
    return path


def first_dir(candidates: Sequence[Path], looks_right: Callable[[Path], bool] = Path.is_dir) -> Path | None:
    return next((d for d in candidates if d.is_dir() and looks_right(d)), None)
