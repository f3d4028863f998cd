"""The `mega-audio` command line: one subcommand per stage, each a config dataclass and a thin call into the library.

Every command is built the same way (mega_audio/config.py): its flags are the fields of its config dataclass (which
lives beside the code it configures; COMMANDS names it), `--config run.yaml` takes the same names as YAML keys, and
the precedence is defaults < preset < YAML < flags. A command's dataclass (and the heavy modules behind it) is
imported only when that command runs, so `mega-audio --help` stays fast.

A user error (bad path, bad value, wrong store for a task, a mismatch: the ValueError family and missing files) is
printed as one line, `error: <message>`, with exit code 2; `--debug` or MEGA_AUDIO_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import add_config_arguments, config_from_args, option


@dataclass
class InspectConfig:
    store: str = option("", "token store directory", positional=True)
    shards: int = option(8, "shards to read for codebook usage")


@dataclass
class VerifyConfig:
    store: str = option("", "token store directory", positional=True)
    repair: bool = option(False, "move damaged shards aside (into quarantine/, never deleted) so the next tokenize "
                                 "re-creates their clips")


# ---------------------------------------------------------------------------------------------
# user errors: one line, no traceback

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def error_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if "Original Traceback" in text:  # raised in a DataLoader worker: torch wraps it in the worker's traceback
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())


@contextlib.contextmanager
def user_errors(argv: list[str]) -> Iterator[None]:
    """Turn a user error into `error: <message>` on stderr and exit code 2, unless --debug / MEGA_AUDIO_DEBUG=1."""
    if "--debug" in argv:
        os.environ["MEGA_AUDIO_DEBUG"] = "1"  # also for the processes a command starts (tokenize --nproc)
    try:
        yield
    except USER_ERRORS as e:
        if os.environ.get("MEGA_AUDIO_DEBUG", "0") not in ("", "0"):
            raise
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):  # end an open progress bar's line first
            bar.close()
        print(f"error: {error_line(e)}", file=sys.stderr)
        sys.exit(2)


# ---------------------------------------------------------------------------------------------
# what each command does with its config


def run_tokenize(cfg) -> None:
    from .data.tokenize import tokenize, tokenize_local, tokenize_summary

    if cfg.nproc > 1:
        failed = tokenize_local(cfg)
        if failed:
            print(f"error: {failed} of {cfg.nproc} tokenize processes failed (their errors are above); re-run the same "
                  f"command to finish", file=sys.stderr)
            sys.exit(2)
        return
    print(tokenize_summary(tokenize(cfg)))


def run_verify(cfg: VerifyConfig) -> None:
    from .data.verify import verify_store

    report = verify_store(cfg.store, repair=cfg.repair)
    for line in report.details():
        print(line)
    print(report.summary())
    if not report.ok:
        sys.exit(1)


def run_inspect(cfg: InspectConfig) -> None:
    from .data.store import TokenStore, codebook_usage

    store = TokenStore(cfg.store)
    print(json.dumps({k: v for k, v in store.card.items() if k != "shards"}, indent=1))
    print(f"{'split':<18}{'clips':>10}{'hours':>10}{'shards':>8}")
    for split, s in store.card["splits"].items():
        print(f"{split:<18}{s['clips']:>10}{s['hours']:>10.2f}{s['shards']:>8}")
    for level, u in enumerate(codebook_usage(store, cfg.shards)):
        print(f"codebook {level:>2}: {u['used']:6.1%} of codes used, perplexity {u['perplexity']:7.1f}")


def run_synth(cfg) -> None:
    from .data.synth import CLASSES, write_collection

    n = write_collection(cfg.out, cfg.per_class, cfg.seconds, cfg.seed)
    classes = ", ".join(CLASSES)
    print(f"synth-data: {n} clips of {cfg.seconds:g} s in {len(CLASSES)} classes ({classes}) under {cfg.out}")


def run_pretrain(cfg) -> None:
    from .train.pretrain import run

    run(cfg)  # prints its own summary line on the main process


def run_finetune(cfg) -> None:
    from accelerate import PartialState

    from .train.finetune import finetune, finetune_summary

    results = finetune(cfg)
    if PartialState().is_main_process:  # one line, also under torchrun / accelerate launch
        print(finetune_summary(results))


def run_evaluate(cfg) -> None:
    from .train.inference import evaluate

    print(json.dumps(evaluate(cfg.checkpoint, cfg.data, cfg.split, cfg.eval_mode, cfg.batch_size), indent=1))


def run_predict(cfg) -> None:
    from .train.inference import predict

    for p in predict(cfg.files, cfg.checkpoint, cfg.top_k, cfg.codec_weights):
        if cfg.json:
            print(json.dumps(p), flush=True)
        else:
            print(f"{p['path']}: " + ", ".join(f"{label} {prob:.3f}" for label, prob in p["top"]))


def run_embed(cfg) -> None:
    from .train.inference import embed

    print(json.dumps(embed(cfg.checkpoint, cfg.data, cfg.out, cfg.split, cfg.eval_mode, cfg.max_seconds,
                           cfg.batch_size, cfg.safetensors, cfg.probe_layer, cfg.probe_pool)))


def run_merge(cfg) -> None:
    from .train.merge import merge, merge_summary

    print(merge_summary(merge(cfg)))


def run_report(cfg) -> None:
    from .train.report import load_results, table1

    table = table1(load_results(cfg.results), cfg.split)
    if cfg.out:
        Path(cfg.out).write_text(table)
    print(table, end="")


# ---------------------------------------------------------------------------------------------
# the command table and the parser


@dataclass(frozen=True)
class Command:
    help: str
    config: str  # "module:Class" of the config dataclass, imported when the command runs
    run: Callable
    presets: str | None = None  # "module:NAME" of a dict of preset configs (`--preset`), if the command has them


COMMANDS: dict[str, Command] = {
    "tokenize": Command("Audio files -> manifest -> codec tokens -> sharded token store (resumable).",
                        "mega_audio.data.tokenize:TokenizeConfig", run_tokenize),
    "inspect": Command("Print a store's card, per-split counts and codebook usage.",
                       "mega_audio.cli:InspectConfig", run_inspect),
    "verify": Command("Check a store against its manifest, failures and shard checksums; --repair moves damaged shards "
                      "aside so the next tokenize re-creates their clips.", "mega_audio.cli:VerifyConfig", run_verify),
    "pretrain": Command("Masked-token pre-training on token stores (the same run as train/pretrain.py).",
                        "mega_audio.train.pretrain:PretrainConfig", run_pretrain,
                        presets="mega_audio.train.pretrain:RECIPES"),
    "finetune": Command("Token store -> classifier on a task (train / select on valid / report on test) -> "
                        "results.json, per_class.md, confusion.png and a checkpoint in --output-dir.",
                        "mega_audio.train.finetune:FinetuneConfig", run_finetune),
    "evaluate": Command("Score a fine-tuned checkpoint on a store split.",
                        "mega_audio.train.inference:EvaluateConfig", run_evaluate),
    "predict": Command("Label files: audio is tokenized with the checkpoint's codec, token files are used without any "
                       "decoding.", "mega_audio.train.inference:PredictConfig", run_predict),
    "embed": Command("Pooled global embeddings of every clip of a store (any layer), for your own probes.",
                     "mega_audio.train.inference:EmbedConfig", run_embed),
    "report": Command("Table 1: scratch / fine-tuned / + augmentation rows, a column group per task and bitrate "
                      "(markdown).", "mega_audio.train.report:ReportConfig", run_report),
    "merge": Command("Task arithmetic: base + sum of lambda_i x (model_i - base) over exported models of one "
                     "architecture and codec -> a normal export.", "mega_audio.train.merge:MergeConfig", run_merge),
    "synth-data": Command("Write a generated labelled audio collection (5 classes of real signal structure) for demos "
                          "and tests.", "mega_audio.data.synth:SynthConfig", run_synth),
}


def _load(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def config_class(command: str) -> type:
    return _load(COMMANDS[command].config)


def config_presets(command: str) -> dict | None:
    spec = COMMANDS[command].presets
    return _load(spec) if spec else None


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """Every command as a subparser; the flags of `command` (the one being run) are added from its dataclass."""
    parser = argparse.ArgumentParser(prog="mega-audio", description="Audio foundation models on neural-codec tokens.")
    subparsers = parser.add_subparsers(dest="__command", metavar="COMMAND", required=True)
    commands = {name: subparsers.add_parser(name, help=cmd.help, description=cmd.help)
                for name, cmd in COMMANDS.items()}
    if command is not None:
        add_config_arguments(commands[command], config_class(command), config_presets(command))
    return parser, commands


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser, commands = build_parser(command)
    args = vars(parser.parse_args(argv))  # without a known command this prints the usage and exits
    name = args.pop("__command")
    with user_errors(argv):
        COMMANDS[name].run(config_from_args(config_class(name), args, commands[name], config_presets(name)))


if __name__ == "__main__":
    main()
