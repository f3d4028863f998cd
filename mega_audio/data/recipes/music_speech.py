"""GTZAN music/speech: `music_speech/{music_wav,speech_wav}/*.wav`, a seeded stratified 80/10/10 split (there is no
official one), and the 2-class `speech_music` task."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..manifest import DEFAULT_FRACTIONS, Clip, ManifestError, ManifestReport, first_dir, labelled_clips
from ..tasks import Task


def prepare_music_speech(root: Path, report: ManifestReport, seed: int = 0,
                       fractions: str | Sequence[float] = DEFAULT_FRACTIONS) -> list[Clip]:
    """GTZAN music/speech (music_wav/, speech_wav/) with a seeded stratified split; there is no official one."""
    for base in (root / "music_speech", root):
        dirs = {label: first_dir([base / f"{label}_wav", base / label]) for label in ("music", "speech")}
        if all(dirs.values()):
            break
    else:
        raise ManifestError(f"no music_wav/ and speech_wav/ under {root} or {root / 'music_speech'}: "
                            "point the data root at the folder holding them")
    report.labels = ["music", "speech"]
    return labelled_clips(dirs, seed, fractions)


TASKS = (Task("speech_music", "GTZAN music/speech, 2 classes", ("music_speech",), labels=("music", "speech")),)
