"""Tokenize one slice of a dataset into a token store; run it under torchrun or a Slurm array for more slices.

    python tokenize/tokenize_dataset.py --dataset gtzan --data-root data/gtzan --out stores/gtzan-1.5 --bitrate 1.5
    torchrun --standalone --nproc_per_node 8 tokenize/tokenize_dataset.py --codec encodec ...
"""

import sys

from mega_audio.config import parse_config
from mega_audio.data.tokenize import TokenizeConfig, tokenize, tokenize_summary

if __name__ == "__main__":
    cfg = parse_config(TokenizeConfig, sys.argv[1:], prog="tokenize_dataset.py", description=__doc__)
    print(tokenize_summary(tokenize(cfg)))
