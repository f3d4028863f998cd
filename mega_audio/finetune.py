"""Fine-tuning on a task (Accelerate loop, model selection, reports) and using the result: evaluate, embed, predict."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .config import option, save_yaml, to_dict
from .data import chunked, collate, make_loader
from .metrics import (
    confusion_matrix,
    confusion_png_size,
    per_class_markdown,
    per_class_report,
    plot_confusion,
    score,
)
from .model import (
    PRESETS,
    AudioClassifier,
    MegaAudioFormer,
    ModelConfig,
    load_weights,
    model_config,
    read_checkpoint_config,
)
from .store import Sample, TokenStore
from .tasks import (
    TASKS,
    ClipFilter,
    Task,
    TaskStream,
    get_task,
    split_samples,
    task_view,
)
from .training import check_codec, cosine_lr, make_accelerator

AUGMENTS = ("none", "chunk-drop")
EVAL_MODES = ("whole", "chunks")


@dataclass
class FinetuneConfig:
    task: str = option("folder", "gtzan, nsynth, nsynth-pitch, speech_music, audioset or folder", choices=list(TASKS))
    data: str = option("", "token store directory (from `mega-audio tokenize`)")
    init: str | None = option(None, "checkpoint to start from: a pre-training export (train/pretrain.py) or a classifier")
    scratch: bool = option(False, "start from random weights instead (the Table 1 'scratch' row)")
    model: str = option("tiny", "model preset with --scratch (--init takes the checkpoint's)", choices=sorted(PRESETS))
    augment: str = option("none", "training augmentation", choices=list(AUGMENTS))
    chunk_drop: float = option(0.25, "chunk-drop: the one dropped span is 1 frame to this fraction of the clip")
    freeze: bool = option(False, "frozen probe: encoder frozen, head = one hidden layer with dropout")
    hidden: int = option(512, "hidden width of the frozen probe's head")
    head_dropout: float = option(0.1, "dropout in the frozen probe's head")
    lr: float = option(3e-4, "peak learning rate (AdamW, linear warm-up then cosine decay)")
    weight_decay: float = option(0.01, "AdamW weight decay on matrices and embeddings")
    warmup: float = option(0.1, "fraction of the steps spent warming up")
    epochs: int = option(10, "passes over the train split (every rank runs the same number of steps)")
    max_steps: int | None = option(None, "stop after this many steps, overriding --epochs")
    batch_size: int = option(16, "clips per step and process")
    max_seconds: float = option(10.0, "training window: longer clips are randomly cropped to it")
    eval_mode: str = option("whole", "clips longer than the window at evaluation: whole, or chunks (mean logits)",
                            choices=list(EVAL_MODES))
    eval_batch_size: int = option(32, "clips per evaluation batch")
    valid_fraction: float = option(0.1, "held-out share of train used for selection when there is no valid split")
    train_split: str | None = option(None, "override the task's train split")
    valid_split: str | None = option(None, "override the task's valid split ('holdout' = a slice of train)")
    test_split: str | None = option(None, "override the task's test split")
    num_workers: int = option(0, "DataLoader worker processes per rank")
    seed: int = option(0, "seeds weights, data order, crops and augmentation")
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
    hidden = cfg.hidden if cfg.freeze else None
    if cfg.scratch:
        config = model_config(cfg.model, store.n_q, store.codebook_size)
        return AudioClassifier(config, n_classes, multi_label, hidden, cfg.head_dropout)
    header = read_checkpoint_config(cfg.init)
    check_codec(header.get("metadata", {}).get("codec"), store.card["codec"], cfg.init, str(store.path))
    config = ModelConfig.from_dict(header["config"])
    config.check_data(store.n_q, store.codebook_size)
    model = AudioClassifier(config, n_classes, multi_label, hidden, cfg.head_dropout)
    missing, unexpected = model.load_state_dict(load_weights(cfg.init, "global_encoder."), strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"{cfg.init}: no global encoder matching its config (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): pass a Mega-AudioFormer export or a classifier checkpoint")
    return model  # the head stays new


def load_classifier(checkpoint: str | Path, device: str = "cpu") -> tuple[AudioClassifier, dict]:
    """A classifier and its metadata (task, labels, codec card, window); a pre-training export gives an embedder."""
    header = read_checkpoint_config(checkpoint)
    n_classes = 1 if header["model_type"] == MegaAudioFormer.model_type else None
    return AudioClassifier.from_pretrained(checkpoint, n_classes, device=device).eval(), header.get("metadata", {})


# ---------------------------------------------------------------------------------------------
# clip-level outputs: whole clips, or windows whose outputs are averaged


def windows(codes: np.ndarray, max_frames: int | None, mode: str) -> list[np.ndarray]:
    """codes: (T, n_q) -> the whole clip, or consecutive max_frames windows (a last one under half a window is dropped)."""
    if mode == "whole" or max_frames is None or len(codes) <= max_frames:
        return [codes]
    pieces = [codes[s: s + max_frames] for s in range(0, len(codes), max_frames)]
    return pieces[:-1] if len(pieces[-1]) < max_frames // 2 else pieces


@torch.no_grad()
def clip_outputs(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], samples: Iterable[Sample], pad_id: int,
                 max_frames: int | None, mode: str, batch_size: int, device: torch.device | str,
                 desc: str | None = None) -> Iterator[tuple[dict, np.ndarray]]:
    """(meta, fn output averaged over the clip's windows) per clip.
    fn: (codes (B, T, n_q), padding_mask (B, T)) -> (B, D)."""
    bar = tqdm(desc=desc, unit="clip", disable=desc is None, leave=False)
    for group in chunked(samples, batch_size):
        pieces = [windows(codes, max_frames, mode) for codes, _ in group]
        flat = [(w, meta) for ws, (_, meta) in zip(pieces, group) for w in ws]
        outputs = []
        for sub in chunked(flat, batch_size):
            batch = collate(sub, None, pad_id, crop="start")
            outputs.append(fn(batch["codes"].to(device), batch["padding_mask"].to(device)).float().cpu())
        outputs = torch.cat(outputs).numpy()  # (windows, D)
        start = 0
        for ws, (_, meta) in zip(pieces, group):
            yield meta, outputs[start: start + len(ws)].mean(axis=0)
            start += len(ws)
        bar.update(len(group))
    bar.close()


def evaluate_split(model: AudioClassifier, samples: Iterable[Sample], task: Task, vocab: list[str], pad_id: int,
                   max_frames: int | None, mode: str, batch_size: int, accelerator=None, desc: str | None = None) -> dict:
    """Metrics of one split; with several processes each takes every world_size-th clip and the results are gathered."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    logits_fn = lambda codes, mask: model(codes, mask)[0]  # noqa: E731
    mine = list(clip_outputs(logits_fn, (s for i, s in enumerate(samples) if i % world == rank), pad_id, max_frames,
                             mode, batch_size, device, desc if rank == 0 else None))
    if world > 1:
        from accelerate.utils import gather_object
        mine = gather_object(mine)
    logits = np.stack([out for _, out in mine]) if mine else np.zeros((0, len(vocab)), dtype=np.float32)  # (N, C)
    scores = 1 / (1 + np.exp(-logits)) if task.multi_label else _softmax(logits)
    targets = task.encode([meta for meta, _ in mine], vocab)
    return {"metrics": score(targets, scores, task.multi_label), "loss": _loss(targets, scores, task.multi_label),
            "n": len(mine), "ids": [m["id"] for m, _ in mine], "targets": targets, "scores": scores}


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _loss(targets: np.ndarray, scores: np.ndarray, multi_label: bool) -> float:
    """Mean cross-entropy (or binary cross-entropy) of the probabilities: breaks ties between equally accurate epochs."""
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    if not len(p):
        return float("nan")
    if multi_label:
        return float(-(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(p)), targets]).mean())


# ---------------------------------------------------------------------------------------------
# the fine-tuning loop


def finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train on the task's train split, keep the epoch that scores best on valid, report it on test; returns results.json."""
    from accelerate.utils import set_seed

    if cfg.augment not in AUGMENTS or cfg.eval_mode not in EVAL_MODES:
        raise ValueError(f"augment must be one of {AUGMENTS} and eval_mode one of {EVAL_MODES}")
    if not cfg.data:
        raise ValueError("--data is required: a token store directory (from `mega-audio tokenize`)")
    start_time = time.time()
    task, store = get_task(cfg.task), TokenStore(cfg.data)
    task.check_store(store.card)
    vocab = task.vocabulary(store.card)
    view = task_view(task, store, vocab, cfg.valid_fraction, cfg.seed, cfg.train_split, cfg.valid_split, cfg.test_split)
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
                        task=task, keep=keep["train"])
    batches = iter(make_loader(stream, cfg.num_workers, pin_memory=accelerator.device.type == "cuda"))
    generator = torch.Generator().manual_seed(cfg.seed * 10_007 + accelerator.process_index)

    output_dir = Path(cfg.output_dir)
    metadata = {"task": task.name, "labels": vocab, "multi_label": task.multi_label, "codec": store.card["codec"],
                "dataset": store.card.get("dataset"), "max_frames": max_frames, "eval_mode": cfg.eval_mode,
                "finetune": to_dict(cfg)}
    evaluate_on = lambda name: evaluate_split(  # noqa: E731
        unwrapped, split_samples(store, read_split[name], keep[name]), task, vocab, pad_id, max_frames, cfg.eval_mode,
        cfg.eval_batch_size, accelerator, desc=f"eval {name}")

    history, best, losses = [], None, []
    bar = tqdm(range(total), desc=f"finetune {task.name}", unit="step", disable=not accelerator.is_main_process)
    for step in bar:
        model.train()
        if cfg.freeze:
            unwrapped.global_encoder.eval()  # frozen features: no dropout in the encoder either
        batch = next(batches)
        codes, mask = batch["codes"], batch["padding_mask"]  # (B, T, n_q), (B, T)
        if cfg.augment == "chunk-drop":
            codes, mask = chunk_drop(codes, mask, cfg.chunk_drop, pad_id, generator)
        targets = torch.from_numpy(task.encode_labels(batch["labels"], vocab)).to(accelerator.device)
        mask = None if mask.all() else mask.to(accelerator.device)  # None: no padding, SDPA may use its flash kernel
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg.lr, max(1, round(cfg.warmup * total)), total)
        _, loss = model(codes.to(accelerator.device), mask, targets)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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
    results = {
        "task": task.name, "dataset": store.card.get("dataset"), "data": str(store.path),
        "codec": store.card["codec"]["name"], "bitrate": store.card["codec"]["bandwidth"],
        "codec_fingerprint": store.card["codec"]["fingerprint"], "init": cfg.init, "augment": cfg.augment,
        "freeze": cfg.freeze, "main_metric": task.main_metric, "splits": read_split | {"holdout": view.holdout},
        "metrics": {"valid": best["valid"]["metrics"], "test": test["metrics"]},
        "n": {"train": n["train"], "valid": best["valid"]["n"], "test": test["n"]},
        "best_epoch": best["epoch"], "best_step": best["step"], "epochs": cfg.epochs, "steps": total,
        "steps_per_epoch": steps_per_epoch, "history": history, "checkpoint": str(output_dir),
        "seconds": round(time.time() - start_time, 1), "config": to_dict(cfg),
    }
    if accelerator.is_main_process:
        results.update(write_reports(output_dir, test, task, vocab))
        save_yaml(cfg, output_dir / "finetune.yaml")
        (output_dir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    accelerator.wait_for_everyone()
    return results


def write_reports(output_dir: Path, evaluation: dict, task: Task, vocab: list[str]) -> dict[str, Any]:
    """per_class.json/.md for the test split, and for single-label tasks confusion.png; returns what results.json records."""
    targets, scores = evaluation["targets"], evaluation["scores"]
    rows = per_class_report(targets, scores, vocab, task.multi_label)
    (output_dir / "per_class.json").write_text(json.dumps(rows, indent=1) + "\n")
    (output_dir / "per_class.md").write_text(per_class_markdown(rows))
    if task.multi_label:
        return {"per_class": "per_class.json"}
    matrix = confusion_matrix(targets, scores.argmax(axis=1), len(vocab))
    shown = np.nonzero(matrix.sum(axis=0) + matrix.sum(axis=1))[0]  # classes in the truth or the predictions
    labels, matrix = [vocab[i] for i in shown], matrix[np.ix_(shown, shown)]
    plot_confusion(matrix, labels, output_dir / "confusion.png", title=f"{task.name}: test, n={evaluation['n']}")
    height, width = confusion_png_size(len(labels))
    confusion = {"labels": labels, "matrix": matrix.tolist(), "png": "confusion.png", "height": height, "width": width}
    return {"per_class": "per_class.json", "confusion": confusion}


def summary_line(r: dict[str, Any]) -> str:
    test = ", ".join(f"{k} {100 * v:.1f}%" for k, v in r["metrics"]["test"].items())
    setup = ", ".join([f"{r['codec']} {r['bitrate']:g} kbps", f"init {r['init']}" if r["init"] else "scratch",
                       f"augment {r['augment']}"] + (["frozen"] if r["freeze"] else []))
    return (f"finetune {r['task']} ({setup}): test {test} (n={r['n']['test']}), best epoch {r['best_epoch']:.3g} of "
            f"{r['steps'] / r['steps_per_epoch']:.3g}, {r['seconds']:.0f} s -> {r['checkpoint']}")


# ---------------------------------------------------------------------------------------------
# using a fine-tuned checkpoint


def load_finetuned(checkpoint: str | Path) -> tuple[AudioClassifier, dict]:
    model, meta = load_classifier(checkpoint, "cuda" if torch.cuda.is_available() else "cpu")
    if "labels" not in meta:
        raise ValueError(f"{checkpoint} is not a fine-tuned classifier (no label vocabulary): run `mega-audio finetune`")
    return model, meta


def evaluate(checkpoint: str | Path, data: str | Path, split: str | None = None, eval_mode: str | None = None,
             batch_size: int = 32) -> dict[str, Any]:
    """Metrics of a fine-tuned checkpoint on a store split (default: its task's test split)."""
    model, meta = load_finetuned(checkpoint)
    store, task = TokenStore(data), get_task(meta["task"])
    check_codec(meta.get("codec"), store.card["codec"], checkpoint, str(store.path))
    model.config.check_data(store.n_q, store.codebook_size)
    split = split or task.test
    keep = ClipFilter(task, frozenset(meta["labels"]))
    result = evaluate_split(model, split_samples(store, split, keep), task, meta["labels"], model.config.pad_id,
                            meta["max_frames"], eval_mode or meta["eval_mode"], batch_size, desc=f"eval {split}")
    return {"checkpoint": str(checkpoint), "data": str(data), "split": split, "n": result["n"], "metrics": result["metrics"]}


def embed(checkpoint: str | Path, data: str | Path, out: str | Path, split: str | None = None,
          eval_mode: str = "whole", max_seconds: float | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Mean-pooled global-encoder embeddings (N, d_global) float32 to `out` (.npy), ids/labels/splits to `out`.json."""
    model, meta = load_classifier(checkpoint, "cuda" if torch.cuda.is_available() else "cpu")
    store = TokenStore(data)
    check_codec(meta.get("codec"), store.card["codec"], checkpoint, str(store.path))
    model.config.check_data(store.n_q, store.codebook_size)
    max_frames = round(max_seconds * store.frame_rate) if max_seconds else None
    device = next(model.parameters()).device
    rows = list(clip_outputs(model.embed, store.iter_samples(split), model.config.pad_id, max_frames, eval_mode,
                             batch_size, device, desc="embed"))
    out = Path(out).with_suffix(".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, np.stack([e for _, e in rows]).astype(np.float32))
    index = {"ids": [m["id"] for m, _ in rows], "labels": [m.get("labels", []) for m, _ in rows],
             "splits": [m.get("split") for m, _ in rows], "checkpoint": str(checkpoint), "data": str(data)}
    out.with_suffix(".json").write_text(json.dumps(index) + "\n")
    return {"path": str(out), "n": len(rows), "dim": model.config.d_global}


def load_tokens(path: str | Path, checkpoint_meta: dict, codec_weights: str | None, codec_cache: dict,
                device: str | torch.device = "cpu") -> np.ndarray:
    """A `.npy` token file as is (no decoding at all), or an audio file tokenized with the checkpoint's codec."""
    path = Path(path)
    if path.suffix == ".npy":
        codes = np.load(path)
        if codes.ndim != 2:
            raise ValueError(f"{path}: token files hold (T, n_q) codes, this array is {codes.shape}")
        return codes
    from .audio import load_audio
    from .codec import load_codec

    card = checkpoint_meta.get("codec")
    if not card:
        raise ValueError("the checkpoint records no codec: pass .npy token files, or fine-tune with this version")
    if "codec" not in codec_cache:
        codec = load_codec(card["name"], card["bandwidth"], weights=codec_weights or card.get("weights"), device=str(device))
        if codec.fingerprint != card["fingerprint"]:
            raise ValueError(f"the {card['name']} codec loaded here (fingerprint {codec.fingerprint[:12]}) is not the "
                             f"one the checkpoint was trained on ({card['fingerprint'][:12]}): pass --codec-weights "
                             f"with the weights used at tokenize time")
        codec_cache["codec"] = codec
    codec = codec_cache["codec"]
    return codec.encode([load_audio(path, codec.sample_rate)])[0]


def predict(paths: list[str | Path], checkpoint: str | Path, top_k: int = 5,
            codec_weights: str | None = None) -> list[dict[str, Any]]:
    """Top-k (label, probability) per file; audio is tokenized on the fly, `.npy` token files are read directly."""
    model, meta = load_finetuned(checkpoint)
    device, cache, samples = next(model.parameters()).device, {}, []
    for path in paths:
        codes = load_tokens(path, meta, codec_weights, cache, device)  # (T, n_q)
        model.config.check_data(codes.shape[1], model.config.codebook_size)
        if len(codes) and not 0 <= codes.min() <= codes.max() < model.config.codebook_size:
            raise ValueError(f"{path}: codes outside 0..{model.config.codebook_size - 1}: not tokens of this codec")
        samples.append((codes, {"id": str(path)}))
    logits_fn = lambda codes, mask: model(codes, mask)[0]  # noqa: E731
    predictions = []
    for meta_, logits in clip_outputs(logits_fn, samples, model.config.pad_id, meta["max_frames"], meta["eval_mode"],
                                      8, device):
        probs = model.probabilities(torch.from_numpy(logits)[None])[0].numpy()
        top = np.argsort(-probs, kind="stable")[:top_k]
        predictions.append({"path": meta_["id"], "top": [(meta["labels"][i], float(probs[i])) for i in top]})
    return predictions
