"""NSynth: `nsynth-{train,valid,test}/examples.json` + `audio/<note_str>.wav`, the official splits, and two tasks on
one store: instrument family (11 classes, the label) and MIDI pitch (128 classes, kept in `extra.pitch`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..manifest import SPLITS, Clip, ManifestError, ManifestReport, audio_files, clip_id, file_stem, index_by
from ..tasks import Task

NSYNTH_FAMILIES = ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ", "reed", "string",
                   "synth_lead", "vocal")
MIDI_PITCHES = tuple(str(p) for p in range(128))


def prepare_nsynth(root: Path, report: ManifestReport, seed: int = 0) -> list[Clip]:
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
        audio = index_by(audio_files(folder / "audio"), file_stem)
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


TASKS = (
    Task("nsynth", "11 instrument families", ("nsynth",), labels=NSYNTH_FAMILIES),
    Task("nsynth-pitch", "MIDI pitch of the note (128 classes)", ("nsynth",), labels=MIDI_PITCHES, target="pitch"),
)
