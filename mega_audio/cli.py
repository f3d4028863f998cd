"""The `mega-audio` command line: one subcommand per stage, each a thin call into the library."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .config import parse_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Audio foundation models on neural-codec tokens.")

# Commands whose options are a config dataclass: flags are parsed by mega_audio.config, so the flag names,
# the YAML keys and the dataclass fields stay one and the same. `--help` is answered by that parser.
DATACLASS_COMMAND = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=DATACLASS_COMMAND, add_help_option=False)
def tokenize(ctx: typer.Context) -> None:
    """Tokenize an audio dataset into a token store (see `mega-audio tokenize --help`)."""
    from .pipeline import TokenizeConfig, summary_line, tokenize_local
    from .pipeline import tokenize as run_tokenize

    cfg = parse_config(TokenizeConfig, ctx.args, prog="mega-audio tokenize",
                       description="Audio files -> manifest -> codec tokens -> sharded token store (resumable).")
    if cfg.nproc > 1:
        failed = tokenize_local(cfg, ctx.args)
        if failed:
            raise typer.Exit(f"{failed} of {cfg.nproc} tokenize processes failed; re-run the same command to finish")
        return
    print(summary_line(run_tokenize(cfg)))


@app.command()
def inspect(store: Path = typer.Argument(..., help="token store directory"),
            shards: int = typer.Option(8, help="shards to read for codebook usage")) -> None:
    """Print a store's card, per-split counts and codebook usage."""
    from .store import TokenStore, codebook_usage

    ts = TokenStore(store)
    card = {k: v for k, v in ts.card.items() if k != "shards"}
    print(json.dumps(card, indent=1))
    print(f"{'split':<18}{'clips':>10}{'hours':>10}{'shards':>8}")
    for split, s in ts.card["splits"].items():
        print(f"{split:<18}{s['clips']:>10}{s['hours']:>10.2f}{s['shards']:>8}")
    for level, u in enumerate(codebook_usage(ts, shards)):
        print(f"codebook {level:>2}: {u['used']:6.1%} of codes used, perplexity {u['perplexity']:7.1f}")


@app.command("synth-data")
def synth_data(out: Path = typer.Argument(..., help="folder to write <label>/<files> into"),
               per_class: int = typer.Option(40, help="clips per class"),
               seconds: float = typer.Option(4.0, help="clip length"),
               seed: int = typer.Option(0, help="random seed")) -> None:
    """Write a generated labelled audio collection (5 classes of real signal structure) for demos and tests."""
    from .synth import CLASSES, write_collection

    n = write_collection(out, per_class, seconds, seed)
    print(f"synth-data: {n} clips of {seconds:g} s in {len(CLASSES)} classes ({', '.join(CLASSES)}) under {out}")


@app.command(context_settings=DATACLASS_COMMAND, add_help_option=False)
def finetune(ctx: typer.Context) -> None:
    """Fine-tune on a task: train, select on valid, report on test (see `mega-audio finetune --help`)."""
    from accelerate import PartialState

    from .finetune import FinetuneConfig, summary_line
    from .finetune import finetune as run_finetune

    cfg = parse_config(FinetuneConfig, ctx.args, prog="mega-audio finetune",
                       description="Token store -> classifier on a task (train / select on valid / report on test) -> "
                                   "results.json, per_class.md, confusion.png and a checkpoint in --output-dir.")
    results = run_finetune(cfg)
    if PartialState().is_main_process:  # one line, also under torchrun / accelerate launch
        print(summary_line(results))


@app.command()
def evaluate(checkpoint: Path = typer.Option(..., help="a `mega-audio finetune` output dir"),
             data: Path = typer.Option(..., help="token store made with the checkpoint's codec"),
             split: Optional[str] = typer.Option(None, help="store split (default: the task's test split)"),
             eval_mode: Optional[str] = typer.Option(None, help="whole or chunks (default: as fine-tuned)"),
             batch_size: int = typer.Option(32, help="clips per batch")) -> None:
    """Score a fine-tuned checkpoint on a store split."""
    from .finetune import evaluate as run_evaluate

    print(json.dumps(run_evaluate(checkpoint, data, split, eval_mode, batch_size), indent=1))


@app.command()
def predict(files: list[Path] = typer.Argument(..., help="audio files, or .npy token files (T, n_q)"),
            checkpoint: Path = typer.Option(..., help="a `mega-audio finetune` output dir"),
            top_k: int = typer.Option(5, help="labels to print per file"),
            codec_weights: Optional[str] = typer.Option(None, help="Encodec weights, if not where the checkpoint's card says")) -> None:
    """Label files: audio is tokenized with the checkpoint's codec, token files are used without any decoding."""
    from .finetune import predict as run_predict

    for p in run_predict(files, checkpoint, top_k, codec_weights):
        print(f"{p['path']}: " + ", ".join(f"{label} {prob:.3f}" for label, prob in p["top"]))


@app.command()
def embed(checkpoint: Path = typer.Option(..., help="a fine-tuned or pre-trained checkpoint dir"),
          data: Path = typer.Option(..., help="token store"),
          out: Path = typer.Option(..., help="X.npy: (N, d) float32 embeddings; ids, labels and splits go to X.json"),
          split: Optional[str] = typer.Option(None, help="one split (default: all)"),
          eval_mode: str = typer.Option("whole", help="whole, or chunks of --max-seconds averaged"),
          max_seconds: Optional[float] = typer.Option(None, help="window for --eval-mode chunks"),
          batch_size: int = typer.Option(32, help="clips per batch")) -> None:
    """Mean-pooled global embeddings of every clip of a store, for your own probes."""
    from .finetune import embed as run_embed

    print(json.dumps(run_embed(checkpoint, data, out, split, eval_mode, max_seconds, batch_size)))


@app.command()
def report(results: list[Path] = typer.Argument(..., help="results.json files or folders holding them"),
           split: str = typer.Option("test", help="which split's metrics to tabulate"),
           out: Optional[Path] = typer.Option(None, help="also write the markdown here")) -> None:
    """Table 1: scratch / fine-tuned / + augmentation rows, a column group per task and bitrate (markdown)."""
    from .metrics import load_results, table1

    table = table1(load_results(results), split)
    if out:
        out.write_text(table)
    print(table, end="")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
