"""Any labelled folder: `<root>/<label>/**/<audio>`, the label is the top folder's name, a seeded stratified split, and
the `folder` task (single-label over the store card's own vocabulary)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..manifest import AUDIO_EXTENSIONS, DEFAULT_FRACTIONS, Clip, ManifestReport, labelled_clips
from ..tasks import Task


def prepare_folder(root: Path, report: ManifestReport, seed: int = 0,
                 fractions: str | Sequence[float] = DEFAULT_FRACTIONS) -> list[Clip]:
    """Any `<root>/<label>/**/<audio>` tree; the label is the top folder's name; seeded stratified split."""
    label_dirs = {d.name: d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    loose = [f for f in root.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS]
    if loose:
        report.notes.append(f"{len(loose)} audio files directly under the root ignored "
                            "(expected <root>/<label>/<files>)")
    clips = labelled_clips(label_dirs, seed, fractions)
    report.labels = sorted({c.labels[0] for c in clips})
    return clips


TASKS = (Task("folder", "any labelled store: single-label, the card's label vocabulary"),)
