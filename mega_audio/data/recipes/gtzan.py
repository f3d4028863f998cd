"""GTZAN genres: `genres/<genre>/<genre>.000NN.wav` (or Kaggle's `Data/genres_original/`), the fault-filtered split
of Kereliuk, Sturm & Larsen 2015 (443 / 197 / 290, from `manifests/gtzan/`), and the 10-genre task."""

from __future__ import annotations

import os
from pathlib import Path

from ..manifest import (
    SPLITS,
    Clip,
    ManifestError,
    ManifestReport,
    audio_files,
    clip_id,
    file_stem,
    first_dir,
    index_by,
    reference_file,
)
from ..tasks import Task

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


def prepare_gtzan(root: Path, report: ManifestReport, seed: int = 0) -> list[Clip]:
    """The fault-filtered split (Kereliuk et al. 2015) over genres/<genre>/<genre>.000NN.(wav|au), any usual layout."""
    base = first_dir([root / "genres", root / "Data" / "genres_original", root / "genres_original", root],
                      lambda d: any((d / g).is_dir() for g in GTZAN_GENRES))
    if base is None:
        raise ManifestError(f"no GTZAN genre folders (blues/, classical/, ...) under {root}: point the data root at "
                            "the folder holding genres/ (or Kaggle's Data/genres_original/, or the genre folders)")
    present = {g: index_by(audio_files(base / g), file_stem) for g in GTZAN_GENRES if (base / g).is_dir()}
    clips = []
    for split in SPLITS:
        for line in reference_file("gtzan", f"{split}_filtered.txt").read_text().split():
            genre, name = line.split("/")
            stem = os.path.splitext(name)[0]  # blues.00029: any extension matches (.au in the original tarball)
            path = present.get(genre, {}).get(stem)
            if path is None:
                report.add_missing(name)
            else:
                clips.append(Clip(clip_id(stem), path, split, [genre]))
    report.labels = list(GTZAN_GENRES)
    return clips


TASKS = (Task("gtzan", "10 genres, fault-filtered split (Kereliuk et al. 2015)", ("gtzan",), labels=GTZAN_GENRES),)
