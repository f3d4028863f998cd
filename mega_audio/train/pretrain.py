"""Masked-token pre-training with Accelerate: streamed token batches, AdamW + cosine, atomic checkpoints, exact resume.

`train/pretrain.py` and `mega-audio pretrain` both run `run(PretrainConfig)`: the config's
flags and one loop that stays visible top to bottom (checkpoint files are `resume.py`, shared steps `loop.py`)."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from ..config import option, to_dict
from ..data.colouring import colour_augment, stored_log_mels
from ..data.store import TokenStore, check_same_codec
from ..data.stream import TokenStream, make_loader, parse_store_weights
from ..fileio import atomic_write_text
from ..models.checkpoint import read_checkpoint_config
from ..models.config import GLOBAL_BLOCKS, GLOBAL_MIXERS, PRESETS, ModelConfig, model_config
from ..models.masking import MASK_UNITS, IGNORE_INDEX, clip_halves, mask_tokens, masking_generator, span_frames
from ..models.mega import MegaAudioFormer
from .loop import (
    REPORT_TO,
    check_codec,
    cosine_lr,
    make_accelerator,
    optimizer_step,
    progress_bar,
    set_lr,
    start_trackers,
    tracker_kwargs,
)
from .resume import find_resume, save_training_state, weights_digest
from .teacher import ClusterTeacher, fit_teacher


@dataclass
class PretrainConfig:
    data: list[str] = option([], "token store directories (one codec); several stores are read as one, or mixed "
                                 "in a fixed ratio with weights: new_store:0.8 old_store:0.2 (a bare path weighs 1)")
    output_dir: str = option("runs/pretrain", "checkpoints/, model/, tensorboard/ and debug/ go here")
    report_to: str = option("tensorboard", "experiment tracker (accelerate's): TensorBoard events in output_dir/tensorboard, "
                            "W&B, MLflow, every installed one, or none", choices=list(REPORT_TO))
    model: str = option("tiny", "model preset", choices=sorted(PRESETS))
    global_mixer: str = option("attention", "global encoder mixer", choices=list(GLOBAL_MIXERS))
    global_block: str = option("transformer", "global encoder block: transformer (mixer then MLP) or branchformer "
                                              "(mixer and a convolutional gating MLP in parallel)",
                               choices=list(GLOBAL_BLOCKS))
    init_from: str | None = option(None, "start from the weights of an exported model dir (same codec as --data)")
    rewarm_steps: int | None = option(None, "continual pre-training (with --init-from): re-warm the LR linearly from "
                                            "lr * min_lr_ratio back to --lr over N steps (instead of --warmup-steps), "
                                            "then re-decay it by cosine over the run", min=1)
    train_split: str = option("train", "split of the stores to train on")
    max_seconds: float = option(10.0, "clips are randomly cropped to this many seconds", above=0)
    batch_size: int = option(32, "clips per micro-batch per process", min=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1)
    lr: float = option(1e-3, "peak learning rate", above=0)
    min_lr_ratio: float = option(0.1, "the cosine decays to lr * min_lr_ratio", min=0, max=1)
    weight_decay: float = option(0.1, "AdamW weight decay on matrices and embeddings", min=0)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)", min=0)
    warmup_steps: int = option(1000, "linear warm-up steps", min=0)
    max_steps: int = option(20000, "optimizer steps; every process runs exactly this many", min=1)
    decay_steps: int | None = option(None, "cosine length in steps (default: max_steps)", min=1)
    mask_ratio: float = option(0.5, "fraction of each clip that is masked (of its tokens, frames or span frames)",
                               above=0, max=1)
    mask_unit: str = option("span", "what is masked: single tokens, whole frames, or spans of frames (see README: "
                                    "'Does pre-training help?')", choices=list(MASK_UNITS))
    mask_span_ms: float = option(400.0, "span length for --mask-unit span", above=0)
    mask_start_prob: float | None = option(None, "span: every frame starts a span with this probability instead of "
                                                 "covering --mask-ratio (BEST-RQ style; spans may overlap)",
                                           above=0, max=1)
    mel_loss_weight: float = option(0.0, "add this x the MSE of a small head predicting the log-mel of masked frames "
                                         "(needs stores tokenized with --store-features logmel)", min=0)
    contrastive_weight: float = option(0.0, "add this x a contrastive loss: the two halves of each crop become two "
                                            "clips whose pooled global states must pick each other out of the batch "
                                            "(clip-level features for probes; see README: 'Does pre-training help?')",
                                       min=0)
    colour_db: float = option(0.0, "re-tokenize every clip under a random spectral colouring of about this many dB "
                                   "(a tilt and three bumps over the mel bins) each time it is read, from its stored "
                                   "log-mels: every sound is seen through many EQs (bestrq stores tokenized with "
                                   "--store-features logmel; see README: 'Does pre-training help?')", min=0)
    teacher: str | None = option(None, "a pre-trained model dir: a head on the global states also predicts, for every "
                                       "masked frame, its cluster of this model's frame states (k-means when the run "
                                       "starts): HuBERT's second iteration (see README: 'Does pre-training help?')")
    teacher_clusters: int = option(100, "k of the teacher's k-means", min=2)
    teacher_weight: float = option(1.0, "the teacher's cluster loss is added with this weight", above=0)
    seed: int = option(0, "seeds the model init, the data order, the crops and the masks")
    num_workers: int = option(2, "DataLoader workers per process", min=0)
    shuffle_buffer: int = option(1000, "clips in each worker's shuffle buffer", min=1)
    eval_every: int = option(1000, "evaluate every N steps (0 = only at the end, -1 = never)", min=-1)
    eval_split: str = option("valid", "held-out split; falls back to valid, then test")
    eval_batches: int = option(50, "batches per process per evaluation", min=1)
    save_every: int = option(1000, "checkpoint every N steps (0 = only at the end)", min=0)
    keep_checkpoints: int = option(3, "how many of the newest checkpoints to keep", min=0)
    resume: bool = option(False, "continue from the newest checkpoint in output_dir (start fresh if there is none)")
    compile: bool = option(False, "torch.compile the model (GPU)")
    mixed_precision: str | None = option(None, "no, bf16 or fp16 (default: bf16 on a GPU, no on CPU)",
                                         choices=["no", "bf16", "fp16"])
    log_every: int = option(10, "steps between log lines and tracker points", min=1)
    cpu: bool = option(False, "train on CPU even when a GPU is present (Accelerator(cpu=True))")
    debug_log: bool = option(False, "write the clip ids and loss of every micro-batch to output_dir/debug/")


# Recipes as presets (`--preset NAME`; flags given too win). "paper" is the Mega-AudioFormer paper's recipe:
# the `base` model and 25% of single tokens masked.
#
# "orfium-linear" is the linear-complexity recipe of Vavaroutsos et al. (Orfium, "Linear-complexity self-supervised
# learning for music understanding with random quantizer"): Branchformer blocks with SummaryMixing, BEST-RQ targets
# (tokenize with --codec bestrq --codebook-size 8192 --bestrq-norm feature --store-features logmel), 400 ms spans,
# cross-entropy plus an MSE on the log-mel of masked frames. "Spans starting at 20% of the frames" is read as
# fairseq's mask_prob (wav2vec 2.0, HuBERT, MERT): p x T / span spans, i.e. spans that would cover 20% of the frames
# if none overlapped, so `--mask-ratio 0.2` (non-overlapping spans: exactly 20%). The other reading, every frame
# starting a span with probability 0.2 (`--mask-start-prob 0.2`), masks 1 - 0.8^30 = 99.9% of the frames at 75 Hz
# (a 400 ms span is 30 frames): nothing would be left to predict from. The mel weight (1.0) is our choice.
RECIPES = {
    "paper": PretrainConfig(model="base", mask_unit="token", mask_ratio=0.25),
    "orfium-linear": PretrainConfig(model="base", global_block="branchformer", global_mixer="summary_mixing",
                                    mask_unit="span", mask_span_ms=400.0, mask_ratio=0.2, mel_loss_weight=1.0),
}


def masking_options(cfg: PretrainConfig, frame_rate: float) -> dict:
    """The mask_tokens keywords of this run: its unit, span length in frames and start probability."""
    return {"unit": cfg.mask_unit, "span": span_frames(cfg.mask_span_ms, frame_rate), "start_prob": cfg.mask_start_prob}


def lr_schedule(cfg: PretrainConfig) -> dict:
    """The LR schedule of the run, as checkpoints and the export record it. A continual run (--rewarm-steps) warms up
    from the floor a finished cosine ended on, not from zero."""
    rewarm = cfg.rewarm_steps is not None
    return {"peak": cfg.lr, "warmup_steps": cfg.rewarm_steps if rewarm else cfg.warmup_steps,
            "warmup_from": cfg.min_lr_ratio if rewarm else 0.0, "decay_steps": cfg.decay_steps or cfg.max_steps,
            "min_lr_ratio": cfg.min_lr_ratio, "rewarm": rewarm}


def lr_at(step: int, cfg: PretrainConfig) -> float:
    s = lr_schedule(cfg)
    return cosine_lr(step, s["peak"], s["warmup_steps"], s["decay_steps"], s["min_lr_ratio"], s["warmup_from"])


# ---------------------------------------------------------------------------------------------------------
# data and checkpoint checks


def open_stores(entries: list[str]) -> tuple[list[TokenStore], list[float] | None]:
    """The stores of --data and their mixing weights (None: read as one corpus)."""
    if not entries:
        raise ValueError("no --data: pass one or more token store directories (made by `mega-audio tokenize`)")
    paths, weights = parse_store_weights(entries)
    stores = [TokenStore(p) for p in paths]
    check_same_codec(stores)
    return stores, weights


def mel_bins(cfg: PretrainConfig, stores: list[TokenStore]) -> int:
    """Bins of the stored log-mel features the mel loss predicts (0 without a mel loss); every store must have them."""
    if cfg.mel_loss_weight <= 0:
        return 0
    bins = {logmel["n_mels"] for logmel in stored_log_mels(stores, "--mel-loss-weight", cfg.mel_loss_weight)}
    if len(bins) > 1:
        raise ValueError(f"the --data stores hold log-mel features of different sizes {sorted(bins)}: use one size")
    return bins.pop()


def pick_eval_split(stores: list[TokenStore], wanted: str) -> str | None:
    present = {s.split for store in stores for s in store.shards()}
    return next((split for split in dict.fromkeys([wanted, "valid", "test"]) if split in present), None)


# ---------------------------------------------------------------------------------------------------------
# evaluation


def eval_batches_per_rank(stream: TokenStream, num_workers: int, wanted: int) -> int:
    """The same count on every rank (the smallest rank's, at most `wanted`), so no rank waits on another."""
    workers = max(1, num_workers)
    n_slots = stream.world_size * workers
    counts = [sum(math.ceil(stream.epoch_size(0, rank * workers + w, n_slots) / stream.batch_size) for w in range(workers))
              for rank in range(stream.world_size)]
    return min([wanted, *counts])


@torch.no_grad()
def evaluate_masked(model, loader, n_batches: int, accelerator, cfg: PretrainConfig, mask_id: int,
                    frame_rate: float) -> dict[str, float]:
    """Masked loss and accuracy on this rank's disjoint slice of the held-out split; one reduce at the end."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, device=accelerator.device)  # loss x masked, correct, masked
    for i, batch in enumerate(islice(loader, n_batches)):
        codes = batch["codes"].to(accelerator.device, non_blocking=True).long()
        padding_mask = batch["padding_mask"].to(accelerator.device, non_blocking=True)
        generator = masking_generator(cfg.seed + 1, accelerator.process_index, i, 0, accelerator.device)
        inputs, targets = mask_tokens(codes, padding_mask, cfg.mask_ratio, generator, mask_id=mask_id,
                                      **masking_options(cfg, frame_rate))
        with accelerator.autocast():
            accuracy, loss = model(inputs, padding_mask, targets)  # over the masked tokens
        n = (targets != IGNORE_INDEX).sum()
        totals += torch.stack([loss.float() * n, accuracy * n, n.float()])
    totals = accelerator.reduce(totals, reduction="sum")
    model.train(was_training)
    n = max(totals[2].item(), 1.0)
    return {"loss": totals[0].item() / n, "accuracy": totals[1].item() / n}


# ---------------------------------------------------------------------------------------------------------
# the run


CONTRASTIVE_DIM = 128  # the projection the contrastive loss compares (SimCLR uses 128 too)


def build_model(cfg: PretrainConfig, codec: dict, resume_state: dict | None,
                n_mels: int = 0) -> tuple[MegaAudioFormer, ModelConfig]:
    contrastive, clusters = cfg.contrastive_weight > 0, cfg.teacher_clusters if cfg.teacher else 0  # the heads it needs
    if resume_state is not None:  # the checkpoint's architecture, whatever the preset flags say now
        model_cfg = ModelConfig.from_dict(resume_state["model"])
        model = MegaAudioFormer(model_cfg)
    elif cfg.init_from:
        model = MegaAudioFormer.from_pretrained(cfg.init_from)
    else:
        model = MegaAudioFormer(model_config(cfg.model, codec["n_q"], codec["codebook_size"], global_mixer=cfg.global_mixer,
                                             global_block=cfg.global_block, mel_bins=n_mels,
                                             contrastive_dim=CONTRASTIVE_DIM if contrastive else 0,
                                             teacher_clusters=clusters))
    if model.config.mel_bins != n_mels and n_mels:
        raise ValueError(f"--mel-loss-weight needs a mel head of {n_mels} bins; the model to continue has "
                         f"{model.config.mel_bins or 'none'}: pass --mel-loss-weight 0 or start a new run")
    if model.config.mel_bins and not n_mels:
        drop_head(model, "mel_head", "mel_bins", "mel loss", "--mel-loss-weight", resume_state is not None)
    if contrastive and not model.config.contrastive_dim:
        raise ValueError("--contrastive-weight needs a contrastive head, and the model to continue has none: pass "
                         "--contrastive-weight 0 or start a new run")
    if model.config.contrastive_dim and not contrastive:
        drop_head(model, "contrastive_head", "contrastive_dim", "contrastive loss", "--contrastive-weight",
                  resume_state is not None)
    if clusters and model.config.teacher_clusters != clusters:
        raise ValueError(f"--teacher with --teacher-clusters {clusters} needs a cluster head of that size; the model "
                         f"to continue has {model.config.teacher_clusters or 'none'}: start a new run")
    if model.config.teacher_clusters and not clusters:
        drop_head(model, "cluster_head", "teacher_clusters", "teacher's cluster loss", "--teacher",
                  resume_state is not None)
    return model, model.config


def drop_head(model: MegaAudioFormer, head: str, size_field: str, loss: str, flag: str, resuming: bool) -> None:
    """Continued without the loss a pre-training head serves: no gradient would reach the head, and DDP's all-reduce
    waits for one on every parameter (it would hang or fail at the second step); the exports would carry dead
    weights too. So the head goes. A resumed run keeps its losses instead."""
    if resuming:
        raise ValueError(f"the run to resume was pre-trained with a {loss}: resume it with its {flag}")
    setattr(model, head, None)
    model.config = replace(model.config, **{size_field: 0})


def check_init_from(cfg: PretrainConfig, codec: dict) -> dict:
    """An exported model to start from must have been trained on this codec (or at least this n_q and codebook).
    Returns what the run continues: the model dir, and the step and data it was pre-trained for."""
    header = read_checkpoint_config(cfg.init_from)
    trained = header.get("metadata", {}).get("codec")
    if trained:
        check_codec(trained, codec, cfg.init_from, cfg.data)
    else:  # an export without a codec card: only the shapes can be checked
        ModelConfig.from_dict(header["config"]).check_data(codec["n_q"], codec["codebook_size"])
    before = header.get("metadata", {}).get("pretrain", {})
    return {"model": cfg.init_from, "step": before.get("step"), "data": before.get("data")}


def data_position(cfg: PretrainConfig, world: int) -> dict:
    """What the stream's order depends on besides the step; a resume with other values cannot replay it exactly."""
    return {"world_size": world, "num_workers": cfg.num_workers, "batch_size": cfg.batch_size, "seed": cfg.seed,
            "data": cfg.data, "grad_accum": cfg.grad_accum, "max_seconds": cfg.max_seconds}


def make_loaders(cfg: PretrainConfig, stores: list[TokenStore], weights: list[float] | None, accelerator, pad_id: int,
                 start_step: int):
    """The endless training batches of this rank (stores mixed by `weights`), and the held-out loader (every store's
    held-out clips once) with its per-rank batch count."""
    rank, world = accelerator.process_index, accelerator.num_processes
    launched = int(os.environ.get("WORLD_SIZE", world))
    if launched != world:  # e.g. a GPU launch config on a machine without GPUs: N independent runs, one output_dir
        raise RuntimeError(f"the launcher started {launched} processes but Accelerate set up {world} "
                           f"({accelerator.distributed_type}, {accelerator.device}): without GPUs pass --cpu")
    max_frames = round(cfg.max_seconds * stores[0].frame_rate)
    pin = accelerator.device.type == "cuda"
    common = dict(batch_size=cfg.batch_size, max_frames=max_frames, pad_id=pad_id, seed=cfg.seed, rank=rank,
                  world_size=world, codes_dtype=torch.int16)  # int16: a quarter of the bytes through workers and PCIe
    train = TokenStream(stores, cfg.train_split, shuffle_buffer=cfg.shuffle_buffer, weights=weights,
                        start_batch=start_step * cfg.grad_accum, augment=colour_augment(cfg.colour_db, stores),
                        **common)  # skip exactly the batches this rank consumed
    batches = iter(make_loader(train, cfg.num_workers, pin_memory=pin))
    split = pick_eval_split(stores, cfg.eval_split) if cfg.eval_every >= 0 else None
    if split is None:
        accelerator.print("no held-out split (valid/test) in --data: training without evaluation")
        return batches, None, 0
    held_out = TokenStream(stores, split, shuffle=False, loop=False, **common)
    n_eval = eval_batches_per_rank(held_out, cfg.num_workers, cfg.eval_batches)
    accelerator.print(f"evaluating on {split!r}: {n_eval} batches per process")
    return batches, make_loader(held_out, cfg.num_workers, pin_memory=pin), n_eval


def train_step(step: int, batches, model, optimizer, accelerator, cfg: PretrainConfig, mask_id: int, frame_rate: float,
               debug=None, run_start: int = 0, teacher: ClusterTeacher | None = None) -> tuple[torch.Tensor, int]:
    """cfg.grad_accum micro-batches and one optimizer step. Returns (loss sum, micro-batches, valid frames) on the
    device, for logging without a sync, and the valid frames as a host int."""
    set_lr(optimizer, lr_at(step, cfg))
    totals, frames = torch.zeros(3, device=accelerator.device), 0
    for micro in range(cfg.grad_accum):
        batch = next(batches)
        valid, codes, features = batch["padding_mask"], batch["codes"], batch.get("features")
        if cfg.contrastive_weight > 0:  # two views of every clip, each masked on its own
            valid, codes, features = (None if x is None else clip_halves(x) for x in (valid, codes, features))
        # valid: (B, T) on the host, so counting frames costs no device sync
        codes = codes.to(accelerator.device, non_blocking=True).long()  # (B, T, n_q)
        padding_mask = None if valid.all() else valid.to(accelerator.device, non_blocking=True)  # None: flash SDPA
        features = features.to(accelerator.device, non_blocking=True) if cfg.mel_loss_weight > 0 else None
        clusters = teacher(codes, padding_mask) if teacher is not None else None  # from the unmasked clip
        generator = masking_generator(cfg.seed, accelerator.process_index, step, micro, accelerator.device)
        inputs, targets = mask_tokens(codes, padding_mask, cfg.mask_ratio, generator, mask_id=mask_id,
                                      **masking_options(cfg, frame_rate))
        with accelerator.accumulate(model):  # no gradient all-reduce until the last micro-batch
            _, loss = model(inputs, padding_mask, targets, features, cfg.mel_loss_weight, cfg.contrastive_weight,
                            clusters, cfg.teacher_weight)
            optimizer_step(accelerator, model, optimizer, loss, cfg.grad_clip)
        n_valid = int(valid.sum())
        frames += n_valid
        totals += torch.stack([loss.detach().float(), torch.ones_like(totals[0]), torch.full_like(totals[0], n_valid)])
        if debug:
            debug.write(json.dumps({"run_start": run_start, "step": step, "micro": micro, "ids": batch["ids"],
                                    "loss": loss.item()}) + "\n")
    return totals, frames


def run(cfg: PretrainConfig) -> dict[str, Any]:
    """Pre-train on cfg.data; resumable at the exact step and data position; exports output_dir/model/."""
    from accelerate.utils import set_seed

    start_time = time.time()
    stores, weights = open_stores(cfg.data)
    codec, output_dir = stores[0].card["codec"], Path(cfg.output_dir)
    if cfg.rewarm_steps is not None and not cfg.init_from:
        raise ValueError("--rewarm-steps re-warms a pre-trained model: pass --init-from MODEL_DIR too (or use "
                         "--warmup-steps for a fresh run)")
    resume_from, resume_state = find_resume(cfg.output_dir, cfg.resume, codec, cfg.data)
    continued_from = resume_state.get("continued_from") if resume_state else None
    if cfg.init_from and resume_from is None:
        continued_from = check_init_from(cfg, codec)

    accelerator = make_accelerator(cfg.cpu, cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                                   dynamo_backend="inductor" if cfg.compile else None,
                                   **tracker_kwargs(cfg.report_to, output_dir))
    rank, world = accelerator.process_index, accelerator.num_processes
    accelerator.print(f"{world} process(es), {accelerator.distributed_type}, {accelerator.device}, "
                      f"mixed precision {accelerator.mixed_precision}")
    set_seed(cfg.seed)  # the same initial weights on every rank
    model, model_cfg = build_model(cfg, codec, resume_state, mel_bins(cfg, stores))
    model.to(accelerator.device)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr)
    model, optimizer = accelerator.prepare(model, optimizer)  # never the loader: the stream splits itself (docs/architecture.md)

    start_step, frames_seen = 0, 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start_step, frames_seen = resume_state["step"], resume_state["frames_seen"] // world
        then = {k: resume_state.get(k) for k in data_position(cfg, world)}
        if then != data_position(cfg, world):
            warnings.warn(f"resuming with {data_position(cfg, world)} instead of {then}: the run goes on, but its data "
                          f"order differs from an uninterrupted run")
        accelerator.print(f"resumed from {resume_from} at step {start_step}")
    batches, eval_loader, n_eval = make_loaders(cfg, stores, weights, accelerator, model_cfg.pad_id, start_step)
    teacher = fit_teacher(cfg.teacher, stores, cfg.train_split, cfg.teacher_clusters,
                          round(cfg.max_seconds * codec["frame_rate"]), cfg.seed, device=accelerator.device) \
        if cfg.teacher else None
    # evaluation runs the bare model (no DDP hooks, so ranks need not agree on batch counts); FSDP needs the wrapper
    eval_model = model if accelerator.distributed_type == "FSDP" else accelerator.unwrap_model(model, keep_torch_compile=False)

    debug = None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "pretrain_config.json", json.dumps(to_dict(cfg), indent=1))
    if cfg.report_to != "none":
        start_trackers(accelerator, "mega-audio-pretrain", to_dict(cfg), output_dir.name, start_step)
    if cfg.debug_log:
        (output_dir / "debug").mkdir(parents=True, exist_ok=True)
        debug = open(output_dir / "debug" / f"rank{rank}.jsonl", "a", buffering=1)  # line by line: survives a kill

    def log(step: int, prefix: str, values: dict[str, float]) -> None:
        accelerator.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)  # a no-op without trackers

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate_masked(eval_model, eval_loader, n_eval, accelerator, cfg, model_cfg.mask_id,
                                  codec["frame_rate"])
        log(step, "eval", metrics)
        accelerator.print(f"step {step}: eval loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}")
        return metrics

    model.train()
    window = torch.zeros(3, device=accelerator.device)  # loss sum, micro-batches, valid frames since the last log
    last_loss, eval_metrics, window_start = resume_state and resume_state.get("loss"), {}, time.time()
    bar = progress_bar(accelerator, cfg.max_steps, "pretrain", initial=start_step)
    for step in range(start_step, cfg.max_steps):
        totals, frames = train_step(step, batches, model, optimizer, accelerator, cfg, model_cfg.mask_id,
                                    codec["frame_rate"], debug, start_step, teacher)
        window += totals
        frames_seen += frames
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            totals = accelerator.reduce(window, reduction="sum")  # every rank reaches this at the same step
            seconds = time.time() - window_start
            last_loss = totals[0].item() / max(totals[1].item(), 1)
            frames_per_s = totals[2].item() / seconds
            stats = {"loss": last_loss, "lr": lr_at(step, cfg), "audio_hours_per_s": frames_per_s / codec["frame_rate"] / 3600,
                     "tokens_per_s": frames_per_s * codec["n_q"]}
            bar.set_postfix(loss=f"{last_loss:.3f}", audio_h_s=f"{stats['audio_hours_per_s']:.3f}",
                            tok_s=f"{stats['tokens_per_s']:,.0f}")
            log(done, "train", stats)
            window.zero_()
            window_start = time.time()
        if eval_loader is not None and cfg.eval_every > 0 and done % cfg.eval_every == 0:
            eval_metrics = run_eval(done)
        if (cfg.save_every > 0 and done % cfg.save_every == 0) or done == cfg.max_steps:
            state = {"step": done, "batches_per_rank": done * cfg.grad_accum, "frames_seen": frames_seen * world,
                     "loss": last_loss, "codec": codec, "model": model_cfg.to_dict(), "lr_schedule": lr_schedule(cfg),
                     "continued_from": continued_from, **data_position(cfg, world)}
            save_training_state(accelerator, output_dir, state, cfg.keep_checkpoints)
    bar.close()

    end_step = max(start_step, cfg.max_steps)
    if eval_loader is not None and (not eval_metrics or cfg.eval_every <= 0 or end_step % cfg.eval_every):
        eval_metrics = run_eval(end_step)
    total_frames = accelerator.reduce(torch.tensor(float(frames_seen), device=accelerator.device), reduction="sum").item()
    export_dir = export(accelerator, model, model_cfg, output_dir, codec, cfg, end_step, eval_metrics, continued_from)
    if debug:
        digest = weights_digest(accelerator.unwrap_model(model))  # the test checks every rank ends equal
        debug.write(json.dumps({"final": True, "step": end_step, "weights": digest}) + "\n")
        debug.close()
    stats = {"steps": end_step, "loss": last_loss, "eval": eval_metrics, "processes": world, "model_dir": str(export_dir),
             "continued_from": continued_from and continued_from["model"],
             "audio_hours": total_frames / codec["frame_rate"] / 3600, "wall_s": time.time() - start_time}
    accelerator.print(pretrain_summary(stats))
    accelerator.end_training()
    return stats


def export(accelerator, model, model_cfg: ModelConfig, output_dir: Path, codec: dict, cfg: PretrainConfig, step: int,
           eval_metrics: dict, continued_from: dict | None = None) -> Path:
    """model.safetensors + config.json for fine-tuning; the codec card rides along so downstream tasks can check it."""
    state = accelerator.get_state_dict(model)  # the full weights on the main process (gathers FSDP shards)
    export_dir = output_dir / "model"
    if accelerator.is_main_process:
        exported = MegaAudioFormer(model_cfg)
        exported.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in state.items()})
        exported.save_pretrained(export_dir, metadata={"codec": codec, "pretrain": {
            "step": step, "data": cfg.data, "max_frames": round(cfg.max_seconds * codec["frame_rate"]),
            "mask_ratio": cfg.mask_ratio, "mask_unit": cfg.mask_unit, "mask_span_ms": cfg.mask_span_ms,
            "mask_start_prob": cfg.mask_start_prob, "mel_loss_weight": cfg.mel_loss_weight,
            "contrastive_weight": cfg.contrastive_weight, "colour_db": cfg.colour_db, "teacher": cfg.teacher and {
                "model": cfg.teacher, "clusters": cfg.teacher_clusters, "weight": cfg.teacher_weight},
            "lr_schedule": lr_schedule(cfg), "continued_from": continued_from, "eval": eval_metrics}})
    accelerator.wait_for_everyone()
    return export_dir


def pretrain_summary(stats: dict[str, Any]) -> str:
    loss = "n/a" if stats["loss"] is None else f"{stats['loss']:.4f}"
    ev = stats["eval"]
    evaluation = f"eval loss {ev['loss']:.4f} acc {ev['accuracy']:.4f}" if ev else "no eval"
    continued = stats.get("continued_from")
    steps = f"{stats['steps']} steps" + (f" (continued from {continued})" if continued else "")
    return (f"pretrain: {steps} on {stats['processes']} process(es), final loss {loss}, {evaluation}, "
            f"{stats['audio_hours']:.3f} audio-hours seen, {stats['wall_s']:.0f} s wall -> {stats['model_dir']}")
