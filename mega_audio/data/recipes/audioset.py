"""AudioSet: `{balanced_train,unbalanced_train,eval}_segments.csv` + audio named by YouTube id anywhere below the root,
527 classes (display names from `manifests/audioset/`), multi-label, and the task that selects on a held-out slice."""

from __future__ import annotations

import csv
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..manifest import (
    AUDIO_EXTENSIONS,
    Clip,
    ManifestError,
    ManifestReport,
    clip_id,
    file_stem,
    index_by,
    reference_file,
)
from ..tasks import HOLDOUT, Task

AUDIOSET_SUBSETS = ("balanced_train", "unbalanced_train", "eval")
# `<YTID>`, `Y<YTID>` or `Y<YTID>_<start>_<end>` (YTIDs are 11 chars of [A-Za-z0-9_-])
YTID_FILENAME = re.compile(r"^Y?(?P<ytid>[\w-]{11})(?:_\d+(?:\.\d+)?_\d+(?:\.\d+)?)?$", re.ASCII)


def _ytid(path: str) -> str | None:
    match = YTID_FILENAME.match(file_stem(path))
    return match["ytid"] if match else None


def audioset_classes() -> list[tuple[str, str]]:
    """(mid, display_name) for the 527 AudioSet classes, in index order."""
    with open(reference_file("audioset", "class_labels_indices.csv"), newline="", encoding="utf-8") as f:
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


def prepare_audioset(root: Path, report: ManifestReport, seed: int = 0,
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
    audio = index_by(sorted(audio_paths), _ytid)
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


TASKS = (Task("audioset", "527 labels, multi-label; valid = a held-out slice of balanced_train", ("audioset",),
              multi_label=True, train="balanced_train", valid=HOLDOUT, test="eval",
              labels=tuple(name for _, name in audioset_classes())),)  # the display names the recipe stores as labels
