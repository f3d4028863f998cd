"""Pre-train Mega-AudioFormer on token stores: `accelerate launch train/pretrain.py --data STORE [--config run.yaml]`.

The same command as `mega-audio pretrain` (same flags, same code): this file is the entry point accelerate launches."""

import sys

from mega_audio.cli import COMMANDS, run_pretrain, user_errors
from mega_audio.config import parse_config
from mega_audio.train.pretrain import RECIPES, PretrainConfig


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    with user_errors(argv):
        run_pretrain(parse_config(PretrainConfig, argv, RECIPES, prog="train/pretrain.py",
                                  description=COMMANDS["pretrain"].help))


if __name__ == "__main__":
    main(sys.argv[1:])
