"""Dataset recipes (lhotse style): one module per dataset with its `prepare_<name>` (root -> clips) and the tasks
defined on it. This module is the registry of both and runs a recipe into a manifest (`build_manifest`).
`hf` is the one recipe whose source is not a folder of audio: a Hugging Face dataset (repo id or local copy)."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ..manifest import SPLIT_ORDER, Clip, ManifestError, ManifestReport
from ..manifest import read_durations as read_header_durations
from ..tasks import Task
from . import audioset, folder, gtzan, hf, music_speech, nsynth

RECIPES: dict[str, Callable[..., list[Clip]]] = {
    "gtzan": gtzan.prepare_gtzan,
    "nsynth": nsynth.prepare_nsynth,
    "music_speech": music_speech.prepare_music_speech,
    "audioset": audioset.prepare_audioset,
    "folder": folder.prepare_folder,
    "hf": hf.prepare_hf,
}
# Where each dataset's audio goes, for the one-line error when the data root is missing
WHERE = {
    "audioset": "put the AudioSet segment CSVs ({balanced_train,unbalanced_train,eval}_segments.csv) and the audio "
                "(<YTID>.<ext>) under it, or tokenize a Hub copy: --dataset hf --hf-name agkphysics/AudioSet "
                "--hf-config full --label-column human_labels (README: Audio from the Hugging Face Hub)",
    "gtzan": "put GTZAN's genres/<genre>/<genre>.000NN.wav under it",
    "nsynth": "put nsynth-{train,valid,test}/ (examples.json + audio/) under it",
    "music_speech": "put music_speech/{music_wav,speech_wav}/ under it",
    "folder": "put <label>/<audio files> under it",
}
TASKS: dict[str, Task] = {task.name: task for module in (gtzan, nsynth, music_speech, audioset, folder, hf)
                          for task in module.TASKS}


RECIPE_OPTIONS = ("hf_name", "hf_config", "label_column", "split_map")  # command-line options recipes take by name


def recipe_options(config) -> dict:
    """The recipe options a command's config was given (a recipe that takes none of them refuses them by name)."""
    return {k: getattr(config, k, None) for k in RECIPE_OPTIONS if getattr(config, k, None) not in (None, [], "")}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


def build_manifest(dataset: str, root: str | Path, seed: int = 0, read_durations: bool = True,
                   workers: int = 8, **opts) -> tuple[list[Clip], ManifestReport]:
    """Clips sorted by (split, id) with unique dot-free ids and header durations; same inputs, same manifest.
    opts go to the dataset's recipe: `fractions` (music_speech, folder), `subsets` (audioset), `hf_name`,
    `hf_config`, `label_column`, `split_map` (hf)."""
    if dataset not in RECIPES:
        raise ManifestError(f"unknown dataset {dataset!r}: choose one of {', '.join(RECIPES)}")
    if dataset == "hf":  # a Hub repo id or a local copy: the recipe checks it; no audio headers to read
        root, read_durations = opts.pop("hf_name", None) or str(root), False
        if not root:
            raise ManifestError("--dataset hf needs --hf-name: a Hub dataset repo id or a local copy of one")
    else:
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise ManifestError(f"no {dataset} data at {root}: {WHERE[dataset]}")
    prepare = RECIPES[dataset]
    allowed = set(inspect.signature(prepare).parameters) - {"root", "report", "seed"}
    if unknown := sorted(set(opts) - allowed):
        raise ManifestError(f"{dataset} takes no option {unknown}; its options: {sorted(allowed) or 'none'}")

    report = ManifestReport(dataset=dataset, root=str(root))
    clips = prepare(root, report, seed=seed, **opts)
    if not clips:
        raise ManifestError(f"no {dataset} clips found under {root} ({report.summary()}): "
                            "check the data root and its layout")
    split_rank = {s: i for i, s in enumerate(SPLIT_ORDER)}
    clips.sort(key=lambda c: (split_rank.get(c.split, len(split_rank)), c.split, c.id, c.path))
    make_ids_unique(clips, report)
    if read_durations:
        read_header_durations(clips, report, workers)
    report.splits = dict(Counter(c.split for c in clips))
    return clips, report


def make_ids_unique(clips: list[Clip], report: ManifestReport) -> None:
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
