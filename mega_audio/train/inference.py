"""Using a trained model: clip-level outputs over whole clips or averaged windows, `evaluate` a fine-tuned checkpoint
on a store split, `embed` every clip of a store, `predict` labels of audio or token files (tokenized on the fly); the configs of those three commands."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..config import option
from ..data.recipes import get_task
from ..data.store import Sample, TokenStore
from ..data.stream import chunked, collate
from ..data.tasks import RANDOM_SPLIT, ClipFilter, Task, random_split_filters, split_samples
from ..fileio import atomic_write, atomic_write_text
from ..models.checkpoint import read_checkpoint_config
from ..models.classifier import PROBE_POOLS, AudioClassifier
from ..models.mega import MegaAudioFormer
from .loop import check_codec
from .metrics import DEFAULT_EVAL_MODE, EVAL_MODES, log_loss, score

EMBED_POOLS = tuple(p for p in PROBE_POOLS if p != "attention")  # without parameters: they can read any layer
ALL_LAYERS = "all"


@dataclass
class EvaluateConfig:
    checkpoint: str = option("", "a `mega-audio finetune` output dir", required=True)
    data: str = option("", "token store made with the checkpoint's codec", required=True)
    split: str | None = option(None, "store split (default: the test split the checkpoint was fine-tuned with)")
    eval_mode: str | None = option(None, "whole or chunks (default: as fine-tuned)", choices=list(EVAL_MODES))
    batch_size: int = option(32, "clips per batch", min=1)


@dataclass
class PredictConfig:
    files: list[str] = option([], "audio files, or .npy token files (T, n_q)", positional=True)
    checkpoint: str = option("", "a `mega-audio finetune` output dir", required=True)
    top_k: int = option(5, "labels to print per file", min=1)
    codec_weights: str | None = option(None, "Encodec weights, if not where the checkpoint's card says")
    json: bool = option(False, 'print one JSON line per file: {"path": ..., "top": [[label, probability], ...]}')


@dataclass
class EmbedConfig:
    checkpoint: str = option("", "a fine-tuned or pre-trained checkpoint dir", required=True)
    data: str = option("", "token store", required=True)
    out: str = option("", "X.npy: (N, d) float32 embeddings; ids, labels and splits go to X.json", required=True)
    safetensors: bool = option(False, "also write X.safetensors: tensor `embeddings` (N, d), ids/labels/splits as JSON "
                                      "strings in its metadata")
    split: str | None = option(None, "one split (default: all)")
    eval_mode: str | None = option(None, "chunks (windows of --max-seconds averaged) or whole (default: as the checkpoint "
                                         "was fine-tuned, else chunks)", choices=list(EVAL_MODES))
    max_seconds: float | None = option(None, "window for chunks (default: the checkpoint's training window)", above=0)
    batch_size: int = option(32, "clips per batch", min=1)
    probe_layer: str | None = option(None, "the encoder layer read: last, mean (of layers 1..n), a layer number 0..n "
                                           "(0: the patch embeddings), or all (layers 0..n, then their mean, side by "
                                           "side: (N, n + 2, d)) (default: the checkpoint's probe layer, else last)")
    probe_pool: str | None = option(None, "how a clip's frames become one vector: mean, or stats (every feature's mean "
                                          "and standard deviation: 2 x d) (default: the checkpoint's, else mean)",
                                    choices=list(EMBED_POOLS))


def load_classifier(checkpoint: str | Path, device: str = "cpu", probe_layer: str | None = None,
                    probe_pool: str | None = None) -> tuple[AudioClassifier, dict]:
    """A classifier and its metadata (task, labels, codec card, window); a pre-training export gives an embedder.
    probe_layer / probe_pool: an embedder of the checkpoint's encoder that reads that layer / pools that way instead
    of the checkpoint's own (its head, fitted to another read-out, is not loaded)."""
    header = read_checkpoint_config(checkpoint)
    if header["model_type"] != MegaAudioFormer.model_type and not (probe_layer or probe_pool):
        return AudioClassifier.from_pretrained(checkpoint, device=device).eval(), header.get("metadata", {})
    layer, pool = probe_layer or header.get("probe_layer", "last"), probe_pool or header.get("probe_pool", "mean")
    if pool == "attention":  # its learned pool was fitted to the checkpoint's own layer
        raise ValueError(f"{checkpoint} pools by learned attention: pass --probe-pool mean or stats to read another "
                         "layer")
    model = AudioClassifier.from_pretrained(checkpoint, 1, device=device, probe_layer=layer, probe_pool=pool)
    return model.eval(), header.get("metadata", {})


def windows(codes: np.ndarray, max_frames: int | None, mode: str) -> list[np.ndarray]:
    """codes: (T, n_q) -> the whole clip, or consecutive max_frames windows (a last one under half a window is dropped)."""
    if mode == "whole" or max_frames is None or len(codes) <= max_frames:
        return [codes]
    pieces = [codes[s: s + max_frames] for s in range(0, len(codes), max_frames)]
    return pieces[:-1] if len(pieces[-1]) < max_frames // 2 else pieces


def mean_of_windows(outputs: list[np.ndarray], pieces: list[np.ndarray]) -> np.ndarray:
    return np.mean(outputs, axis=0)


@torch.no_grad()
def clip_outputs(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], samples: Iterable[Sample], pad_id: int,
                 max_frames: int | None, mode: str, batch_size: int, device: torch.device | str,
                 desc: str | None = None, reduce: Callable = mean_of_windows) -> Iterator[tuple[dict, np.ndarray]]:
    """(meta, fn's outputs for the clip's windows combined by reduce(outputs, windows), by default their mean) per clip.
    fn: (codes (B, T, n_q), padding_mask (B, T)) -> (B, ...)."""
    bar = tqdm(desc=desc, unit="clip", disable=desc is None, leave=False)
    for group in chunked(samples, batch_size):
        pieces = [windows(codes, max_frames, mode) for codes, _ in group]
        flat = [(w, meta) for ws, (_, meta) in zip(pieces, group) for w in ws]
        outputs = []  # one array per window
        for sub in chunked(flat, batch_size):
            batch = collate(sub, None, pad_id, crop="start")
            outputs.extend(fn(batch["codes"].to(device), batch["padding_mask"].to(device)).float().cpu().numpy())
        start = 0
        for ws, (_, meta) in zip(pieces, group):
            yield meta, reduce(outputs[start: start + len(ws)], ws)
            start += len(ws)
        bar.update(len(group))
    bar.close()


def encode_clips(model: AudioClassifier, fn: Callable, samples: Iterable[Sample], max_frames: int | None, mode: str,
                 batch_size: int, accelerator=None, desc: str | None = None,
                 reduce: Callable = mean_of_windows) -> tuple[list[dict], list[np.ndarray]]:
    """(metas, `clip_outputs` of fn per clip) of every clip; with several processes each encodes every world_size-th
    clip and all of them get the gathered result."""
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    mine = list(clip_outputs(fn, (s for i, s in enumerate(samples) if i % world == rank), model.config.pad_id,
                             max_frames, mode, batch_size, device, desc if rank == 0 else None, reduce))
    if world > 1:
        from accelerate.utils import gather_object
        mine = gather_object(mine)
    return [m for m, _ in mine], [f for _, f in mine]


def evaluate_split(model: AudioClassifier, samples: Iterable[Sample], task: Task, vocab: list[str],
                   max_frames: int | None, mode: str, batch_size: int, accelerator=None, desc: str | None = None) -> dict:
    """Metrics of one split (the clips shared out over processes, as `encode_clips` does)."""
    logits_fn = lambda codes, mask: model(codes, mask)[0]  # noqa: E731
    metas, logits = encode_clips(model, logits_fn, samples, max_frames, mode, batch_size, accelerator, desc)
    logits = np.stack(logits) if logits else np.zeros((0, len(vocab)), dtype=np.float32)  # (N, C)
    return split_result(model, task, metas, logits, vocab)


def split_result(model: AudioClassifier, task: Task, metas: list[dict], logits: np.ndarray, vocab: list[str]) -> dict:
    """Metrics, loss, ids, targets and probabilities of a split from its clips' logits (N, C)."""
    scores = model.probabilities(torch.from_numpy(logits)).numpy()  # (N, C): sigmoid (multi-label) or softmax
    targets = task.encode(metas, vocab)
    return {"metrics": score(targets, scores, task.multi_label), "loss": log_loss(targets, scores, task.multi_label),
            "n": len(metas), "ids": [m["id"] for m in metas], "targets": targets, "scores": scores}


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
    if split is None and meta.get("split") == RANDOM_SPLIT:  # the test share of the random split it was tuned on
        read, keep = None, random_split_filters(task, store, meta["labels"])["test"]
    else:
        read, keep = split or task.test, ClipFilter(task, frozenset(meta["labels"]))
    result = evaluate_split(model, split_samples(store, read, keep), task, meta["labels"], meta["max_frames"],
                            eval_mode or meta["eval_mode"], batch_size, desc=f"eval {read or 'test'}")
    return {"checkpoint": str(checkpoint), "data": str(data), "split": read or f"{RANDOM_SPLIT} test", "n": result["n"],
            "metrics": result["metrics"]}


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: given a name, np.save appends .npy to the temporary file's
        np.save(f, array)


def embed(checkpoint: str | Path, data: str | Path, out: str | Path, split: str | None = None,
          eval_mode: str | None = None, max_seconds: float | None = None, batch_size: int = 32,
          safetensors: bool = False, probe_layer: str | None = None, probe_pool: str | None = None) -> dict[str, Any]:
    """Pooled global-encoder embeddings (N, d) float32 to `out` (.npy), ids/labels/splits to `out`.json, and with
    `safetensors` both in one `out`.safetensors (for tools that do not read .npy). The layer and pooling are the
    checkpoint's (a pre-training export: the last layer, mean-pooled) unless probe_layer / probe_pool say otherwise;
    probe_layer "all" writes every layer's: (N, layers + 2, d). Long clips are read as the checkpoint was trained:
    windows of its training length, averaged (unless whole)."""
    every_layer = probe_layer == ALL_LAYERS  # read through the encoder alone, so a learned pool is refused
    model, meta = load_classifier(checkpoint, "cuda" if torch.cuda.is_available() else "cpu",
                                  "last" if every_layer else probe_layer, probe_pool)
    store = TokenStore(data)
    check_codec(meta.get("codec"), store.card["codec"], checkpoint, str(store.path))
    model.config.check_data(store.n_q, store.codebook_size)
    max_frames = round(max_seconds * store.frame_rate) if max_seconds else training_window(meta)
    mode = eval_mode or meta.get("eval_mode", DEFAULT_EVAL_MODE)
    device = next(model.parameters()).device
    fn = model.layer_embeddings if every_layer else model.embed
    rows = list(clip_outputs(fn, store.iter_samples(split), model.config.pad_id, max_frames, mode, batch_size, device,
                             desc="embed"))
    shape = ((model.config.n_global_layers + 2,) if every_layer else ()) + (model.pooled_width,)
    vectors = np.stack([e for _, e in rows]).astype(np.float32) if rows else np.zeros((0, *shape), np.float32)
    index = {"ids": [m["id"] for m, _ in rows], "labels": [m.get("labels", []) for m, _ in rows],
             "splits": [m.get("split") for m, _ in rows], "checkpoint": str(checkpoint), "data": str(data)}
    out = Path(out).with_suffix(".npy")
    atomic_write(out, lambda tmp: save_npy(tmp, vectors))
    atomic_write_text(out.with_suffix(".json"), json.dumps(index) + "\n")
    written = {"path": str(out), "n": len(rows), "dim": model.pooled_width, "eval_mode": mode, "max_frames": max_frames,
               "probe_layer": probe_layer if every_layer else model.probe_layer, "probe_pool": model.probe_pool}
    if safetensors:
        from safetensors.numpy import save_file

        path = out.with_suffix(".safetensors")
        text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in index.items()}
        atomic_write(path, lambda tmp: save_file({"embeddings": vectors}, tmp, metadata=text))
        written["safetensors"] = str(path)
    return written


def training_window(meta: dict) -> int | None:
    """Frames per training window of a fine-tuned checkpoint or a pre-training export (None if it does not say)."""
    return meta.get("max_frames") or meta.get("pretrain", {}).get("max_frames")


def load_tokens(path: str | Path, checkpoint_meta: dict, codec_weights: str | None, codec_cache: dict,
                device: str | torch.device = "cpu") -> np.ndarray:
    """A `.npy` token file as is (no decoding at all), or an audio file tokenized with the checkpoint's codec."""
    path = Path(path)
    if path.suffix == ".npy":
        codes = np.load(path)
        if codes.ndim != 2:
            raise ValueError(f"{path}: token files hold (T, n_q) codes, this array is {codes.shape}")
        return codes
    from ..codecs import load_codec
    from ..data.audio import load_audio

    card = checkpoint_meta.get("codec")
    if not card:
        raise ValueError("the checkpoint records no codec: pass .npy token files, or fine-tune with this version")
    if "codec" not in codec_cache:
        codec = load_codec(card["name"], card["bandwidth"], weights=codec_weights or card.get("weights"), device=str(device),
                           codebook_size=card["codebook_size"], normalize=card.get("normalize", "clip"))
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
