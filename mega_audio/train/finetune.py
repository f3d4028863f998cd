"""Fine-tuning on a task: an Accelerate loop over a task's view of a store, model selection on valid, test report.

Using the result (evaluate, embed, predict) is `inference.py`."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import option, save_yaml, to_dict
from ..data.colouring import colour_augment
from ..data.recipes import TASKS, get_task
from ..data.store import TokenStore
from ..data.stream import TaskStream, make_loader
from ..data.tasks import split_samples, task_view
from ..models.checkpoint import load_weights, read_checkpoint_config
from ..models.classifier import PROBE_POOLS, AudioClassifier
from ..models.config import PRESETS, ModelConfig, model_config
from ..models.model_card import augmentation
from .inference import DEFAULT_EVAL_MODE, EVAL_MODES, evaluate_split
from .probe import frozen_probe
from .loop import check_codec, cosine_lr, make_accelerator, optimizer_step, progress_bar, set_lr
from .report import write_reports

AUGMENTS = ("none", "chunk-drop")


@dataclass
class FinetuneConfig:
    task: str = option("folder", "gtzan, nsynth, nsynth-pitch, speech_music, audioset or folder", choices=list(TASKS))
    data: str = option("", "token store directory (from `mega-audio tokenize`)")
    init: str | None = option(None, "checkpoint to start from: a pre-training export (train/pretrain.py) or a classifier")
    scratch: bool = option(False, "start from random weights instead (the Table 1 'scratch' row)")
    model: str = option("tiny", "model preset with --scratch (--init takes the checkpoint's)", choices=sorted(PRESETS))
    augment: str = option("none", "training augmentation", choices=list(AUGMENTS))
    chunk_drop: float = option(0.25, "chunk-drop: the one dropped span is 1 frame to this fraction of the clip",
                               above=0, max=1)
    colour_db: float = option(0.0, "re-tokenize every training clip under a random spectral colouring of about this "
                                   "many dB each time it is read, as `pretrain --colour-db` does (bestrq stores "
                                   "tokenized with --store-features logmel; not with --freeze, whose features are "
                                   "computed once)", min=0)
    freeze: bool = option(False, "frozen probe: encoder frozen (run once per clip, features cached), head = one "
                                 "hidden layer with dropout trained for --epochs on the features")
    hidden: int = option(512, "hidden width of the frozen probe's head (0: a linear probe)", min=0)
    head_dropout: float = option(0.25, "dropout in the frozen probe's head (0.25, as the linear-complexity SSL paper probes)",
                                 min=0, below=1)
    probe_layer: str = option("best", "frozen probe: the encoder layer it reads: best (the one best on valid), last, "
                                      "mean (of all layers) or a layer number (0: the patch embeddings)")
    probe_pool: str = option("stats", "frozen probe: how a clip's frames become one vector: stats (every feature's "
                                      "mean and standard deviation over the frames), mean, or attention (learned "
                                      "queries weigh the frames, as in the attentive probes of V-JEPA and AIM)",
                             choices=list(PROBE_POOLS))
    lp_epochs: int = option(0, "LP-FT: before fine-tuning, fit the linear head for this many epochs on the frozen "
                               "encoder's cached features, so a random head does not distort pre-trained features",
                            min=0)
    lr: float = option(3e-4, "peak learning rate (AdamW, linear warm-up then cosine decay)", above=0)
    weight_decay: float = option(0.01, "AdamW weight decay on matrices and embeddings", min=0)
    warmup: float = option(0.1, "fraction of the steps spent warming up", min=0, below=1)
    epochs: int = option(10, "passes over the train split (every rank runs the same number of steps)", min=1)
    max_steps: int | None = option(None, "stop after this many steps, overriding --epochs", min=1)
    batch_size: int = option(16, "clips per step and process", min=1)
    max_seconds: float = option(10.0, "training window: longer clips are randomly cropped to it", above=0)
    eval_mode: str = option(DEFAULT_EVAL_MODE, "clips longer than the window at evaluation: chunks (default: the mean "
                                               "logits of consecutive windows, the length training saw) or whole",
                            choices=list(EVAL_MODES))
    eval_batch_size: int = option(32, "clips per evaluation batch", min=1)
    split: str | None = option(None, "gtzan: filtered (default, the fault-filtered split) or random (a seeded stratified "
                                     "80/10/10 split of all 1,000 clips, what the paper's whole-percent figures imply)")
    valid_fraction: float = option(0.1, "held-out share of train used for selection when there is no valid split",
                                   min=0, below=1)
    train_split: str | None = option(None, "override the task's train split")
    valid_split: str | None = option(None, "override the task's valid split ('holdout' = a slice of train)")
    test_split: str | None = option(None, "override the task's test split")
    num_workers: int = option(0, "DataLoader worker processes per rank", min=0)
    seed: int = option(0, "seeds weights, data order, crops and augmentation")
    probe_seed: int | None = option(None, "seeds the frozen probe's head (--freeze, --lp-epochs): its initial weights "
                                          "and batch order (default: --seed). With --scratch, --seed alone draws the "
                                          "random encoder, so one encoder can be probed with several heads")
    output_dir: str = option("runs/finetune", "results.json, reports, confusion.png and the checkpoint go here")
    cpu: bool = option(False, "run on the CPU even when a GPU is visible (Accelerator(cpu=True))")
    mixed_precision: str | None = option(None, "no, bf16 or fp16 (default: bf16 on a GPU that has it, no on CPU)",
                                         choices=["no", "bf16", "fp16"])


# ---------------------------------------------------------------------------------------------
# model


def chunk_drop(codes: torch.Tensor, padding_mask: torch.Tensor, max_fraction: float, pad_id: int,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove one contiguous span of 1 .. floor(max_fraction * n) frames from every clip of n valid frames and close
    the gap. codes: (B, T, n_q), padding_mask: (B, T) True = valid. Clips too short for a span are unchanged."""
    out, mask = torch.full_like(codes, pad_id), torch.zeros_like(padding_mask)
    for b, n in enumerate(padding_mask.sum(dim=1).tolist()):
        longest = int(max_fraction * n)
        if longest < 1:
            out[b], mask[b] = codes[b], padding_mask[b]
            continue
        length = int(torch.randint(1, longest + 1, (1,), generator=generator))
        start = int(torch.randint(0, n - length + 1, (1,), generator=generator))
        kept = torch.cat([codes[b, :start], codes[b, start + length: n]])  # (n - length, n_q)
        out[b, : len(kept)], mask[b, : len(kept)] = kept, True
    return out, mask


def build_classifier(cfg: FinetuneConfig, store: TokenStore, n_classes: int, multi_label: bool) -> AudioClassifier:
    """A new head on random weights (--scratch) or on the global encoder of --init; refuses mismatched tokens."""
    if bool(cfg.init) == cfg.scratch:
        raise ValueError("pass exactly one of --init CHECKPOINT (fine-tune a pre-trained model) or --scratch")
    hidden, pool = (cfg.hidden, cfg.probe_pool) if cfg.freeze else (None, "mean")
    if cfg.scratch:
        config = model_config(cfg.model, store.n_q, store.codebook_size)
        return AudioClassifier(config, n_classes, multi_label, hidden, cfg.head_dropout, probe_pool=pool)
    header = read_checkpoint_config(cfg.init)
    check_codec(header.get("metadata", {}).get("codec"), store.card["codec"], cfg.init, str(store.path))
    ModelConfig.from_dict(header["config"]).check_data(store.n_q, store.codebook_size)
    # with n_classes the head is always new, also on a classifier checkpoint
    return AudioClassifier.from_pretrained(cfg.init, n_classes, multi_label, hidden, cfg.head_dropout, probe_pool=pool)


# ---------------------------------------------------------------------------------------------
# the fine-tuning loop


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train on the task's train split, keep the epoch that scores best on valid, report it on test; returns results.json."""
    from accelerate.utils import set_seed

    if cfg.augment not in AUGMENTS or cfg.eval_mode not in EVAL_MODES:
        raise ValueError(f"augment must be one of {AUGMENTS} and eval_mode one of {EVAL_MODES}")
    if not cfg.data:
        raise ValueError("--data is required: a token store directory (from `mega-audio tokenize`)")
    if cfg.freeze and cfg.colour_db:
        raise ValueError("--colour-db re-tokenizes clips as they are read, and --freeze reads every clip's features "
                         "once: pass one of them")
    start_time = time.time()
    task, store = get_task(cfg.task), TokenStore(cfg.data)
    task.check_store(store.card)
    vocab, scheme = task.vocabulary(store.card), task.split_scheme(cfg.split)
    view = task_view(task, store, vocab, cfg.valid_fraction, cfg.seed, cfg.train_split, cfg.valid_split, cfg.test_split,
                     scheme)
    read_split, keep = view.splits, view.keep

    accelerator = make_accelerator(cfg.cpu, cfg.mixed_precision)
    set_seed(cfg.seed)  # the same initial weights on every rank
    model = build_classifier(cfg, store, len(vocab), task.multi_label)
    if cfg.freeze:
        model.freeze_encoder()
    pad_id, max_frames = model.config.pad_id, max(1, round(cfg.max_seconds * store.frame_rate))
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, betas=(0.9, 0.999))
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    n = {name: keep[name].count(store, read_split[name]) for name in read_split}
    if not n["train"]:
        raise ValueError(f"no {read_split['train']!r} clip of {store.path} has a {task.name} label: check --task and --data")
    steps_per_epoch = max(1, math.ceil(n["train"] / (cfg.batch_size * accelerator.num_processes)))
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    # TokenStream deals shards to (rank, worker) slots itself: the loader is never passed to accelerator.prepare
    stream = TaskStream([store], read_split["train"], cfg.batch_size, max_frames, pad_id, seed=cfg.seed,
                        rank=accelerator.process_index, world_size=accelerator.num_processes, codes_dtype=torch.int16,
                        task=task, keep=keep["train"], augment=colour_augment(cfg.colour_db, [store]))
    batches = iter(make_loader(stream, cfg.num_workers, pin_memory=accelerator.device.type == "cuda"))
    generator = torch.Generator().manual_seed(cfg.seed * 10_007 + accelerator.process_index)

    output_dir = Path(cfg.output_dir)
    metadata = {"task": task.name, "labels": vocab, "multi_label": task.multi_label, "codec": store.card["codec"],
                "dataset": store.card.get("dataset"), "max_frames": max_frames, "eval_mode": cfg.eval_mode, "split": scheme,
                "finetune": to_dict(cfg)}
    evaluate_on = lambda name: evaluate_split(  # noqa: E731
        unwrapped, split_samples(store, read_split[name], keep[name]), task, vocab, max_frames, cfg.eval_mode,
        cfg.eval_batch_size, accelerator, desc=f"eval {name}")

    probe_seed = cfg.seed if cfg.probe_seed is None else cfg.probe_seed
    if cfg.freeze:
        probe = frozen_probe(unwrapped, store, task, vocab, read_split, keep, max_frames, cfg.eval_mode, cfg.probe_layer,
                             cfg.max_steps and math.ceil(cfg.max_steps / steps_per_epoch) or cfg.epochs, cfg.batch_size,
                             cfg.lr, cfg.weight_decay, probe_seed, cfg.eval_batch_size, accelerator)
        if accelerator.is_main_process:
            unwrapped.save_pretrained(output_dir, metadata={**metadata, "best_epoch": probe["epoch"]})
        history, test, total = probe["history"], probe["test"], steps_per_epoch * cfg.epochs
        best = {"epoch": probe["epoch"], "step": probe["epoch"] * steps_per_epoch, "valid": probe["valid"],
                "probe_layer": probe["layer"], "valid_by_layer": probe["valid_by_layer"]}
    else:
        if cfg.lp_epochs:
            frozen_probe(unwrapped, store, task, vocab, read_split, keep, max_frames, cfg.eval_mode, "last",
                         cfg.lp_epochs, cfg.batch_size, 1e-3, cfg.weight_decay, probe_seed, cfg.eval_batch_size,
                         accelerator, roles=("train", "valid"))
        history, best, test = train_and_select(cfg, model, optimizer, accelerator, batches, generator, task, vocab,
                                               pad_id, total, steps_per_epoch, evaluate_on, output_dir, metadata)
    results = {
        "task": task.name, "dataset": store.card.get("dataset"), "data": str(store.path),
        "codec": store.card["codec"]["name"], "bitrate": store.card["codec"]["bandwidth"],
        "codec_fingerprint": store.card["codec"]["fingerprint"], "init": cfg.init, "augment": augmentation(to_dict(cfg)),
        "freeze": cfg.freeze, "main_metric": task.main_metric, "split": scheme, "splits": read_split | {"holdout": view.holdout},
        "metrics": {"valid": best["valid"]["metrics"], "test": test["metrics"]},
        "n": {"train": n["train"], "valid": best["valid"]["n"], "test": test["n"]},
        "best_epoch": best["epoch"], "best_step": best["step"], "epochs": cfg.epochs, "steps": total,
        **{k: best[k] for k in ("probe_layer", "valid_by_layer") if k in best},
        "steps_per_epoch": steps_per_epoch, "history": history, "checkpoint": str(output_dir),
        "seconds": round(time.time() - start_time, 1), "config": to_dict(cfg),
    }
    if accelerator.is_main_process:
        # the selected weights again, now with their results in config.json and the model card
        unwrapped.save_pretrained(output_dir, metadata={**metadata, "best_epoch": best["epoch"],
                                                        "results": results["metrics"]})
        results.update(write_reports(output_dir, test, task, vocab))
        save_yaml(cfg, output_dir / "finetune.yaml")
        (output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    accelerator.wait_for_everyone()
    return results


def train_and_select(cfg: FinetuneConfig, model, optimizer, accelerator, batches, generator, task, vocab: list[str],
                     pad_id: int, total: int, steps_per_epoch: int, evaluate_on, output_dir: Path,
                     metadata: dict) -> tuple[list[dict], dict, dict]:
    """Fine-tune for `total` steps, score valid after every epoch, save the best; returns (history, best, test)."""
    unwrapped = accelerator.unwrap_model(model)
    history, best, losses = [], None, []
    bar = progress_bar(accelerator, total, f"finetune {task.name}")
    for step in range(total):
        model.train()
        batch = next(batches)
        codes, mask = batch["codes"], batch["padding_mask"]  # (B, T, n_q), (B, T)
        if cfg.augment == "chunk-drop":
            codes, mask = chunk_drop(codes, mask, cfg.chunk_drop, pad_id, generator)
        targets = torch.from_numpy(task.encode_labels(batch["labels"], vocab)).to(accelerator.device)
        mask = None if mask.all() else mask.to(accelerator.device)  # None: no padding, SDPA may use its flash kernel
        set_lr(optimizer, cosine_lr(step, cfg.lr, max(1, round(cfg.warmup * total)), total))
        _, loss = model(codes.to(accelerator.device), mask, targets)
        optimizer_step(accelerator, model, optimizer, loss, grad_clip=1.0)
        bar.update(1)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if (step + 1) % steps_per_epoch and step + 1 < total:
            continue
        epoch = round((step + 1) / steps_per_epoch, 3)
        model.eval()
        with accelerator.autocast():
            valid = evaluate_on("valid")
        history.append({"epoch": epoch, "step": step + 1, "train_loss": float(np.mean(losses[-steps_per_epoch:])),
                        "valid_loss": valid["loss"], "valid": valid["metrics"]})
        value = (valid["metrics"][task.main_metric], -valid["loss"])  # ties on the metric go to the lower loss
        value = tuple(-math.inf if math.isnan(v) else v for v in value)
        if best is None or value > best["value"]:
            best = {"value": value, "epoch": epoch, "step": step + 1, "valid": valid}
            if accelerator.is_main_process:
                unwrapped.save_pretrained(output_dir, metadata={**metadata, "best_epoch": epoch})
        accelerator.wait_for_everyone()
    bar.close()

    unwrapped.load_state_dict(load_weights(output_dir))  # the selected epoch (copied onto the model's device)
    model.eval()
    with accelerator.autocast():
        test = evaluate_on("test")
    return history, best, test


def finetune_summary(r: dict[str, Any]) -> str:
    test = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["metrics"]["test"].items())
    setup = ", ".join([f"{r['codec']} {r['bitrate']:g} kbps", f"init {r['init']}" if r["init"] else "scratch",
                       f"augment {r['augment']}"] + (["frozen"] if r["freeze"] else []))
    return (f"finetune {r['task']} ({setup}): test {test} (n={r['n']['test']}), best epoch {r['best_epoch']:.3g} of "
            f"{r['steps'] / r['steps_per_epoch']:.3g}, {r['seconds']:.0f} s -> {r['checkpoint']}")


