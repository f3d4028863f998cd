"""Build a dataset's manifest (JSONL) without tokenizing:

    python tokenize/build_manifest.py gtzan DATA_ROOT OUT.jsonl
    python tokenize/build_manifest.py hf agkphysics/AudioSet OUT.jsonl --hf-config full --label-column human_labels
"""

import sys
from dataclasses import dataclass

from mega_audio.config import option, parse_config
from mega_audio.data.manifest import ManifestError, write_manifest
from mega_audio.data.recipes import RECIPES, build_manifest, recipe_options


@dataclass
class BuildManifestConfig:
    dataset: str = option("", "dataset recipe", positional=True, choices=sorted(RECIPES))
    root: str = option("", "dataset root (hf: a Hub dataset repo id or a local copy)", positional=True)
    out: str = option("", "manifest file to write (JSONL)", positional=True)
    seed: int = option(0, "seed of the random splits")
    hf_config: str | None = option(None, "hf: the dataset's config")
    label_column: str | None = option(None, "hf: column of the labels (default label; none = unlabelled)")
    split_map: list[str] = option([], "hf: HUB_SPLIT=STORE_SPLIT pairs (only the splits named are read)")


if __name__ == "__main__":
    cfg = parse_config(BuildManifestConfig, sys.argv[1:], prog="build_manifest.py", description=__doc__)
    try:
        clips, report = build_manifest(cfg.dataset, cfg.root, seed=cfg.seed, **recipe_options(cfg))
    except ManifestError as e:
        sys.exit(f"build_manifest.py: {e}")
    write_manifest(cfg.out, clips)
    print(report.summary())
