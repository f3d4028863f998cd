"""Build a dataset's manifest (JSONL) without tokenizing:

    python tokenize/build_manifest.py gtzan DATA_ROOT OUT.jsonl
"""

import argparse

from mega_audio.data.manifest import write_manifest
from mega_audio.data.recipes import RECIPES, build_manifest

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dataset", choices=sorted(RECIPES))
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    clips, report = build_manifest(args.dataset, args.root, seed=args.seed)
    write_manifest(args.out, clips)
    print(report.summary())
