"""Pre-train Mega-AudioFormer on token stores: `accelerate launch train/pretrain.py --data STORE [--config run.yaml]`."""

import sys

from mega_audio.config import parse_config
from mega_audio.pretrain import PretrainConfig, run


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(PretrainConfig, argv, description=__doc__)
    run(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
