"""Manifests: clip records (JSONL) and builders for GTZAN, NSynth, music/speech, AudioSet and labelled folders.

A manifest line is one `Clip`: `id` (no dots, unique), absolute `path`, `split`, `labels`, `duration`
(seconds from the file header, None when the header is unreadable) and `extra`.
Labels are strings everywhere: GTZAN genre, NSynth `instrument_family_str` (pitch, velocity and
instrument in `extra`), `music`/`speech`, the folder name, and for AudioSet the class *display
names* of `class_labels_indices.csv` (the raw MIDs and the segment start/end stay in `extra`).
Listed files that are absent are left out of the manifest and counted in the `ManifestReport`.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import random
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from mega_audio.audio import AV_SUFFIXES, audio_duration
from mega_audio.fileio import atomic_write_text

MANIFESTS_DIR = Path(__file__).resolve().parent.parent / "manifests"  # reference data shipped with the repo
# soundfile reads the first eight, PyAV the rest; the order is the preference when one clip has several files
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".au", ".aiff", ".aif",
                    ".m4a", ".webm", ".mp4", ".aac")
SPLITS = ("train", "valid", "test")
SPLIT_ORDER = (*SPLITS, "balanced_train", "unbalanced_train", "eval")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
NSYNTH_FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
                   "synth_lead", "vocal")
AUDIOSET_SUBSETS = ("balanced_train", "unbalanced_train", "eval")
# `<YTID>`, `Y<YTID>` or `Y<YTID>_<start>_<end>` (YTIDs are 11 chars of [A-Za-z0-9_-])
YTID_FILENAME = re.compile(r"^Y?(?P<ytid>[\w-]{11})(?:_\d+(?:\.\d+)?_\d+(?:\.\d+)?)?$", re.ASCII)


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


def _audio_files(folder: Path) -> list[str]:
    """Every audio file under folder (recursive, hidden entries skipped), sorted; one os.walk, no stat per file."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [os.path.join(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS]
    return sorted(found)


def _index_by(paths: Sequence[str], key: Callable[[str], str | None]) -> dict[str, str]:
    """key -> path; when several files share a key (x.wav and x.flac) the preferred extension wins."""
    def rank(p: str) -> tuple[int, str]:
        return AUDIO_EXTENSIONS.index(os.path.splitext(p)[1].lower()), p

    index: dict[str, str] = {}
    for p in paths:
        k = key(p)
        if k is not None and (k not in index or rank(p) < rank(index[k])):
            index[k] = p
    return index


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _read_durations(clips: list[Clip], report: ManifestReport, workers: int) -> None:
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


def _fractions(value: str | Sequence[float]) -> tuple[float, float, float]:
    """(train, valid, test) from a tuple or a '0.8,0.1,0.1' string."""
    parts = value.split(",") if isinstance(value, str) else value
    fractions = tuple(float(x) for x in parts)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ManifestError(f"fractions {value!r} must be three non-negative numbers (train, valid, test) "
                            "summing to 1, e.g. 0.8,0.1,0.1")
    return fractions


def _labelled_clips(label_dirs: dict[str, Path], seed: int, fractions: str | Sequence[float]) -> list[Clip]:
    """Clips for `<label dir>/**/<audio>` trees with a seeded stratified train/valid/test split."""
    fractions = _fractions(fractions)
    files = [(label, d, p) for label, d in label_dirs.items() for p in _audio_files(d)]
    ids = [clip_id(label, *Path(os.path.relpath(p, d)).with_suffix("").parts) for label, d, p in files]
    split_of = stratified_split(ids, [label for label, _, _ in files], seed, fractions)
    return [Clip(i, p, split_of[i], [label]) for i, (label, _, p) in zip(ids, files)]


def _reference(*parts: str) -> Path:
    """A file of the reference data in the repo's manifests/ folder."""
    path = MANIFESTS_DIR.joinpath(*parts)
    if not path.is_file():
        raise ManifestError(f"reference data {path} is missing: install mega-audio from a clone (pip install -e .)")
    return path


def _first_dir(candidates: Sequence[Path], looks_right: Callable[[Path], bool] = Path.is_dir) -> Path | None:
    return next((d for d in candidates if d.is_dir() and looks_right(d)), None)


# ---------------------------------------------------------------------------------------------
# builders: (root, report, seed, **options) -> clips without durations


def build_gtzan(root: Path, report: ManifestReport, seed: int = 0) -> list[Clip]:
    """The fault-filtered split (Kereliuk et al. 2015) over genres/<genre>/<genre>.000NN.(wav|au), any usual layout."""
    base = _first_dir([root / "genres", root / "Data" / "genres_original", root / "genres_original", root],
                      lambda d: any((d / g).is_dir() for g in GTZAN_GENRES))
    if base is None:
        raise ManifestError(f"no GTZAN genre folders (blues/, classical/, ...) under {root}: point the data root at "
                            "the folder holding genres/ (or Kaggle's Data/genres_original/, or the genre folders)")
    present = {g: _index_by(_audio_files(base / g), _stem) for g in GTZAN_GENRES if (base / g).is_dir()}
    clips = []
    for split in SPLITS:
        for line in _reference("gtzan", f"{split}_filtered.txt").read_text().split():
            genre, name = line.split("/")
            stem = os.path.splitext(name)[0]  # blues.00029: any extension matches (.au in the original tarball)
            path = present.get(genre, {}).get(stem)
            if path is None:
                report.add_missing(name)
            else:
                clips.append(Clip(clip_id(stem), path, split, [genre]))
    report.labels = list(GTZAN_GENRES)
    return clips


def build_nsynth(root: Path, report: ManifestReport, seed: int = 0) -> list[Clip]:
    """Official splits from nsynth-{train,valid,test}/examples.json; label = instrument family."""
    split_dirs = {}
    if root.name.startswith("nsynth-") and (root / "examples.json").is_file():  # root is one split's folder
        split_dirs[root.name.removeprefix("nsynth-")] = root
    for base in (root, root / "nsynth"):
        for split in SPLITS:
            if (base / f"nsynth-{split}" / "examples.json").is_file():
                split_dirs.setdefault(split, base / f"nsynth-{split}")
    if not split_dirs:
        raise ManifestError(f"no nsynth-{{train,valid,test}}/examples.json under {root}: "
                            "point the data root at the folder holding the nsynth-* folders")
    clips = []
    for split, folder in split_dirs.items():
        examples = json.loads((folder / "examples.json").read_text())
        audio = _index_by(_audio_files(folder / "audio"), _stem)
        for note_str in sorted(examples):
            ex, path = examples[note_str], audio.get(note_str)
            if path is None:
                report.add_missing(f"{folder.name}/audio/{note_str}.wav")
                continue
            extra = {"pitch": ex.get("pitch"), "velocity": ex.get("velocity"),
                     "instrument": ex.get("instrument_str"), "source": ex.get("instrument_source_str")}
            clips.append(Clip(clip_id(note_str), path, split, [ex["instrument_family_str"]], extra=extra))
    report.labels = list(NSYNTH_FAMILIES)
    return clips


def build_music_speech(root: Path, report: ManifestReport, seed: int = 0,
                       fractions: str | Sequence[float] = DEFAULT_FRACTIONS) -> list[Clip]:
    """GTZAN music/speech (music_wav/, speech_wav/) with a seeded stratified split; there is no official one."""
    for base in (root / "music_speech", root):
        dirs = {label: _first_dir([base / f"{label}_wav", base / label]) for label in ("music", "speech")}
        if all(dirs.values()):
            break
    else:
        raise ManifestError(f"no music_wav/ and speech_wav/ under {root} or {root / 'music_speech'}: "
                            "point the data root at the folder holding them")
    report.labels = ["music", "speech"]
    return _labelled_clips(dirs, seed, fractions)


def build_folder(root: Path, report: ManifestReport, seed: int = 0,
                 fractions: str | Sequence[float] = DEFAULT_FRACTIONS) -> list[Clip]:
    """Any `<root>/<label>/**/<audio>` tree; the label is the top folder's name; seeded stratified split."""
    label_dirs = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    loose = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS]
    if loose:
        report.notes.append(f"{len(loose)} audio files directly under the root ignored "
                            "(expected <root>/<label>/<files>)")
    clips = _labelled_clips(label_dirs, seed, fractions)
    report.labels = sorted({c.labels[0] for c in clips})
    return clips


def _ytid(path: str) -> str | None:
    match = YTID_FILENAME.match(_stem(path))
    return match["ytid"] if match else None


def audioset_classes() -> list[tuple[str, str]]:
    """(mid, display_name) for the 527 AudioSet classes, in index order."""
    with open(_reference("audioset", "class_labels_indices.csv"), newline="", encoding="utf-8") as f:
        return [(row["mid"], row["display_name"]) for row in csv.DictReader(f)]


def read_segments(path: str | Path) -> Iterator[tuple[str, float, float, list[str]]]:
    """(ytid, start, end, mids) per row of an AudioSet segments CSV: '#' comment lines, then
    `YTID, start_seconds, end_seconds, "mid1,mid2"` (spaces after the commas, labels quoted)."""
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, skipinitialspace=True):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 4:
                raise ManifestError(f"{path}: row {row} is not `YTID, start, end, \"mids\"`: "
                                    "is this an AudioSet segments CSV?")
            yield row[0], float(row[1]), float(row[2]), [m.strip() for m in row[3].split(",") if m.strip()]


def build_audioset(root: Path, report: ManifestReport, seed: int = 0,
                   subsets: str | Sequence[str] | None = None) -> list[Clip]:
    """Multi-label clips from {balanced_train,unbalanced_train,eval}_segments.csv; split = subset.
    Audio may sit anywhere under root, named `<YTID>.<ext>`, `Y<YTID>.<ext>` or `Y<YTID>_<start>_<end>.<ext>`.
    subsets: default every subset whose CSV is found; a YTID listed twice keeps its first row."""
    csvs, audio_paths = {}, []
    for dirpath, dirnames, filenames in os.walk(root):  # one walk indexes both the CSVs and the audio
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith("_segments.csv") and f.removesuffix("_segments.csv") in AUDIOSET_SUBSETS:
                csvs.setdefault(f.removesuffix("_segments.csv"), os.path.join(dirpath, f))
            elif os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS and not f.startswith("."):
                audio_paths.append(os.path.join(dirpath, f))
    found = [s for s in AUDIOSET_SUBSETS if s in csvs]
    wanted = subsets.split(",") if isinstance(subsets, str) else list(subsets or found)
    if unknown := [s for s in wanted if s not in AUDIOSET_SUBSETS]:
        raise ManifestError(f"unknown AudioSet subsets {unknown}: choose from {', '.join(AUDIOSET_SUBSETS)}")
    absent = [s for s in wanted if s not in csvs] if wanted else list(AUDIOSET_SUBSETS)
    if absent:
        raise ManifestError(f"no {' or '.join(f'{s}_segments.csv' for s in absent)} under {root}: put the AudioSet "
                            "segment CSVs (research.google.com/audioset/download.html) anywhere under the data root")
    audio = _index_by(sorted(audio_paths), _ytid)
    classes = audioset_classes()
    name_of = dict(classes)
    clips, seen, repeated, unknown_mids = [], set(), 0, Counter()
    for subset in wanted:
        for ytid, start, end, mids in read_segments(csvs[subset]):
            if ytid in seen:
                repeated += 1
                continue
            seen.add(ytid)
            path = audio.get(ytid)
            if path is None:
                report.add_missing(f"{subset}/{ytid}")
                continue
            unknown_mids.update(m for m in mids if m not in name_of)
            labels = [name_of[m] for m in mids if m in name_of]
            clips.append(Clip(clip_id(ytid), path, subset, labels, extra={"start": start, "end": end, "mids": mids}))
    if repeated:
        report.notes.append(f"{repeated} repeated YTIDs kept once")
    if unknown_mids:
        report.notes.append(f"{sum(unknown_mids.values())} labels with MIDs outside class_labels_indices.csv dropped "
                            f"(e.g. {', '.join(sorted(unknown_mids)[:3])})")
    report.labels = [name for _, name in classes]
    return clips


BUILDERS: dict[str, Callable[..., list[Clip]]] = {
    "gtzan": build_gtzan,
    "nsynth": build_nsynth,
    "music_speech": build_music_speech,
    "audioset": build_audioset,
    "folder": build_folder,
}


def build_manifest(dataset: str, root: str | Path, seed: int = 0, read_durations: bool = True,
                   workers: int = 8, **opts) -> tuple[list[Clip], ManifestReport]:
    """Clips sorted by (split, id) with unique dot-free ids and header durations; same inputs, same manifest.
    opts go to the dataset's builder: `fractions` (music_speech, folder), `subsets` (audioset)."""
    if dataset not in BUILDERS:
        raise ManifestError(f"unknown dataset {dataset!r}: choose one of {', '.join(BUILDERS)}")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ManifestError(f"data root {root} is not a folder: point the data root at the {dataset} audio")
    builder = BUILDERS[dataset]
    allowed = set(inspect.signature(builder).parameters) - {"root", "report", "seed"}
    if unknown := sorted(set(opts) - allowed):
        raise ManifestError(f"{dataset} takes no option {unknown}; its options: {sorted(allowed) or 'none'}")

    report = ManifestReport(dataset=dataset, root=str(root))
    clips = builder(root, report, seed=seed, **opts)
    if not clips:
        raise ManifestError(f"no {dataset} clips found under {root} ({report.summary()}): "
                            "check the data root and its layout")
    split_rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    clips.sort(key=lambda c: (split_rank.get(c.split, len(split_rank)), c.split, c.id, c.path))
    _make_ids_unique(clips, report)
    if read_durations:
        _read_durations(clips, report, workers)
    report.splits = dict(Counter(c.split for c in clips))
    return clips, report


def _make_ids_unique(clips: list[Clip], report: ManifestReport) -> None:
    """Ids can clash after clip_id() (a.wav and a.flac, 'a b' and 'a_b'): later ones get -2, -3, ..."""
    taken, renamed = set(), 0
    for clip in clips:
        if clip.id in taken:
            n = 2
            while f"{clip.id}-{n}" in taken:
                n += 1
            clip.id, renamed = f"{clip.id}-{n}", renamed + 1
        taken.add(clip.id)
    if renamed:
        report.notes.append(f"{renamed} clashing ids renamed with -N suffixes")
