"""GTZAN genres: `genres/<genre>/<genre>.000NN.wav` (or Kaggle's `Data/genres_original/`), the fault-filtered split
of Kereliuk, Sturm & Larsen 2015 (443 / 197 / 290, from `manifests/gtzan/`), and the 10-genre task.

The 70 clips the filter leaves out go to the store split `excluded`, so one store serves both of the task's splits:
`filtered` (the default) reads train / valid / test, `random` re-splits all 1,000 clips 80/10/10 at fine-tuning."""

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
from ..tasks import RANDOM_SPLIT, Task

GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


EXCLUDED = "excluded"  # store split of the clips outside the fault-filtered split


def prepare_gtzan(root: Path, report: ManifestReport, seed: int = 0) -> list[Clip]:
    """All 1,000 clips genres/<genre>/<genre>.000NN.(wav|au), any usual layout: the fault-filtered split (Kereliuk
    et al. 2015) as train / valid / test, the other 70 as `excluded`."""
    base = first_dir([root / "genres", root / "Data" / "genres_original", root / "genres_original", root],
                      lambda d: any((d / g).is_dir() for g in GTZAN_GENRES))
    if base is None:
        raise ManifestError(f"no GTZAN genre folders (blues/, classical/, ...) under {root}: point the data root at "
                            "the folder holding genres/ (or Kaggle's Data/genres_original/, or the genre folders)")
    present = {g: index_by(audio_files(base / g), file_stem) for g in GTZAN_GENRES if (base / g).is_dir()}
    split_of = {os.path.splitext(line)[0]: split for split in SPLITS
                for line in reference_file("gtzan", f"{split}_filtered.txt").read_text().split()}  # genre/genre.000NN
    clips = []
    for genre in GTZAN_GENRES:
        for number in range(100):
            stem = f"{genre}.{number:05d}"  # any extension matches (.au in the original tarball)
            path = present.get(genre, {}).get(stem)
            if path is None:
                report.add_missing(stem + ".wav")
            else:
                clips.append(Clip(clip_id(stem), path, split_of.get(f"{genre}/{stem}", EXCLUDED), [genre]))
    report.labels = list(GTZAN_GENRES)
    return clips


TASKS = (Task("gtzan", "10 genres, fault-filtered split (Kereliuk et al. 2015) or a random 80/10/10 one", ("gtzan",),
              labels=GTZAN_GENRES, split_schemes=("filtered", RANDOM_SPLIT), random_needs=EXCLUDED),)
